"""Build the project's own small captures: link layers, file formats, IP fragments and
options, and flows with odd starts, reuse and time stamps.

Everything is made with `struct` from a fixed seed, so the same call always gives the same
bytes. Addresses come from the documentation ranges only (192.0.2.0/24, 198.51.100.0/24,
203.0.113.0/24 and 2001:db8::/32). tests/test_own_inputs.py imports this module and writes
the captures into a temporary folder; to look at them in Wireshark, write them to a folder:

    python tests/data/own/make_own.py OUTDIR

Each builder returns records as `(ts, frame)` or `(ts, frame, wire_len)` tuples, and the
writers (`pcap`, `pcapng_*`, `compress`) turn records into file bytes.
"""

import bz2
import gzip
import lzma
import os
import random
import socket
import struct
import sys

SEED = 20240501
T0 = 1_700_000_000.0  # 2023-11-14, the capture start of most builders
TEN_YEARS = 10 * 365.25 * 86400

CLIENT4, SERVER4_A, SERVER4_B = "192.0.2.10", "198.51.100.20", "203.0.113.30"
CLIENT4_B = "192.0.2.11"
CLIENT6, SERVER6_A, SERVER6_B = "2001:db8:1::10", "2001:db8:2::20", "2001:db8:3::30"
CLIENT6_B = "2001:db8:1::11"

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
TCP, UDP = 6, 17


