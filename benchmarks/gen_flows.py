"""Generate a pcap of many concurrent TLS-like and QUIC-like flows from a seed.

Every flow has 3 to 7 packets, and all flows are open at the same time. Round r contains
the r-th packet of every flow that has more than r packets, in a seeded random order. So
the first packets of all flows (round 0) come before the first flow ends (round 2 at the
earliest). Packets are TIME_STEP_US apart, so 100,000 flows last about 5 seconds and no
idle timeout of a flow meter expires a flow inside the file.

TLS-like flows (TCP/443): SYN, SYN-ACK, ClientHello with SNI, server flight
(TLS 1.3 ServerHello, ChangeCipherSpec, encrypted records), client Finished, one request
record, one response record. The bare ACK that completes the handshake is left out, so
short flows still carry a ClientHello. A flow of n packets has the first n of these.

QUIC-like flows (UDP/443, QUIC version 1 wire image, random bytes where QUIC encrypts):
client Initial of 1200-1350 bytes, server Initial+Handshake of 1200-1350 bytes, client
Handshake, then short-header packets. The payloads are not valid QUIC encryption, so a
dissector that decrypts the Initial packet fails on them.

Addresses: clients in 10.0.0.0/8 and 2001:db8:1::/64, servers in the documentation
ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and 2001:db8:443::/64, server names
under example.com, example.net and example.org. The file is data for offline readers only.

The output depends only on the arguments and on Python's random module. Python promises
the same random() sequence for a seed across versions, but not the same randrange(),
shuffle() or randbytes() results, so the recorded sha256 values hold for Python 3.11
and may differ on other versions.
"""

import argparse
import ipaddress
import struct
import sys
from random import Random
from typing import Iterator

import pcapfile

BASE_TIME_US = 1_704_067_200 * 1_000_000  # 2024-01-01 00:00:00 UTC
TIME_STEP_US = 10

IPV6_SHARE = 0.10
QUIC_SHARE = 0.35  # an estimate of QUIC's share of web flows, not a measurement
MIN_PACKETS = 3
MAX_PACKETS = 7
FLOWS_PER_CLIENT = 20
EPHEMERAL_PORTS = (32768, 60999)  # Linux default net.ipv4.ip_local_port_range

ROUTER_MAC = bytes.fromhex("020000000001")
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
PROTO_TCP = 6
PROTO_UDP = 17
TTL_CLIENT = 64
TTL_SERVER = 56

SERVER_V4_NETWORKS = ("192.0.2.0", "198.51.100.0", "203.0.113.0")
SERVER_V6_PREFIX = int(ipaddress.IPv6Address("2001:db8:443::"))
CLIENT_V6_PREFIX = int(ipaddress.IPv6Address("2001:db8:1::"))
SERVER_COUNT = 254 * len(SERVER_V4_NETWORKS)
SERVER_DOMAINS = ("example.com", "example.net", "example.org")

TCP_SYN = 0x02
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_TIMESTAMP_OPTION_LEN = 12  # NOP, NOP, kind 8 with two 32-bit values

TLS_HANDSHAKE = 0x16
TLS_CHANGE_CIPHER_SPEC = 0x14
TLS_APPLICATION_DATA = 0x17
TLS_RECORD_HEADER_LEN = 5
TLS_CIPHER_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035)
TLS_SIGNATURE_ALGORITHMS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
TLS_GROUP_X25519 = 0x001D

QUIC_VERSION_1 = 0x00000001
QUIC_INITIAL = 0
QUIC_HANDSHAKE = 2
QUIC_CONNECTION_ID_LEN = 8


# --- checksums and headers -------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """Return the RFC 1071 one's complement checksum of DATA."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, protocol: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, protocol, length)
    return src + dst + struct.pack("!IxxxB", length, protocol)


