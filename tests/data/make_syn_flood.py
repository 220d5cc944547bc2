"""Write a SYN flood capture: 200,000 one-packet TCP flows in 20 s, then the two TLS flows
of eth_tls_2flows.pcap. Sources are 203.0.113.1-250 with unique source ports per
address, so every SYN is a flow of its own.

Usage: python tests/data/make_syn_flood.py OUT.pcap [COUNT]
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def syn_frame(src_ip, sport, dst_ip):
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, src_ip, dst_ip)
    tcp = struct.pack("!HHIIBBHHH", sport, 443, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
    return eth + ip + tcp


def write(path, count=200_000):
    with open(os.path.join(HERE, "cases", "eth_tls_2flows.pcap"), "rb") as f:
        tls = f.read()
    header, records = tls[:24], tls[24:]
    start = 1_700_000_000
    with open(path, "wb") as out:
        out.write(header)
        dst = bytes([198, 51, 100, 99])
        for i in range(count):
            src = bytes([203, 0, 113, 1 + i % 250])
            sport = 1024 + i // 250
            frame = syn_frame(src, sport, dst)
            t = start + i * 20.0 / count
            out.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(frame), len(frame)))
            out.write(frame)
        # The TLS flows, shifted to start after the flood.
        pos = 0
        first = None
        while pos < len(records):
            sec, usec, caplen, wire = struct.unpack_from("<IIII", records, pos)
            first = sec if first is None else first
            out.write(struct.pack("<IIII", start + 21 + sec - first, usec, caplen, wire))
            out.write(records[pos + 16:pos + 16 + caplen])
            pos += 16 + caplen


if __name__ == "__main__":
    write(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200_000)