def addr(text):
    """Return the packed form of an IPv4 or IPv6 address."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_pton(family, text)


# --- IP and transport headers -------------------------------------------------------------

def internet_checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src, dst, proto, length):
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b"", options=b"", window=64240):
    """Return a TCP segment with a valid checksum; `options` must be a multiple of 4 bytes."""
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0)
    segment = header + options + payload
    csum = internet_checksum(_pseudo_header(src, dst, TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def udp(src, dst, sport, dport, payload):
    """Return a UDP datagram with a valid checksum."""
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    csum = internet_checksum(_pseudo_header(src, dst, UDP, 8 + len(payload)) + header + payload)
    return header[:6] + struct.pack("!H", csum or 0xFFFF) + payload


def ipv4(src, dst, proto, body, ident=1, frag=0x4000, ttl=64, options=b"", total=None):
    """Return an IPv4 packet; `frag` is the flags and fragment offset field as sent."""
    ihl = 5 + len(options) // 4
    length = 4 * ihl + len(body) if total is None else total
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, frag, ttl, proto, 0,
                         src, dst) + options
    csum = internet_checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + body


def ipv6(src, dst, next_header, body, hop_limit=64, flow_label=0):
    """Return an IPv6 packet; `body` starts with any extension headers."""
    head = struct.pack("!IHBB", 0x60000000 | flow_label, len(body), next_header, hop_limit)
    return head + src + dst + body


def ipv6_fragment_header(next_header, offset, more, ident):
    return struct.pack("!BBHI", next_header, 0, offset | (1 if more else 0), ident)


def ipv6_ah(next_header, icv_bytes=12, spi=0x1000, seq=1):
    """Return an IPv6 authentication header with a zero ICV of `icv_bytes` bytes."""
    payload_len = (12 + icv_bytes) // 4 - 2
    return struct.pack("!BBHII", next_header, payload_len, 0, spi, seq) + bytes(icv_bytes)


def ipv6_dest_options(next_header, pad_bytes=6):
    """Return a destination options header holding one PadN option."""
    return struct.pack("!BBBB", next_header, 0, 1, pad_bytes - 2) + bytes(pad_bytes - 2)


# --- conversations ---------------------------------------------------------------------------

class TcpConversation:
    """Builder of the IP packets of one TCP connection, with consistent sequence and
    acknowledgement numbers."""

    def __init__(self, client, cport, server, sport, rng):
        self.client, self.cport, self.server, self.sport = addr(client), cport, addr(server), sport
        self.rng = rng
        self.seq = {True: rng.randrange(1 << 32), False: rng.randrange(1 << 32)}
        self.ident = rng.randrange(1 << 16)

    def packet(self, from_client, flags, payload=b""):
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        seq = self.seq[from_client]
        ack = self.seq[not from_client] if flags & ACK else 0
        segment = tcp(src, dst, sp, dp, seq, ack, flags, payload)
        advance = len(payload) + (1 if flags & (SYN | FIN) else 0)
        self.seq[from_client] = (seq + advance) & 0xFFFFFFFF
        self.ident = (self.ident + 1) & 0xFFFF
        if len(src) == 4:
            return ipv4(src, dst, TCP, segment, ident=self.ident)
        return ipv6(src, dst, TCP, segment)

    def handshake(self):
        return [self.packet(True, SYN), self.packet(False, SYN | ACK), self.packet(True, ACK)]

    def tls_exchange(self, rounds):
        """Client hello, server hello, then `rounds` request/response pairs with ACKs."""
        out = [self.packet(True, PSH | ACK, tls_record(self.rng, 0x16, 250)),
               self.packet(False, PSH | ACK, tls_record(self.rng, 0x16, 1200)),
               self.packet(True, ACK)]
        for _ in range(rounds):
            out.append(self.packet(True, PSH | ACK, tls_record(self.rng, 0x17, self.rng.randrange(60, 400))))
            out.append(self.packet(False, PSH | ACK, tls_record(self.rng, 0x17, self.rng.randrange(300, 1300))))
            out.append(self.packet(True, ACK))
        return out

    def close_fin(self):
        return [self.packet(True, FIN | ACK), self.packet(False, FIN | ACK), self.packet(True, ACK)]

    def close_rst(self):
        return [self.packet(False, RST | ACK)]


def tls_record(rng, content_type, length):
    body = bytes(rng.randrange(256) for _ in range(length))
    return struct.pack("!BHH", content_type, 0x0303, length) + body


def _interleave(flows, start, step, rng):
    """Merge packet lists into one time-ordered list of (ts, packet), seeded order."""
    queues = [list(f) for f in flows]
    out = []
    ts = start
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append((ts, q.pop(0)))
        ts += step
    return out


def tls_two_flows(version=4, seed=SEED):
    """Two interleaved TLS-like TCP flows (handshake, data, FIN) as (ts, ip_packet) pairs."""
    rng = random.Random(seed * 10 + version)
    if version == 4:
        a = TcpConversation(CLIENT4, 51000, SERVER4_A, 443, rng)
        b = TcpConversation(CLIENT4_B, 51001, SERVER4_B, 443, rng)
    else:
        a = TcpConversation(CLIENT6, 51010, SERVER6_A, 443, rng)
        b = TcpConversation(CLIENT6_B, 51011, SERVER6_B, 443, rng)
    flow_a = a.handshake() + a.tls_exchange(3) + a.close_fin()
    flow_b = b.handshake() + b.tls_exchange(2) + b.close_fin()
    return _interleave([flow_a, flow_b], T0, 0.005, rng)


# --- link layers -----------------------------------------------------------------------------

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def _ethertype(ip):
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


def _ppp_protocol(ip):
    return 0x0021 if ip[0] >> 4 == 4 else 0x0057


def eth(ip, tags=()):
    """Ethernet II with the given (tpid, vid) tags, outermost first."""
    out = MAC_A + MAC_B
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", _ethertype(ip)) + ip


def eth_llc_snap(ip):
    llc = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", _ethertype(ip))
    return MAC_A + MAC_B + struct.pack("!H", len(llc) + len(ip)) + llc + ip


def eth_mpls(ip, labels=(16, 1000, 70000)):
    out = MAC_A + MAC_B + b"\x88\x47"
    for i, label in enumerate(labels):
        bottom = 1 if i == len(labels) - 1 else 0
        out += struct.pack("!I", label << 12 | bottom << 8 | 64)
    return out + ip


def pppoe_session(ip, session=0x1234):
    ppp = struct.pack("!H", _ppp_protocol(ip))
    return struct.pack("!BBHH", 0x11, 0x00, session, len(ppp) + len(ip)) + ppp + ip


def eth_vlan_pppoe(ip):
    return MAC_A + MAC_B + struct.pack("!HHH", 0x8100, 7, 0x8864) + pppoe_session(ip)


def ppp(ip, address_control=True, compress_protocol=False):
    head = b"\xff\x03" if address_control else b""
    if compress_protocol:
        head += bytes([_ppp_protocol(ip) & 0xFF])
    else:
        head += struct.pack("!H", _ppp_protocol(ip))
    return head + ip


def loopback(ip, family, big_endian):
    return struct.pack(">I" if big_endian else "<I", family) + ip


def sll_vlan(ip, vid=42):
    """Linux cooked v1 whose protocol field is 802.1Q, followed by the tag."""
    head = struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", 0x8100)
    return head + struct.pack("!HH", vid, _ethertype(ip)) + ip


def sll2_vlan(ip, vid=42):
    """Linux cooked v2 whose protocol field is 802.1Q, followed by the tag."""
    head = struct.pack("!HHIHBB8s", 0x8100, 0, 2, 1, 0, 6, MAC_A + b"\0\0")
    return head + struct.pack("!HH", vid, _ethertype(ip)) + ip


def cisco_hdlc(ip):
    return b"\x0f\x00" + struct.pack("!H", _ethertype(ip)) + ip


# Every link layer variant: name -> (link type, frame builder, IP versions it carries).
LINK_VARIANTS = {
    "qinq_88a8_8100": (1, lambda ip: eth(ip, [(0x88A8, 100), (0x8100, 200)]), (4, 6)),
    "triple_tag_9100": (1, lambda ip: eth(ip, [(0x9100, 10), (0x88A8, 20), (0x8100, 30)]), (4, 6)),
    "llc_snap": (1, eth_llc_snap, (4, 6)),
    "mpls_3_labels": (1, eth_mpls, (4, 6)),
    "vlan_pppoe": (1, eth_vlan_pppoe, (4, 6)),
    "ppp9_ff03": (9, ppp, (4, 6)),
    "ppp9_no_ff03": (9, lambda ip: ppp(ip, address_control=False), (4, 6)),
    "ppp9_pfc": (9, lambda ip: ppp(ip, compress_protocol=True), (4, 6)),
    "ppp9_no_ff03_pfc": (9, lambda ip: ppp(ip, address_control=False, compress_protocol=True), (4, 6)),
    "ppp50_hdlc": (50, ppp, (4, 6)),
    "pppoe51": (51, pppoe_session, (4, 6)),
    "loop108_af2": (108, lambda ip: loopback(ip, 2, True), (4,)),
    "loop108_af24": (108, lambda ip: loopback(ip, 24, True), (6,)),
    "loop108_af28": (108, lambda ip: loopback(ip, 28, True), (6,)),
    "loop108_af30": (108, lambda ip: loopback(ip, 30, True), (6,)),
    "null0_big_endian_af2": (0, lambda ip: loopback(ip, 2, True), (4,)),
    "null0_big_endian_af10": (0, lambda ip: loopback(ip, 10, True), (6,)),
    "null0_little_endian_af30": (0, lambda ip: loopback(ip, 30, False), (6,)),
    "sll_vlan": (113, sll_vlan, (4, 6)),
    "sll2_vlan": (276, sll2_vlan, (4, 6)),
    "raw228_ipv4": (228, lambda ip: ip, (4,)),
    "raw229_ipv6": (229, lambda ip: ip, (6,)),
    "raw14": (14, lambda ip: ip, (4, 6)),
    "cisco_hdlc104": (104, cisco_hdlc, (4, 6)),
}


def framed(packets, builder):
    """Apply a link layer builder to (ts, ip_packet) pairs."""
    return [(ts, builder(ip)) for ts, ip in packets]


def eth_two_flows(version=4):
    """The two TLS flows of `tls_two_flows` over plain Ethernet: the baseline."""
    return framed(tls_two_flows(version), eth)


def varied_flows(count=400, seed=SEED):
    """Return (ts, ip_packet) pairs of `count` interleaved flows of 8 to 12 packets, on server
    ports of several kinds of traffic, with random payload sizes, directions and gaps.

    Their windows differ inside a flow, so with several windows per decision some flows
    change label whatever the model: the path that writes a flow's record again."""
    import random

    rng = random.Random(seed)
    ports = [(UDP, 3478), (UDP, 5060), (UDP, 27015), (UDP, 6881), (UDP, 1194), (UDP, 53),
             (TCP, 22), (TCP, 5222), (TCP, 6881), (TCP, 8080), (TCP, 993), (TCP, 1935)]
    flows = []
    for i in range(count):
        proto, server_port = ports[i % len(ports)]
        client = addr(f"10.9.{i // 250}.{i % 250 + 1}")
        server = addr(f"198.51.100.{i % 200 + 1}")
        client_port = 40000 + i
        seq = {True: rng.getrandbits(32), False: rng.getrandbits(32)}
        packets = []
        for _ in range(rng.randint(8, 12)):
            from_client = rng.random() < 0.5
            src, dst = (client, server) if from_client else (server, client)
            sport, dport = (client_port, server_port) if from_client else (server_port, client_port)
            payload = rng.randbytes(rng.choice([rng.randint(1, 80), rng.randint(100, 1400)]))
            if proto == UDP:
                body = udp(src, dst, sport, dport, payload)
            else:
                body = tcp(src, dst, sport, dport, seq[from_client], seq[not from_client], 0x18,
                           payload)
                seq[from_client] = (seq[from_client] + len(payload)) & 0xFFFFFFFF
            packets.append(ipv4(src, dst, proto, body, ident=rng.getrandbits(16)))
        flows.append(packets)
    return _interleave(flows, 1_700_000_000.0, 0.003, rng)