def with_checksum(segment: bytes, offset: int, src: bytes, dst: bytes, protocol: int) -> bytes:
    """Fill the 16-bit checksum field at OFFSET of a TCP or UDP segment."""
    value = internet_checksum(pseudo_header(src, dst, protocol, len(segment)) + segment)
    if protocol == PROTO_UDP and value == 0:
        value = 0xFFFF  # a UDP checksum of zero means "no checksum"
    return segment[:offset] + struct.pack("!H", value) + segment[offset + 2 :]


def tcp_segment(src, dst, sport, dport, seq, ack, flags, window, options, payload) -> bytes:
    header_len = 20 + len(options)
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (header_len // 4) << 4, flags, window, 0, 0)
    return with_checksum(header + options + payload, 16, src, dst, PROTO_TCP)


def udp_datagram(src, dst, sport, dport, payload) -> bytes:
    header = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return with_checksum(header + payload, 6, src, dst, PROTO_UDP)


def ipv4_packet(src, dst, protocol, ttl, ident, payload) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, protocol, 0, src, dst)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + payload


def ipv6_packet(src, dst, next_header, hop_limit, flow_label, payload) -> bytes:
    first_word = (6 << 28) | flow_label
    return struct.pack("!IHBB16s16s", first_word, len(payload), next_header, hop_limit, src, dst) + payload


# --- TLS records -----------------------------------------------------------------------


def tls_record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    return struct.pack("!BHH", content_type, version, len(body)) + body


def tls_extension(extension_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", extension_type, len(body)) + body


def u16_list(values) -> bytes:
    return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)


def client_hello(rng: Random, server_name: str, session_id: bytes, record_len: int) -> bytes:
    """Build a TLS 1.3 ClientHello record, padded with the padding extension to about RECORD_LEN bytes."""
    name = server_name.encode("ascii")
    extensions = [
        tls_extension(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name),
        tls_extension(0x000A, u16_list((TLS_GROUP_X25519, 0x0017, 0x0018))),
        tls_extension(0x0010, bytes.fromhex("000c02683208687474702f312e31")),  # ALPN h2, http/1.1
        tls_extension(0x000D, u16_list(TLS_SIGNATURE_ALGORITHMS)),
        tls_extension(0x002B, bytes.fromhex("0403040303")),  # supported_versions TLS 1.3, 1.2
        tls_extension(0x0033, struct.pack("!HHH", 36, TLS_GROUP_X25519, 32) + rng.randbytes(32)),
    ]
    body = (
        struct.pack("!H", 0x0303)
        + rng.randbytes(32)
        + bytes([len(session_id)])
        + session_id
        + u16_list(TLS_CIPHER_SUITES)
        + b"\x01\x00"  # one compression method: null
    )

    unpadded_len = TLS_RECORD_HEADER_LEN + 4 + len(body) + 2 + sum(map(len, extensions))
    padding_len = record_len - unpadded_len - 4
    if padding_len >= 0:
        extensions.append(tls_extension(0x0015, bytes(padding_len)))

    extension_block = b"".join(extensions)
    body += struct.pack("!H", len(extension_block)) + extension_block
    handshake = struct.pack("!I", (1 << 24) | len(body)) + body
    return tls_record(TLS_HANDSHAKE, handshake, version=0x0301)


def server_flight(rng: Random, session_id: bytes, total_len: int) -> bytes:
    """Build a TLS 1.3 ServerHello, ChangeCipherSpec and one encrypted record, TOTAL_LEN bytes in all."""
    extensions = tls_extension(0x002B, b"\x03\x04") + tls_extension(
        0x0033, struct.pack("!HH", TLS_GROUP_X25519, 32) + rng.randbytes(32)
    )
    body = (
        struct.pack("!H", 0x0303)
        + rng.randbytes(32)
        + bytes([len(session_id)])
        + session_id
        + struct.pack("!HB", 0x1301, 0)
        + struct.pack("!H", len(extensions))
        + extensions
    )
    server_hello = tls_record(TLS_HANDSHAKE, struct.pack("!I", (2 << 24) | len(body)) + body)
    change_cipher_spec = tls_record(TLS_CHANGE_CIPHER_SPEC, b"\x01")
    encrypted_len = max(total_len - len(server_hello) - len(change_cipher_spec) - TLS_RECORD_HEADER_LEN, 1)
    return server_hello + change_cipher_spec + tls_record(TLS_APPLICATION_DATA, rng.randbytes(encrypted_len))


