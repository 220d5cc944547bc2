"""Packet decoding: from a link-layer frame to the IP packet and its TCP or UDP header.

Both the dataset builder and the runner decode every record with `Decoder.decode`, so a
flow looks the same, keys and model vectors included, whichever link layer carried it.

Supported link types (libpcap LINKTYPE/DLT numbers): Ethernet (1) with any stack of
802.1Q/802.1ad/QinQ tags, LLC/SNAP, PPPoE sessions and MPLS label stacks; raw IP (12, 14,
101, 228, 229); BSD loopback NULL (0, host byte order) and LOOP (108, network byte order)
with the IPv6 address-family values of Linux, the BSDs and macOS; Linux cooked v1 (113)
and v2 (276); PPP (9), PPP in HDLC framing (50), PPPoE without Ethernet (51) and Cisco
HDLC (104).

Only TCP and UDP packets make flows. Everything else raises `PacketError` with a short
`reason` that the caller counts: `malformed=True` for headers that contradict themselves,
`malformed=False` for traffic that is valid but not for us (ARP, ICMP, ESP).

IPv4 and IPv6 fragments are reassembled in a bounded buffer (see `Reassembler`), so a
non-first fragment never becomes a flow of its own.
"""

import struct

from . import fastpath
from .errors import PacketError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_PORTS = struct.Struct("!HH")

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100, 0x9200)
ETH_PPPOE_SESSION = 0x8864
ETH_MPLS = (0x8847, 0x8848)
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057

# Address-family values for IPv4 and IPv6 in BSD loopback headers, per operating system:
# AF_INET is 2 everywhere; AF_INET6 is 10 (Linux), 24 (NetBSD, OpenBSD), 28 (FreeBSD,
# DragonFly) and 30 (macOS).
_AF_IPV4 = 2
_AF_IPV6 = (10, 24, 28, 30)

# IPv6 extension headers that sit between the fixed header and the transport header,
# with the length rule of the generic format: (hdr_ext_len + 1) * 8 bytes.
_IPV6_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