# --- file writers ----------------------------------------------------------------------------

def pcap(records, linktype, endian="<", nano=False, snaplen=262144):
    """Return pcap file bytes; `records` are (ts, frame) or (ts, frame, wire_len)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    scale = 10**9 if nano else 10**6
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in records:
        ts, frame = rec[0], rec[1]
        wire_len = rec[2] if len(rec) > 2 else len(frame)
        ticks = round(ts * scale)
        sec, frac = divmod(ticks, scale)
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), wire_len))
        out.append(frame)
    return b"".join(out)


def _pad4(data):
    return data + bytes(-len(data) % 4)


def _option(endian, code, value):
    return struct.pack(endian + "HH", code, len(value)) + _pad4(value)


def _block(endian, btype, body):
    length = 12 + len(body)
    return struct.pack(endian + "II", btype, length) + body + struct.pack(endian + "I", length)


def pcapng_shb(endian="<"):
    body = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    return _block(endian, 0x0A0D0D0A, body)


def pcapng_idb(linktype, endian="<", snaplen=262144, tsresol=None, tsoffset=None):
    """Interface description; `tsresol` is the raw if_tsresol byte, `tsoffset` seconds."""
    body = struct.pack(endian + "HHI", linktype, 0, snaplen)
    options = b""
    if tsresol is not None:
        options += _option(endian, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += _option(endian, 14, struct.pack(endian + "q", tsoffset))
    if options:
        options += struct.pack(endian + "HH", 0, 0)
    return _block(endian, 1, body + options)


def tick_of(tsresol):
    """Seconds per time stamp unit for an if_tsresol byte (None: microseconds)."""
    if tsresol is None:
        return 1e-6
    if tsresol & 0x80:
        return 2.0 ** -(tsresol & 0x7F)
    return 10.0 ** -tsresol


def pcapng_epb(ts, frame, endian="<", iface=0, tsresol=None, tsoffset=0, wire_len=None):
    ticks = round((ts - tsoffset) / tick_of(tsresol))
    body = struct.pack(endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame),
                       len(frame) if wire_len is None else wire_len)
    return _block(endian, 6, body + _pad4(frame))


def pcapng_spb(frame, endian="<", wire_len=None):
    body = struct.pack(endian + "I", len(frame) if wire_len is None else wire_len)
    return _block(endian, 3, body + _pad4(frame))


def pcapng_section(records, linktype, endian="<", tsresol=None, tsoffset=None):
    """One section with one interface holding every record."""
    blocks = [pcapng_shb(endian), pcapng_idb(linktype, endian, tsresol=tsresol, tsoffset=tsoffset)]
    for rec in records:
        blocks.append(pcapng_epb(rec[0], rec[1], endian, tsresol=tsresol, tsoffset=tsoffset or 0))
    return b"".join(blocks)


def compress(data, method):
    """Compress file bytes with gzip, bzip2 or xz; the gzip member has no time or name."""
    if method == "gzip":
        return gzip.compress(data, mtime=0)
    if method == "bzip2":
        return bz2.compress(data)
    if method == "xz":
        return lzma.compress(data)
    raise ValueError(f"unknown compression {method!r}")


# --- broken files ----------------------------------------------------------------------------

def pcap_with_huge_record(keep=5, caplen=300_000):
    """A pcap whose record `keep + 1` claims `caplen` bytes (and carries them)."""
    records = eth_two_flows()[:keep]
    head = pcap(records, 1)
    big = struct.pack("<IIII", int(T0) + 60, 0, caplen, caplen) + bytes(caplen)
    tail = pcap(eth_two_flows()[keep:], 1)[24:]
    return head + big + tail


def pcapng_bad_block_length(keep=5, bad_length=30):
    """A pcapng file whose block after record `keep` has a length that is not a multiple of 4."""
    records = eth_two_flows()
    good = pcapng_section(records[:keep], 1)
    bad = struct.pack("<II", 6, bad_length) + bytes(bad_length - 8)
    rest = b"".join(pcapng_epb(ts, f) for ts, f in records[keep:])
    return good + bad + rest


def pcapng_missing_interface(keep=5, iface=1):
    """A pcapng file with one interface whose packet after record `keep` names `iface`."""
    records = eth_two_flows()
    good = pcapng_section(records[:keep], 1)
    ts, frame = records[keep]
    return good + pcapng_epb(ts, frame, iface=iface)


def repeated_rounds(rounds):
    """The baseline records repeated `rounds` times, 10 s apart: a file that compresses
    well, so a gzip stream of it spans more than one read buffer."""
    return [(ts + 10 * k, frame) for k in range(rounds) for ts, frame in eth_two_flows()]


def flip_bytes(data, where, count=4):
    """Return `data` with `count` bytes from `where` on XORed with 0x55."""
    out = bytearray(data)
    for i in range(where, min(where + count, len(out))):
        out[i] ^= 0x55
    return bytes(out)


def truncated_compressed(method="gzip", fraction=0.5):
    """The compressed baseline pcap, cut after `fraction` of its compressed bytes."""
    data = compress(pcap(eth_two_flows(), 1), method)
    return data[:int(len(data) * fraction)]


# --- IP fragments and options ----------------------------------------------------------------

def udp_datagrams(version, sizes, seed=SEED, sport=52000, dport=443):
    """Return (src, dst, UDP datagram) for UDP/443 datagrams of the given payload sizes.

    Payload bytes from offset 8 on repeat 00 35 00 35, so a parser that reads ports from a
    non-first fragment reads port 53.
    """
    rng = random.Random(seed + version)
    client, server = (CLIENT4, SERVER4_A) if version == 4 else (CLIENT6, SERVER6_A)
    src, dst = addr(client), addr(server)
    out = []
    for i, size in enumerate(sizes):
        payload = bytes([0xC0 | i]) + bytes(rng.randrange(256) for _ in range(7))
        payload += (b"\x00\x35" * size)[:size - 8]
        out.append((src, dst, udp(src, dst, sport, dport, payload)))
    return out


def ipv4_fragments(src, dst, proto, body, ident, chunk, order=None, first_options=b""):
    """Split an IPv4 datagram into fragments of `chunk` bytes of body (a multiple of 8).

    `first_options` go only into the first fragment, as RFC 791 does for options whose
    copied flag is clear. `order` lists fragment indexes in sending order.
    """
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    frags = []
    for i, piece in enumerate(pieces):
        more = 0x2000 if i + 1 < len(pieces) else 0
        options = first_options if i == 0 else b""
        frags.append(ipv4(src, dst, proto, piece, ident=ident, frag=more | (i * chunk // 8),
                          options=options))
    return [frags[i] for i in (order or range(len(frags)))]


def ipv6_fragments(src, dst, next_header, body, ident, chunk, order=None, fragmentable_prefix=b""):
    """Split an IPv6 datagram; `fragmentable_prefix` are extension headers after the
    fragment header (they travel inside the first fragment's data)."""
    data = fragmentable_prefix + body
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    frags = []
    for i, piece in enumerate(pieces):
        header = ipv6_fragment_header(next_header, i * chunk, i + 1 < len(pieces), ident)
        frags.append(ipv6(src, dst, 44, header + piece))
    return [frags[i] for i in (order or range(len(frags)))]


def fragmented_udp_flow(version, fragment=True, first_options=b"", dest_options=False):
    """Build four UDP/443 datagrams (3000, 200, 2500 and 1800 payload bytes) from client
    to server. The big ones are cut in 1232-byte pieces, and the third goes last piece first.

    `first_options` (IPv4) puts options into the first fragment only, and into the whole
    datagram when not fragmented. `dest_options` (IPv6) puts a destination options header
    after the fragment header, in the fragmentable part.
    """
    sizes = [3000, 200, 2500, 1800]
    out = []
    ts = T0
    for i, (src, dst, body) in enumerate(udp_datagrams(version, sizes)):
        ident = 0x3000 + i
        order = [2, 1, 0] if i == 2 else None
        big = len(body) > 1232
        if version == 4:
            if fragment and big:
                packets = ipv4_fragments(src, dst, UDP, body, ident, 1232, order, first_options)
            else:
                packets = [ipv4(src, dst, UDP, body, ident=ident, options=first_options)]
        else:
            prefix = ipv6_dest_options(UDP) if dest_options else b""
            nh = 60 if dest_options else UDP
            if fragment and big:
                packets = ipv6_fragments(src, dst, UDP if not dest_options else 60, body, ident,
                                         1232, order, prefix)
            else:
                packets = [ipv6(src, dst, nh, prefix + body)]
        for p in packets:
            out.append((ts, p))
            ts += 0.001
    return out


def overlapping_ipv4_fragments():
    """A good fragmented datagram, then one whose fragments overlap (sent out of order),
    then a last good datagram: only the two good ones may become packets."""
    (src, dst, good1), (_, _, bad), (_, _, good2) = udp_datagrams(4, [2400, 3000, 300])
    out = [(T0, p) for p in ipv4_fragments(src, dst, UDP, good1, 0x4001, 1232)]
    # `bad` is 3008 bytes. The pieces are [0, 1232), [1224, 2456) and [2456, 3008), so the
    # second overlaps the first by 8 bytes.
    pieces = [
        ipv4(src, dst, UDP, bad[2456:], ident=0x4002, frag=2456 // 8),
        ipv4(src, dst, UDP, bad[1224:2456], ident=0x4002, frag=0x2000 | 1224 // 8),
        ipv4(src, dst, UDP, bad[0:1232], ident=0x4002, frag=0x2000),
    ]
    out += [(T0 + 0.1, p) for p in pieces]
    out.append((T0 + 0.2, ipv4(src, dst, UDP, good2, ident=0x4003)))
    return out


def fragment_flood(datagrams=300, complete=(44, 299), orphan=0):
    """`datagrams` first fragments of UDP datagrams (same flow, one IP id each), then the
    last fragments of the datagrams in `complete`, then the last fragment of `orphan`."""
    (src, dst, body), = udp_datagrams(4, [1500])
    pieces = [ipv4_fragments(src, dst, UDP, body, 0x5000 + i, 1232) for i in range(datagrams)]
    out = []
    ts = T0
    for first, _ in pieces:
        out.append((ts, first))
        ts += 0.01
    for i in list(complete) + [orphan]:
        out.append((ts, pieces[i][1]))
        ts += 0.01
    return out


def ipv6_ah_atomic_flow(atomic=True):
    """The first IPv6 TLS flow, every packet carrying AH and then (with `atomic`) a fragment
    header with offset 0 and M=0 before TCP."""
    out = []
    for ts, ip in tls_two_flows(6):
        if ip[8:24] not in (addr(CLIENT6), addr(SERVER6_A)):
            continue
        body = ip[40:]
        ext = b""
        nh = TCP
        if atomic:
            ext = ipv6_fragment_header(TCP, 0, False, 0x7777) + ext
            nh = 44
        ext = ipv6_ah(nh) + ext
        out.append((ts, ipv6(ip[8:24], ip[24:40], 51, ext + body)))
    return out


def ipv6_first_flow():
    return [(ts, ip) for ts, ip in tls_two_flows(6) if addr(CLIENT6) in (ip[8:24], ip[24:40])]


def ipv4_options_flow(ihl, seed):
    """The first IPv4 TLS flow with (ihl - 5) * 4 option bytes in every packet: one record
    route option of seeded content that fills them."""
    rng = random.Random(seed)
    n = (ihl - 5) * 4
    out = []
    for ts, ip in tls_two_flows(4):
        if addr(CLIENT4) not in (ip[12:16], ip[16:20]):
            continue
        option = b""
        if n:
            option = bytes([7, n, 4]) + bytes(rng.randrange(256) for _ in range(n - 3))
        ident, frag, ttl = struct.unpack_from("!HHB", ip, 4)
        out.append((ts, ipv4(ip[12:16], ip[16:20], TCP, ip[20:], ident=ident, frag=frag,
                             ttl=ttl, options=option)))
    return out


# --- flow oddities ---------------------------------------------------------------------------

def full_tls_flow(seed=SEED):
    """One TLS flow 192.0.2.10:51000 -> 198.51.100.20:443, handshake to FIN."""
    rng = random.Random(seed)
    conv = TcpConversation(CLIENT4, 51000, SERVER4_A, 443, rng)
    packets = conv.handshake() + conv.tls_exchange(5) + conv.close_fin()
    return [(T0 + 0.01 * i, p) for i, p in enumerate(packets)]


def mid_connection(skip=7):
    """`full_tls_flow` without its first `skip` packets: it starts with a server packet."""
    return full_tls_flow()[skip:]


def reuse_after(close="rst"):
    """A connection closed by RST (or FIN), then a new SYN on the same 5-tuple.

    Returns the records and the number of packets of the first connection.
    """
    rng = random.Random(SEED + 7)
    first = TcpConversation(CLIENT4, 51500, SERVER4_A, 443, rng)
    second = TcpConversation(CLIENT4, 51500, SERVER4_A, 443, rng)
    packets = first.handshake() + first.tls_exchange(1)
    packets += first.close_rst() if close == "rst" else first.close_fin()
    first_count = len(packets)
    packets += second.handshake() + second.tls_exchange(2) + second.close_fin()
    return [(T0 + 0.01 * i, p) for i, p in enumerate(packets)], first_count


def syn_retransmit_open_flow():
    """A SYN retransmitted after data on an open connection (no FIN or RST)."""
    rng = random.Random(SEED + 8)
    conv = TcpConversation(CLIENT4, 51600, SERVER4_A, 443, rng)
    packets = conv.handshake() + conv.tls_exchange(1)
    conv.seq[True] = (conv.seq[True] - 1) & 0xFFFFFFFF
    packets.append(conv.packet(True, SYN))
    packets += conv.tls_exchange(1)
    return [(T0 + 0.01 * i, p) for i, p in enumerate(packets)]


def epoch_stamped_middle(first=10, count=6):
    """The two IPv4 TLS flows with records `first` to `first + count` stamped in 1970."""
    records = eth_two_flows()
    out = []
    for i, (ts, frame) in enumerate(records):
        if first <= i < first + count:
            ts = 1.0 + i
        out.append((ts, frame))
    return out


def ten_year_jump_back(split=8):
    """The two IPv4 TLS flows: the first `split` records stamped ten years later."""
    return [(ts + TEN_YEARS if i < split else ts, frame)
            for i, (ts, frame) in enumerate(eth_two_flows())]


def tso_huge_wire_length():
    """Return the two IPv4 TLS flows behind an 0x9100 VLAN tag, with IPv4 total length 0.

    Only the Python decoder takes that tag. Each record's wire length is 2**32 - 1, so the
    decoder takes the payload length from the wire length, beyond 2**31."""
    records = []
    for ts, frame in eth_two_flows():
        ip = bytearray(frame[14:])
        ip[2:4] = b"\0\0"
        records.append((ts, eth(bytes(ip), [(0x9100, 1)]), 0xFFFFFFFF))
    return records


def write_all(outdir):
    """Write one file per builder into `outdir`; return the file names."""
    os.makedirs(outdir, exist_ok=True)
    files = {}
    for name, (linktype, builder, versions) in LINK_VARIANTS.items():
        for version in versions:
            files[f"link_{name}_ipv{version}.pcap"] = pcap(framed(tls_two_flows(version), builder), linktype)
    base = eth_two_flows()

    files["eth_ipv4.pcap"] = pcap(base, 1)
    files["eth_ipv6.pcap"] = pcap(eth_two_flows(6), 1)
    files["big_endian_micro.pcap"] = pcap(base, 1, endian=">")
    files["big_endian_nano.pcap"] = pcap(base, 1, endian=">", nano=True)
    files["big_endian.pcapng"] = pcapng_section(base, 1, endian=">")
    files["tsresol_2_20_tsoffset.pcapng"] = pcapng_section(base, 1, tsresol=0x94, tsoffset=1_699_999_000)
    files["tsresol_10_9_big_endian.pcapng"] = pcapng_section(base, 1, endian=">", tsresol=9)
    files["simple_blocks.pcapng"] = b"".join([pcapng_shb(), pcapng_idb(1)] + [pcapng_spb(f) for _, f in base])
    files["two_sections_mixed_endian.pcapng"] = (pcapng_section(base[:15], 1)
                                                 + pcapng_section(tls_two_flows()[15:], 101, endian=">"))
    files["eth_ipv4.pcap.bz2"] = compress(pcap(base, 1), "bzip2")
    files["eth_ipv4.pcap.xz"] = compress(pcap(base, 1), "xz")

    files["truncated.pcap.gz"] = truncated_compressed("gzip")
    files["truncated.pcap.xz"] = truncated_compressed("xz")
    files["huge_record.pcap"] = pcap_with_huge_record()
    files["bad_block_length.pcapng"] = pcapng_bad_block_length()
    files["missing_interface.pcapng"] = pcapng_missing_interface()

    files["ipv6_fragments.pcap"] = pcap(fragmented_udp_flow(6), 101)
    files["ipv4_overlap.pcap"] = pcap(overlapping_ipv4_fragments(), 101)
    files["fragment_flood.pcap"] = pcap(fragment_flood(), 101)
    files["ipv6_ah_atomic.pcap"] = pcap(ipv6_ah_atomic_flow(), 101)

    files["mid_connection.pcap"] = pcap(framed(mid_connection(), eth), 1)
    files["reuse_after_rst.pcap"] = pcap(framed(reuse_after("rst")[0], eth), 1)
    files["epoch_stamped_middle.pcap"] = pcap(epoch_stamped_middle(), 1)
    files["ten_year_jump_back.pcap"] = pcap(ten_year_jump_back(), 1)
    files["tso_huge_wire_length.pcap"] = pcap(tso_huge_wire_length(), 1)

    for name, data in files.items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
    return sorted(files)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/own/make_own.py OUTDIR")
    for name in write_all(sys.argv[1]):
        print(name)