def encrypted_record(rng: Random, total_len: int) -> bytes:
    return tls_record(TLS_APPLICATION_DATA, rng.randbytes(total_len - TLS_RECORD_HEADER_LEN))


# --- QUIC packets ----------------------------------------------------------------------


def quic_long_header_packet(rng: Random, packet_type: int, dcid: bytes, scid: bytes, total_len: int) -> bytes:
    """Build a QUIC v1 long-header packet of TOTAL_LEN bytes with a random protected payload."""
    # The low 4 bits of the first byte are under header protection, so they look random.
    first_byte = 0xC0 | (packet_type << 4) | rng.randrange(16)
    header = struct.pack("!BI", first_byte, QUIC_VERSION_1) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if packet_type == QUIC_INITIAL:
        header += b"\x00"  # token length 0
    remaining = total_len - len(header) - 2
    header += struct.pack("!H", 0x4000 | remaining)  # two-byte variable-length integer
    return header + rng.randbytes(remaining)


def quic_short_header_packet(rng: Random, dcid: bytes, total_len: int) -> bytes:
    first_byte = 0x40 | rng.randrange(64)
    return bytes([first_byte]) + dcid + rng.randbytes(total_len - 1 - len(dcid))


# --- flows -----------------------------------------------------------------------------


class Flow:
    """One client-server conversation: addresses, ports and per-direction IP state."""

    def __init__(self, rng: Random, ip_version: int, client_ip: bytes, client_mac: bytes, client_port: int, server_index: int, protocol: int):
        self.rng = rng
        self.ip_version = ip_version
        self.client_ip = client_ip
        self.client_mac = client_mac
        self.client_port = client_port
        self.server_ip = server_address(ip_version, server_index)
        self.server_name = f"cdn{server_index}.{SERVER_DOMAINS[server_index % len(SERVER_DOMAINS)]}"
        self.server_port = 443
        self.protocol = protocol
        self.ip_ident = {True: rng.randrange(65536), False: rng.randrange(65536)}
        self.flow_label = {True: rng.randrange(1 << 20), False: rng.randrange(1 << 20)}

    def frame(self, from_client: bool, l4_payload: bytes) -> bytes:
        """Wrap a finished TCP or UDP segment in IP and Ethernet headers for one direction."""
        if from_client:
            src, dst, ttl = self.client_ip, self.server_ip, TTL_CLIENT
            mac_header = ROUTER_MAC + self.client_mac
        else:
            src, dst, ttl = self.server_ip, self.client_ip, TTL_SERVER
            mac_header = self.client_mac + ROUTER_MAC

        if self.ip_version == 4:
            ident = self.ip_ident[from_client]
            self.ip_ident[from_client] = (ident + 1) & 0xFFFF
            packet = ipv4_packet(src, dst, self.protocol, ttl, ident, l4_payload)
            ethertype = ETHERTYPE_IPV4
        else:
            packet = ipv6_packet(src, dst, self.protocol, ttl, self.flow_label[from_client], l4_payload)
            ethertype = ETHERTYPE_IPV6
        return mac_header + struct.pack("!H", ethertype) + packet

    def addresses(self, from_client: bool):
        if from_client:
            return self.client_ip, self.server_ip, self.client_port, self.server_port
        return self.server_ip, self.client_ip, self.server_port, self.client_port


