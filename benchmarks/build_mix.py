"""Build mix_1m.pcap: the capture corpus repeated N times as one Ethernet pcap.

Steps:
1. Every capture (pcap or pcapng, any of the corpus' link types) is read through
   `tcpdump -r IN -w OUT`, which writes classic microsecond pcap.
2. Raw IP, BSD loopback and Linux cooked (SLL) records get an Ethernet header in place
   of their own link header. tcprewrite 4.4.3 (Debian 12) cannot do this step: with
   --dlt=enet it writes the Ethernet header over the first 14 bytes of the packet
   instead of replacing the old link header, then stops with exit status 255. This is a
   known upstream bug of the 4.4 releases.
3. One "base copy" contains all captures at once: each capture starts CAPTURE_STAGGER_US
   after the previous one, keeps its own inter-packet times but with every gap clamped
   to [0, MAX_GAP_US], and all packets are merged in timestamp order. The clamp is
   needed because many corpus files join recordings made years apart.
4. Copy k (k = 0 .. N-1) is the base copy passed through `tcprewrite --seed=k+1
   --skipbroadcast`, which maps every unicast IPv4/IPv6 address through a seed-dependent
   function and fixes the checksums, so flows of different copies do not collide. Copy k
   is shifted to start COPY_GAP_US after copy k-1 ends.
   NOTE: tcprewrite leaves the inner headers of tunnelled packets (GTP-U) unchanged, and
   --skipbroadcast keeps broadcast and multicast addresses, so a reader that keys flows
   by inner headers sees a few flows (6 of about 2,500 per copy with NFStream 6.6.0)
   repeat in every copy.

Every step is deterministic, so the output is byte-identical on every rebuild with the
same corpus and the same tcpdump/tcprewrite versions.
"""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import pcapfile

BASE_TIME_US = 1_704_067_200 * 1_000_000  # 2024-01-01 00:00:00 UTC
CAPTURE_STAGGER_US = 5_000
MAX_GAP_US = 1_000_000
COPY_GAP_US = 1_000_000

# Locally administered MAC addresses for records that had no Ethernet header.
CONVERTED_DST_MAC = bytes.fromhex("020000000001")
CONVERTED_SRC_MAC = bytes.fromhex("020000000002")

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
# Address family values a BSD loopback header can carry for IPv6 (BSD variants, Linux).
AF_INET = 2
AF_INET6_VALUES = {10, 24, 28, 30}
SLL_HEADER_LEN = 16
ETHERNET_HEADER_LEN = 14


def list_captures(corpus: str) -> list[str]:
    """Return the corpus' capture paths relative to CORPUS, sorted so the order never depends on the file system."""
    found = []
    for directory, _, names in os.walk(corpus):
        for name in names:
            if name.endswith((".pcap", ".pcapng")):
                found.append(os.path.relpath(os.path.join(directory, name), corpus))
    return sorted(found)


def ethertype_for_ip(packet: bytes) -> int | None:
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return ETHERTYPE_IPV4
    if version == 6:
        return ETHERTYPE_IPV6
    return None


def to_ethernet(linktype: int, data: bytes) -> tuple[bytes, int] | None:
    """Replace the link header of one record with an Ethernet header.

    Returns (Ethernet frame, number of bytes the frame grew by). Returns None when the
    record carries no protocol with an ethertype, and the caller drops and counts it.
    """
    if linktype == pcapfile.LINKTYPE_ETHERNET:
        return data, 0

    if linktype == pcapfile.LINKTYPE_RAW:
        link_len = 0
        ethertype = ethertype_for_ip(data)
    elif linktype == pcapfile.LINKTYPE_NULL:
        link_len = 4
        if len(data) < link_len:
            return None
        family = struct.unpack("<I", data[:4])[0]
        if family > 0xFFFF:
            # The header is in the byte order of the machine that captured it.
            family = struct.unpack(">I", data[:4])[0]
        if family == AF_INET:
            ethertype = ETHERTYPE_IPV4
        elif family in AF_INET6_VALUES:
            ethertype = ETHERTYPE_IPV6
        else:
            ethertype = None
    elif linktype == pcapfile.LINKTYPE_LINUX_SLL:
        link_len = SLL_HEADER_LEN
        if len(data) < link_len:
            return None
        protocol = struct.unpack(">H", data[14:16])[0]
        # Protocol values below 0x0600 are not ethertypes (for example 802.2 LLC frames).
        ethertype = protocol if protocol >= 0x0600 else None
    else:
        raise ValueError(f"unsupported link type {linktype}: add a conversion for it in to_ethernet()")

    if ethertype is None:
        return None
    header = CONVERTED_DST_MAC + CONVERTED_SRC_MAC + struct.pack(">H", ethertype)
    return header + data[link_len:], ETHERNET_HEADER_LEN - link_len