PROTO_TCP = 6
PROTO_UDP = 17
_PROTO_NAMES = {1: "ICMP", 2: "IGMP", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6", 132: "SCTP"}

# TCP flag bits.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class Packet:
    """A decoded TCP or UDP packet.

    `ip` contains the captured bytes from the first byte of the IP header on, never more
    than were captured. `l4_offset` is where the TCP or UDP header starts inside `ip` (after
    IPv4 options or IPv6 extension headers) and `payload_len` comes from the IP and
    transport headers, so Ethernet padding is never counted as payload.
    """

    __slots__ = ("ts", "version", "proto", "src", "dst", "sport", "dport", "ip",
                 "l4_offset", "l4_len", "payload_len", "tcp_flags", "truncated")

    def __init__(self, ts, version, proto, src, dst, sport, dport, ip, l4_offset, l4_len,
                 payload_len, tcp_flags, truncated):
        self.ts = ts
        self.version = version
        self.proto = proto
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.ip = ip
        self.l4_offset = l4_offset
        self.l4_len = l4_len
        self.payload_len = payload_len
        self.tcp_flags = tcp_flags
        self.truncated = truncated


# With the compiled fast path, every packet is its C type of the same fields, whichever
# path decoded it, so the vectorizer can read it without attribute lookups.
PythonPacket = Packet
_native_decode = None
if fastpath.native is not None:
    Packet = fastpath.native.Packet  # noqa: F811
    _native_decode = fastpath.native.decode


def _skip(reason):
    return PacketError(reason)


def _bad(reason):
    return PacketError(reason, malformed=True)


def _ethertype_payload(frame, off, etype):
    """Follow VLAN tags, LLC/SNAP, PPPoE and MPLS from `etype` to the IP header offset."""
    n = len(frame)
    for _ in range(8):  # bounds the number of stacked headers walked
        if etype == ETH_IPV4 or etype == ETH_IPV6:
            return off
        if etype in ETH_VLAN_TAGS:
            if n < off + 4:
                raise _bad("VLAN tag truncated")
            etype = _U16.unpack_from(frame, off + 2)[0]
            off += 4
        elif etype == ETH_PPPOE_SESSION:
            if n < off + 8:
                raise _bad("PPPoE header truncated")
            ppp = _U16.unpack_from(frame, off + 6)[0]
            off += 8
            if ppp == PPP_IPV4 or ppp == PPP_IPV6:
                return off
            raise _skip("PPP control or non-IP protocol")
        elif etype in ETH_MPLS:
            while True:
                if n < off + 4:
                    raise _bad("MPLS label truncated")
                bottom = frame[off + 2] & 0x01
                off += 4
                if bottom:
                    break
            if n > off and frame[off] >> 4 in (4, 6):
                return off
            raise _skip("MPLS payload not IP")
        elif etype < 0x0600:
            # IEEE 802.3 length field: only LLC/SNAP carries an EtherType.
            if n >= off + 8 and frame[off] == 0xAA and frame[off + 1] == 0xAA and frame[off + 2] == 0x03:
                etype = _U16.unpack_from(frame, off + 6)[0]
                off += 8
            else:
                raise _skip("non-IP link layer")
        else:
            raise _skip("non-IP link layer")
    raise _bad("too many stacked link-layer headers")


def _ppp_payload(frame, off):
    n = len(frame)
    if n >= off + 2 and frame[off] == 0xFF and frame[off + 1] == 0x03:
        off += 2  # HDLC address and control bytes
    if n < off + 1:
        raise _bad("PPP header truncated")
    if frame[off] & 0x01:  # protocol-field compression: a one-byte protocol number
        proto = frame[off]
        off += 1
    else:
        if n < off + 2:
            raise _bad("PPP header truncated")
        proto = _U16.unpack_from(frame, off)[0]
        off += 2
    if proto == PPP_IPV4 or proto == PPP_IPV6:
        return off
    raise _skip("PPP control or non-IP protocol")


def _null_payload(frame, big_endian):
    if len(frame) < 4:
        raise _bad("loopback header truncated")
    if big_endian:
        family = _U32.unpack_from(frame, 0)[0]
    else:
        # DLT_NULL stores the family in the writer's byte order: try both.
        family = int.from_bytes(frame[0:4], "little")
        if family != _AF_IPV4 and family not in _AF_IPV6:
            family = _U32.unpack_from(frame, 0)[0]
    if family == _AF_IPV4 or family in _AF_IPV6:
        return 4
    raise _skip("non-IP link layer")


def ip_offset(linktype, frame):
    """Return the offset of the IP header in `frame` for libpcap link type `linktype`.

    Raises:
        PacketError: the frame carries no IP packet, or its link header is truncated.
    """
    if linktype == 1:
        if len(frame) < 14:
            raise _bad("Ethernet header truncated")
        return _ethertype_payload(frame, 14, _U16.unpack_from(frame, 12)[0])
    if linktype in (12, 14, 101, 228, 229):
        return 0
    if linktype == 113:
        if len(frame) < 16:
            raise _bad("Linux cooked header truncated")
        return _ethertype_payload(frame, 16, _U16.unpack_from(frame, 14)[0])
    if linktype == 276:
        if len(frame) < 20:
            raise _bad("Linux cooked v2 header truncated")
        return _ethertype_payload(frame, 20, _U16.unpack_from(frame, 0)[0])
    if linktype == 0:
        return _null_payload(frame, big_endian=False)
    if linktype == 108:
        return _null_payload(frame, big_endian=True)
    if linktype in (9, 50):
        return _ppp_payload(frame, 0)
    if linktype == 51:
        if len(frame) < 6:
            raise _bad("PPPoE header truncated")
        return _ppp_payload(frame, 6)
    if linktype == 104:
        if len(frame) < 4:
            raise _bad("Cisco HDLC header truncated")
        return _ethertype_payload(frame, 4, _U16.unpack_from(frame, 2)[0])
    raise UnsupportedLinkType(linktype)


class UnsupportedLinkType(PacketError):
    """A link type this decoder does not know; the whole capture is affected, not one packet."""

    def __init__(self, linktype):
        super().__init__(f"unsupported link type {linktype}", malformed=False)
        self.linktype = linktype


SUPPORTED_LINKTYPES = {
    0: "BSD loopback (NULL)", 1: "Ethernet", 9: "PPP", 12: "raw IP", 14: "raw IP",
    50: "PPP in HDLC framing", 51: "PPPoE", 101: "raw IP", 104: "Cisco HDLC",
    108: "OpenBSD loopback", 113: "Linux cooked v1", 228: "raw IPv4", 229: "raw IPv6",
    276: "Linux cooked v2",
}


class Decoder:
    """Decodes frames into `Packet`s, reassembling IP fragments on the way.

    Args:
        reassembler: the fragment buffer; a default-sized one when None.
    """

    def __init__(self, reassembler=None):
        self.reassembler = reassembler if reassembler is not None else Reassembler()

    def decode(self, ts, linktype, frame, wire_len):
        """Decode one captured frame.

        Args:
            ts: capture time in seconds.
            linktype: libpcap link type of the frame.
            frame: the captured bytes (possibly cut short by the snapshot length).
            wire_len: the frame's length on the wire, as the capture header states, or
                None when unknown (live capture through pypcap). Without it the IP
                header's length fields are trusted.

        Returns:
            A `Packet`, or None when the frame was an IP fragment that the reassembly buffer
            kept (the whole datagram comes out with its last missing fragment).

        Raises:
            PacketError: a frame to skip; `reason` names why.
        """
        if _native_decode is not None:
            # The compiled decoder takes the common layouts and returns None for the rest.
            pkt = _native_decode(ts, linktype, frame, wire_len)
            if pkt is not None:
                return pkt
        off = ip_offset(linktype, frame)
        ip = frame[off:] if off else frame
        if type(ip) is not bytes:
            ip = bytes(ip)
        return self.decode_ip(ts, ip, None if wire_len is None else wire_len - off)

    def decode_ip(self, ts, ip, wire_ip_len):
        n = len(ip)
        if n < 1:
            raise _bad("IP header truncated")
        version = ip[0] >> 4
        if version == 4:
            return self._decode_ipv4(ts, ip, n, wire_ip_len)
        if version == 6:
            return self._decode_ipv6(ts, ip, n, wire_ip_len)
        raise _bad("IP version not 4 or 6")

    def _decode_ipv4(self, ts, ip, n, wire_ip_len):
        ihl = (ip[0] & 0x0F) * 4
        if ihl < 20:
            raise _bad("IPv4 header length < 20")
        if n < ihl:
            raise _bad("IPv4 header truncated")
        total = _U16.unpack_from(ip, 2)[0]
        if total == 0:
            # Segmentation offload on the capturing host leaves the length 0: the frame's
            # own length is the best estimate.
            total = n if wire_ip_len is None else wire_ip_len
        elif total < ihl:
            raise _bad("IPv4 total length < header length")
        elif wire_ip_len is not None and total > wire_ip_len:
            raise _bad("IPv4 total length > frame length")
        frag = _U16.unpack_from(ip, 6)[0]
        proto = ip[9]
        if frag & 0x3FFF:  # MF set or a non-zero offset
            whole = self.reassembler.add_ipv4(ts, ip, ihl, total, frag)
            if whole is None:
                return None
            # The rebuilt header is the first fragment's, whose options may differ from the
            # fragment that completed the datagram.
            ip = whole
            ihl = (ip[0] & 0x0F) * 4
            n = total = len(ip)
        return self._transport(ts, 4, proto, ip[12:16], ip[16:20], ip, n, ihl, total)

    def _decode_ipv6(self, ts, ip, n, wire_ip_len):
        if n < 40:
            raise _bad("IPv6 header truncated")
        plen = _U16.unpack_from(ip, 4)[0]
        if plen:
            total = 40 + plen
        else:  # a jumbogram or segmentation offload
            total = n if wire_ip_len is None else wire_ip_len
        if wire_ip_len is not None and total > wire_ip_len:
            raise _bad("IPv6 payload length > frame length")
        nh = ip[6]
        nh_at = 6  # where the byte naming the current header sits
        p = 40
        for _ in range(16):  # bounds the number of extension headers walked
            if nh in _IPV6_EXT_GENERIC:
                if n < p + 2:
                    raise _bad("IPv6 extension header truncated")
                nh, nh_at, p = ip[p], p, p + (ip[p + 1] + 1) * 8
            elif nh == _IPV6_AH:
                if n < p + 2:
                    raise _bad("IPv6 extension header truncated")
                nh, nh_at, p = ip[p], p, p + (ip[p + 1] + 2) * 4
            elif nh == _IPV6_FRAGMENT:
                if n < p + 8:
                    raise _bad("IPv6 fragment header truncated")
                offset_flags = _U16.unpack_from(ip, p + 2)[0]
                if offset_flags & 0xFFF9 == 0:  # atomic fragment: offset 0 and no M flag
                    nh, nh_at, p = ip[p], p, p + 8
                    continue
                whole = self.reassembler.add_ipv6(ts, ip, p, nh_at, total, offset_flags)
                if whole is None:
                    return None
                # Extension headers may follow the Fragment header: keep walking.
                ip, nh, p = whole
                n = total = len(ip)
            else:
                break
        else:
            raise _bad("too many IPv6 extension headers")
        if p > total:
            raise _bad("IPv6 extension headers exceed payload length")
        return self._transport(ts, 6, nh, ip[8:24], ip[24:40], ip, n, p, total)

    @staticmethod
    def _transport(ts, version, proto, src, dst, ip, n, l4, total):
        if proto == PROTO_TCP:
            if n < l4 + 4:
                raise _bad("L4 header truncated")
            sport, dport = _PORTS.unpack_from(ip, l4)
            if n >= l4 + 14:
                doff = (ip[l4 + 12] >> 4) * 4
                if doff < 20:
                    raise _bad("TCP data offset < 5")
                if l4 + doff > total:
                    raise _bad("TCP header exceeds IP length")
                if doff > 20 and n >= l4 + doff and not _tcp_options_valid(ip, l4 + 20, l4 + doff):
                    raise _bad("TCP options invalid")
                flags = ip[l4 + 13]
            else:
                # NOTE: with a snapshot length this short the header length and flags
                # are unknown; the packet still counts in its flow by its ports.
                doff = 20
                flags = 0
                if l4 + doff > total:
                    raise _bad("TCP header exceeds IP length")
            return Packet(ts, version, proto, src, dst, sport, dport, ip, l4, doff,
                          total - l4 - doff, flags, n < total)
        if proto == PROTO_UDP:
            if n < l4 + 4:
                raise _bad("L4 header truncated")
            if l4 + 8 > total:
                raise _bad("UDP header exceeds IP length")
            sport, dport = _PORTS.unpack_from(ip, l4)
            return Packet(ts, version, proto, src, dst, sport, dport, ip, l4, 8,
                          total - l4 - 8, 0, n < total)
        raise _skip(f"not TCP/UDP ({_PROTO_NAMES.get(proto, 'IP protocol %d' % proto)})")


def _tcp_options_valid(ip, start, end):
    """Return True when the TCP options in ip[start:end] parse as kind-length items."""
    p = start
    while p < end:
        kind = ip[p]
        if kind == 0:  # end of option list: the rest is padding
            return True
        if kind == 1:  # no-operation
            p += 1
            continue
        if p + 1 >= end:
            return False
        length = ip[p + 1]
        if length < 2 or p + length > end:
            return False
        p += length
    return True


class Reassembler:
    """Bounded IPv4 and IPv6 fragment reassembly.

    A datagram waits at most `timeout_s` of capture time for its missing fragments. At
    most `max_datagrams` wait at once, and the oldest is dropped to make room. A datagram
    longer than 65,535 bytes, or with overlapping fragments, is dropped. Dropped fragments
    are counted in `dropped` by reason; they never turn into flows.

    Args:
        max_datagrams: how many incomplete datagrams are kept.
        timeout_s: seconds of capture time after the first fragment before a datagram is
            dropped.
    """

    def __init__(self, max_datagrams=256, timeout_s=30.0):
        self.max_datagrams = max_datagrams
        self.timeout_s = timeout_s
        self.pending = {}
        self.dropped = {}
        # Largest time stamp seen: like the flow table's clock, a stamp that goes back
        # expires nothing.
        self.now = None

    def _drop(self, reason, count=1):
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def _expire(self, ts):
        if self.now is None or ts > self.now:
            self.now = ts
        if not self.pending:
            return
        now = self.now
        old = [k for k, d in self.pending.items() if now - d[0] > self.timeout_s]
        for k in old:
            del self.pending[k]
            self._drop("fragment timeout")

    def _add(self, ts, key, offset, more, data, header):
        self._expire(ts)
        entry = self.pending.get(key)
        if entry is None:
            if len(self.pending) >= self.max_datagrams:
                del self.pending[next(iter(self.pending))]
                self._drop("fragment buffer full")
            # [first-seen time on the clock, {offset: bytes}, total length or None, header
            # of offset 0]. The clock, not the fragment's own stamp, so a stamp from the
            # past does not make the datagram look old at once.
            entry = [self.now, {}, None, None]
            self.pending[key] = entry
        parts = entry[1]
        if offset in parts or offset + len(data) > 65535:
            del self.pending[key]
            self._drop("fragment overlap or oversize")
            return None
        parts[offset] = data
        if not more:
            entry[2] = offset + len(data)
        if offset == 0:
            entry[3] = header
        if entry[2] is None or entry[3] is None:
            return None
        pos = 0
        for off in sorted(parts):
            if off != pos:
                if off > pos:
                    return None  # a gap: wait for the missing fragment
                del self.pending[key]
                self._drop("fragment overlap or oversize")
                return None
            pos += len(parts[off])
        del self.pending[key]
        if pos != entry[2]:
            self._drop("fragment overlap or oversize")
            return None
        return entry[3], b"".join(parts[o] for o in sorted(parts))

    def add_ipv4(self, ts, ip, ihl, total, frag):
        """Add an IPv4 fragment; return the whole datagram once complete, else None."""
        data = ip[ihl:total]
        if len(data) < total - ihl:
            self._drop("fragment truncated by snapshot length")
            return None
        offset = (frag & 0x1FFF) * 8
        more = bool(frag & 0x2000)
        if more and len(data) % 8:
            raise _bad("IPv4 fragment length not a multiple of 8")
        key = (4, ip[12:20], ip[9], ip[4:6])
        done = self._add(ts, key, offset, more, data, ip[:ihl])
        if done is None:
            return None
        header, payload = done
        total = len(header) + len(payload)
        if total > 65535:
            self._drop("fragment overlap or oversize")
            return None
        # The rebuilt header: same fields, total length of the whole datagram, no
        # fragment bits. The checksum is left stale because nothing reads it.
        return header[:2] + _U16.pack(total) + header[4:6] + b"\x00\x00" + header[8:] + payload

    def add_ipv6(self, ts, ip, frag_at, nh_at, total, offset_flags):
        """Add an IPv6 fragment; return (datagram, next header, transport offset) or None.

        The rebuilt datagram keeps the fixed header and the extension headers before the
        fragment header (`frag_at`), drops the fragment header itself and writes its next
        header into the byte at `nh_at` that named it.
        """
        data = ip[frag_at + 8:total]
        if len(data) < total - frag_at - 8:
            self._drop("fragment truncated by snapshot length")
            return None
        offset = offset_flags & 0xFFF8
        more = bool(offset_flags & 0x0001)
        key = (6, ip[8:40], ip[frag_at + 4:frag_at + 8])
        done = self._add(ts, key, offset, more, data, (ip[:frag_at], ip[frag_at], nh_at))
        if done is None:
            return None
        (unfragmentable, next_header, nh_at), payload = done
        whole = bytearray(unfragmentable + payload)
        _U16.pack_into(whole, 4, len(whole) - 40)
        whole[nh_at] = next_header
        return bytes(whole), next_header, len(unfragmentable)