def tls_flow_packets(flow: Flow) -> Iterator[bytes]:
    """Yield the frames of a TLS-like flow in order. The caller takes as many as it needs."""
    rng = flow.rng
    mss = 1460 if flow.ip_version == 4 else 1440
    max_payload = mss - TCP_TIMESTAMP_OPTION_LEN
    next_seq = {True: rng.getrandbits(32), False: rng.getrandbits(32)}
    ts_value = {True: rng.getrandbits(32), False: rng.getrandbits(32)}
    session_id = rng.randbytes(32)

    def segment(from_client: bool, flags: int, payload: bytes = b"", syn_options: bool = False) -> bytes:
        src, dst, sport, dport = flow.addresses(from_client)
        seq = next_seq[from_client]
        ack = next_seq[not from_client] if flags & TCP_ACK else 0
        echo = ts_value[not from_client] if flags & TCP_ACK else 0
        timestamp = struct.pack("!BBII", 8, 10, ts_value[from_client], echo)
        if syn_options:
            # MSS, SACK permitted, timestamps, NOP, window scale 7: the Linux SYN layout.
            options = struct.pack("!BBH", 2, 4, mss) + b"\x04\x02" + timestamp + b"\x01\x03\x03\x07"
            window = 64240 if from_client else 65160
        else:
            options = b"\x01\x01" + timestamp
            window = 502
        ts_value[from_client] = (ts_value[from_client] + rng.randrange(1, 40)) & 0xFFFFFFFF
        next_seq[from_client] = (seq + len(payload) + (1 if flags & TCP_SYN else 0)) & 0xFFFFFFFF
        return flow.frame(from_client, tcp_segment(src, dst, sport, dport, seq, ack, flags, window, options, payload))

    yield segment(True, TCP_SYN, syn_options=True)
    yield segment(False, TCP_SYN | TCP_ACK, syn_options=True)
    yield segment(True, TCP_PSH | TCP_ACK, client_hello(rng, flow.server_name, session_id, rng.randint(300, 700)))
    yield segment(False, TCP_PSH | TCP_ACK, server_flight(rng, session_id, rng.randint(max_payload - 200, max_payload)))
    yield segment(True, TCP_PSH | TCP_ACK, tls_record(TLS_CHANGE_CIPHER_SPEC, b"\x01") + encrypted_record(rng, 58))
    yield segment(True, TCP_PSH | TCP_ACK, encrypted_record(rng, rng.randint(80, 600)))
    yield segment(False, TCP_PSH | TCP_ACK, encrypted_record(rng, rng.randint(100, max_payload)))


def quic_flow_packets(flow: Flow) -> Iterator[bytes]:
    """Yield the frames of a QUIC-like flow in order. The caller takes as many as it needs."""
    rng = flow.rng
    initial_dcid = rng.randbytes(QUIC_CONNECTION_ID_LEN)
    server_cid = rng.randbytes(QUIC_CONNECTION_ID_LEN)
    client_cid = b""  # browsers commonly send a zero-length source connection ID

    def datagram(from_client: bool, payload: bytes) -> bytes:
        src, dst, sport, dport = flow.addresses(from_client)
        return flow.frame(from_client, udp_datagram(src, dst, sport, dport, payload))

    yield datagram(True, quic_long_header_packet(rng, QUIC_INITIAL, initial_dcid, client_cid, rng.randint(1200, 1350)))

    server_initial = quic_long_header_packet(rng, QUIC_INITIAL, client_cid, server_cid, rng.randint(120, 160))
    server_handshake_len = rng.randint(1200, 1350) - len(server_initial)
    server_handshake = quic_long_header_packet(rng, QUIC_HANDSHAKE, client_cid, server_cid, server_handshake_len)
    yield datagram(False, server_initial + server_handshake)

    yield datagram(True, quic_long_header_packet(rng, QUIC_HANDSHAKE, server_cid, client_cid, rng.randint(60, 150)))
    yield datagram(False, quic_short_header_packet(rng, client_cid, rng.randint(200, 1350)))
    yield datagram(True, quic_short_header_packet(rng, server_cid, rng.randint(30, 60)))
    yield datagram(True, quic_short_header_packet(rng, server_cid, rng.randint(60, 400)))
    yield datagram(False, quic_short_header_packet(rng, client_cid, rng.randint(1000, 1350)))


# --- addresses -------------------------------------------------------------------------