def run_tool(argv: list[str]) -> None:
    completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise RuntimeError(
            f"command failed with exit status {completed.returncode}: {' '.join(argv)}\n{completed.stderr}"
        )


def build_base_copy(corpus: str, captures: list[str], work_dir: str) -> tuple[list[pcapfile.Record], dict]:
    """Convert and merge all captures into one time-ordered list of Ethernet records starting at time 0."""
    merged = []  # (timestamp, capture index, packet index, original length, frame)
    stats = {"captures": len(captures), "converted": {}, "dropped": {}}

    for capture_index, relative_path in enumerate(captures):
        normalized = os.path.join(work_dir, f"normalized_{capture_index:04d}.pcap")
        run_tool(["tcpdump", "-r", os.path.join(corpus, relative_path), "-w", normalized])
        header, records = pcapfile.read_file(normalized)
        os.remove(normalized)

        if header.linktype != pcapfile.LINKTYPE_ETHERNET:
            stats["converted"][relative_path] = header.linktype

        timestamp = capture_index * CAPTURE_STAGGER_US
        previous_original = None
        for packet_index, record in enumerate(records):
            if previous_original is not None:
                gap = record.ts_us - previous_original
                timestamp += min(max(gap, 0), MAX_GAP_US)
            previous_original = record.ts_us

            converted = to_ethernet(header.linktype, record.data)
            if converted is None:
                stats["dropped"][relative_path] = stats["dropped"].get(relative_path, 0) + 1
                continue
            frame, growth = converted
            merged.append((timestamp, capture_index, packet_index, record.orig_len + growth, frame))

    merged.sort(key=lambda item: item[:3])
    records = [pcapfile.Record(item[0], item[3], item[4]) for item in merged]
    return records, stats


def write_records(path: str, records: list[pcapfile.Record]) -> None:
    with open(path, "wb") as stream:
        pcapfile.write_header(stream)
        for record in records:
            pcapfile.write_record(stream, record.ts_us, record.data, record.orig_len)


def append_copy(output, rewritten_path: str, shift_us: int, expected_count: int) -> int:
    """Append the records of one rewritten copy, shifted by SHIFT_US, and return the copy's last timestamp."""
    with open(rewritten_path, "rb") as stream:
        header = pcapfile.read_header(stream)
        if header.linktype != pcapfile.LINKTYPE_ETHERNET:
            raise RuntimeError(f"{rewritten_path}: tcprewrite changed the link type to {header.linktype}")
        count = 0
        last_ts = None
        for record in pcapfile.iter_records(stream, header):
            last_ts = record.ts_us + shift_us
            pcapfile.write_record(output, last_ts, record.data, record.orig_len)
            count += 1

    if count != expected_count:
        raise RuntimeError(f"{rewritten_path}: tcprewrite wrote {count} packets, expected {expected_count}")
    return last_ts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="folder with the captures, searched recursively")
    parser.add_argument("--out", required=True, help="output pcap file")
    parser.add_argument("--copies", type=int, default=18, help="how many rewritten copies of the corpus to write (default 18)")
    args = parser.parse_args()

    for tool in ("tcpdump", "tcprewrite"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found in PATH. Install the Debian packages tcpdump and tcpreplay.", file=sys.stderr)
            return 1

    captures = list_captures(args.corpus)
    if not captures:
        print(f"error: no .pcap or .pcapng files found under {args.corpus}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="edge-etc-mix-") as work_dir:
        records, stats = build_base_copy(args.corpus, captures, work_dir)
        base_path = os.path.join(work_dir, "base.pcap")
        write_records(base_path, records)
        span_us = records[-1].ts_us - records[0].ts_us

        print(f"base copy: {stats['captures']} captures, {len(records)} packets, span {span_us / 1e6:.3f} s")
        for path, linktype in stats["converted"].items():
            print(f"  converted link type {linktype} to Ethernet: {path}")
        for path, count in stats["dropped"].items():
            print(f"  dropped {count} non-IP records without an ethertype: {path}")

        rewritten_path = os.path.join(work_dir, "rewritten.pcap")
        next_start = BASE_TIME_US
        with open(args.out, "wb") as output:
            pcapfile.write_header(output)
            for copy_index in range(args.copies):
                seed = copy_index + 1
                run_tool(["tcprewrite", f"--seed={seed}", "--skipbroadcast", "-i", base_path, "-o", rewritten_path])
                last_ts = append_copy(output, rewritten_path, next_start, len(records))
                next_start = last_ts + COPY_GAP_US

    print(f"wrote {args.out}: {args.copies} copies, {args.copies * len(records)} packets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