def server_address(ip_version: int, server_index: int) -> bytes:
    if ip_version == 4:
        network = SERVER_V4_NETWORKS[server_index // 254]
        return ipaddress.IPv4Address(int(ipaddress.IPv4Address(network)) + 1 + server_index % 254).packed
    return ipaddress.IPv6Address(SERVER_V6_PREFIX + 1 + server_index).packed


def client_address(ip_version: int, client_index: int) -> bytes:
    if ip_version == 4:
        # 10.(20+a).b.c with c in 1..250, so no address ends in .0 or .255.
        a, rest = divmod(client_index, 256 * 250)
        b, c = divmod(rest, 250)
        if a > 235:
            raise ValueError(f"client index {client_index} does not fit in 10.0.0.0/8")
        return bytes((10, 20 + a, b, 1 + c))
    return ipaddress.IPv6Address(CLIENT_V6_PREFIX + 1 + client_index).packed


def client_mac(ip_version: int, client_index: int) -> bytes:
    return bytes((0x02, ip_version)) + struct.pack("!I", client_index)


def shuffled_flags(rng: Random, count: int, share: float) -> list[bool]:
    """Return COUNT booleans in random order, round(COUNT * SHARE) of them True."""
    selected = round(count * share)
    flags = [True] * selected + [False] * (count - selected)
    rng.shuffle(flags)
    return flags


def make_flows(rng: Random, flow_count: int) -> list[tuple[Flow, Iterator[bytes], int]]:
    """Create every flow with its packet count and a generator of its frames."""
    is_ipv6 = shuffled_flags(rng, flow_count, IPV6_SHARE)
    is_quic = shuffled_flags(rng, flow_count, QUIC_SHARE)
    client_count = {
        version: max(1, -(-sum(1 for v6 in is_ipv6 if v6 == (version == 6)) // FLOWS_PER_CLIENT)) for version in (4, 6)
    }
    used_ports = set()

    flows = []
    for index in range(flow_count):
        ip_version = 6 if is_ipv6[index] else 4
        protocol = PROTO_UDP if is_quic[index] else PROTO_TCP
        client_index = rng.randrange(client_count[ip_version])
        while True:
            port = rng.randint(*EPHEMERAL_PORTS)
            key = (ip_version, client_index, protocol, port)
            if key not in used_ports:
                used_ports.add(key)
                break

        flow = Flow(
            rng,
            ip_version,
            client_address(ip_version, client_index),
            client_mac(ip_version, client_index),
            port,
            rng.randrange(SERVER_COUNT),
            protocol,
        )
        packets = quic_flow_packets(flow) if is_quic[index] else tls_flow_packets(flow)
        flows.append((flow, packets, rng.randint(MIN_PACKETS, MAX_PACKETS)))
    return flows


def write_flows(path: str, flow_count: int, seed: int) -> dict:
    rng = Random(seed)
    flows = make_flows(rng, flow_count)
    stats = {
        "flows": flow_count,
        "ipv6_flows": sum(1 for flow, _, _ in flows if flow.ip_version == 6),
        "quic_flows": sum(1 for flow, _, _ in flows if flow.protocol == PROTO_UDP),
        "packets": 0,
        "bytes": 0,
    }

    with open(path, "wb") as output:
        pcapfile.write_header(output)
        timestamp = BASE_TIME_US
        for round_index in range(MAX_PACKETS):
            active = [entry for entry in flows if entry[2] > round_index]
            rng.shuffle(active)
            for _, packets, _ in active:
                frame = next(packets)
                pcapfile.write_record(output, timestamp, frame)
                timestamp += TIME_STEP_US
                stats["packets"] += 1
                stats["bytes"] += len(frame)

    stats["duration_s"] = (timestamp - TIME_STEP_US - BASE_TIME_US) / 1e6
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, required=True, help="number of flows to generate")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random generator (default 1)")
    parser.add_argument("--out", required=True, help="output pcap file")
    args = parser.parse_args()
    if args.flows < 1:
        parser.error(f"--flows must be at least 1, got {args.flows}")

    stats = write_flows(args.out, args.flows, args.seed)
    print(f"wrote {args.out}: " + " ".join(f"{key}={value}" for key, value in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
