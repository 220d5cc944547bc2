"""The model's input: preprocessing settings and the bytes-to-vector step.

Both the dataset builder and the runner turn packets into model vectors with `vectorize`,
and the settings that shape the vectors travel inside the model file, so training and
inference cannot drift apart.

Vector layout (one row of `vector_bytes` unsigned bytes per packet, link layer dropped):

    [ IP header ][ transport header ][ payload ... ][ zero padding ]

- The IP header is copied as captured: IPv4 with its options, IPv6 with its extension
  headers up to the transport header.
- TCP headers keep their length, options included.
- A UDP header is followed by 12 zero bytes, so it fills 20 bytes like an option-less TCP
  header. The first payload byte of a UDP datagram over IPv4 without options is at offset 40.
- Only captured bytes are copied; a packet cut by the snapshot length, or shorter than
  `vector_bytes`, is padded with zeros.

Masking (applied to the copy, never to the capture):

- Addresses: always zeroed unless `mask_addresses` is False (an ablation setting only).
- Client port: always zeroed. The server port stays when `server_port` is True.
- With `mask_capture_fields`, the fields that identify a capture or a host rather than an
  application are zeroed too: IPv4 TOS, identification, fragment field, TTL and checksum,
  IPv4 options; IPv6 traffic class, flow label and hop limit; TCP sequence and
  acknowledgement numbers, window, checksum, urgent pointer and option bytes (the header
  length stays); the UDP checksum. Length fields and TCP flags stay: they carry the packet
  sizes and the connection state.

Flow context (`context`): when set, the last `CONTEXT_BYTES` bytes of each vector carry
what the header bytes hide or scatter, each scaled to one byte, and the header part is
`vector_bytes - CONTEXT_BYTES` long:

    [0] direction: 0 client to server, 255 server to client
    [1] gap since the flow's previous packet: round(20 * log10(1 + microseconds)), at most
        255 (1 ms is 60, 1 s is 120); 0 for the first packet or a time stamp going back
    [2] transport payload length: round(16 * log2(1 + bytes)), at most 255
    [3:5] transport payload length in bytes, big-endian, at most 65,535
    [5:7] server port, big-endian (zero unless `server_port`)
    [7] TCP flags (0 for UDP)

Server port buckets (`port_buckets`, only with `context` and `server_port`): after the
context bytes, a one-hot block of `port_buckets` bytes in which the byte of the server
port's bucket is 255 and the others 0. The bucket is (port * 2654435761 mod 2**32) mod
port_buckets, a multiplicative hash that spreads neighbouring ports. A dense layer over
this block learns one weight vector per bucket: an embedding of the port, which the two
scaled port bytes above cannot give a small network. The block is part of the context, so
the header part is `vector_bytes - CONTEXT_BYTES - port_buckets` bytes.

Which packets form windows (`window_rule`): "payload" uses only packets that carry
transport payload (handshakes and pure ACKs are skipped), "all" uses every packet. A window
is `window_packets` consecutive such packets of one flow, in capture order.
"""

import dataclasses
import functools
import json
import math

from . import fastpath
from .errors import ConfigError

SETTINGS_FORMAT = "edge-etc-preprocessing"
SETTINGS_VERSION = 1
WINDOW_RULES = ("payload", "all")
# Settings added after the first models were written, with the value that reproduces what
# those models were trained with. A model file that lacks one of them gets this value, never
# the current default.
_ABSENT_MEANS = {"context": False, "port_buckets": 0}
CONTEXT_BYTES = 8


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Preprocessing settings: how packets become model input, stored in every model file.

    Attributes:
        vector_bytes: bytes per packet vector, counted from the IP header.
        window_packets: consecutive packets per window.
        window_rule: "payload" (packets with transport payload) or "all".
        server_port: keep the server's port number visible in the vector.
        mask_addresses: zero IP addresses (False only for ablation studies).
        mask_capture_fields: zero TTL, IP identification, TCP sequence numbers, windows,
            checksums and options (see the module docstring).
        context: end each vector with the flow context bytes (see the module docstring).
    """

    # 48 header bytes, then the 8 context bytes and 256 port buckets. 304 header bytes
    # scored no higher in cross-validation and cost inference time and memory per flow.
    vector_bytes: int = 312
    window_packets: int = 3
    window_rule: str = "payload"
    server_port: bool = True
    mask_addresses: bool = True
    mask_capture_fields: bool = True
    context: bool = True
    port_buckets: int = 256

    def __post_init__(self):
        if not isinstance(self.vector_bytes, int) or not 40 <= self.vector_bytes <= 4096:
            raise ConfigError(f"vector_bytes={self.vector_bytes!r} is invalid: expected an "
                              "integer from 40 to 4096 bytes")
        if not isinstance(self.window_packets, int) or not 1 <= self.window_packets <= 16:
            raise ConfigError(f"window_packets={self.window_packets!r} is invalid: expected an "
                              "integer from 1 to 16")
        if self.window_rule not in WINDOW_RULES:
            raise ConfigError(f"window_rule={self.window_rule!r} is invalid: expected one of "
                              f"{', '.join(WINDOW_RULES)}")
        for name in ("server_port", "mask_addresses", "mask_capture_fields", "context"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: expected true or false")
        if not isinstance(self.port_buckets, int) or not 0 <= self.port_buckets <= 4096:
            raise ConfigError(f"port_buckets={self.port_buckets!r} is invalid: expected an integer "
                              "from 0 to 4096")
        if self.port_buckets and not (self.context and self.server_port):
            raise ConfigError("port_buckets needs context = true and server_port = true")
        if self.header_bytes < 40:
            raise ConfigError(f"vector_bytes={self.vector_bytes} leaves {self.header_bytes} header "
                              f"bytes after {self.context_bytes} context bytes: expected at least 40; "
                              f"use vector_bytes >= {40 + self.context_bytes}, or fewer port_buckets "
                              "or no context")

    def to_dict_plain(self):
        """Return the settings alone, without the format marker and version."""
        return dataclasses.asdict(self)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["format"] = SETTINGS_FORMAT
        d["version"] = SETTINGS_VERSION
        return d

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d, source="settings"):
        """Build settings from a dict, rejecting unknown keys and other format versions."""
        d = dict(d)
        fmt = d.pop("format", None)
        version = d.pop("version", None)
        if fmt != SETTINGS_FORMAT:
            raise ConfigError(f"{source}: not edge-etc preprocessing settings (format {fmt!r})")
        if version != SETTINGS_VERSION:
            raise ConfigError(f"{source}: preprocessing settings version {version!r} is not "
                              f"supported by this edge-etc (expected {SETTINGS_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown preprocessing setting(s): {', '.join(unknown)}")
        for name, value in _ABSENT_MEANS.items():
            d.setdefault(name, value)
        return cls(**d)

    @property
    def context_bytes(self):
        """Bytes at the end of each vector that carry flow context, port buckets included."""
        return CONTEXT_BYTES + self.port_buckets if self.context else 0

    @property
    def header_bytes(self):
        """Bytes of each vector taken from the packet (the rest is flow context)."""
        return self.vector_bytes - self.context_bytes

    def takes(self, pkt):
        """Return True when `pkt` is a packet that windows are made of."""
        return self.window_rule == "all" or pkt.payload_len > 0


_UDP_PAD = bytes(12)


def vectorize(pkt, server_is_dst, settings, gap_s=0.0, port_block=True):
    """Build the model vector of one packet.

    Args:
        pkt: a decoded `Packet`.
        server_is_dst: True when the packet travels from client to server, so the server
            port is the packet's destination port.
        settings: the `Preprocessing` the model was trained with.
        gap_s: seconds since the flow's previous packet (used with `settings.context`).
        port_block: append the server port buckets. The flow table leaves them out of the
            vectors it keeps, because they are the same for every packet of a flow, and
            appends `port_block_of(...)` when it assembles a window.

    Returns:
        `settings.vector_bytes` bytes, less `settings.port_buckets` without the port block.
    """
    if fastpath.native is not None and type(pkt) is fastpath.native.Packet:
        return fastpath.native.vectorize(pkt, server_is_dst, settings, gap_s, port_block)
    size = settings.header_bytes
    ip = pkt.ip
    l4 = pkt.l4_offset
    if pkt.proto == 17:
        v = bytearray(ip[:l4 + 8])
        v += _UDP_PAD
        v += ip[l4 + 8:l4 + 8 + size - len(v)]
    else:
        v = bytearray(ip[:size])
    n = len(v)
    if n < size:
        v += bytes(size - n)
    else:
        del v[size:]

    # Transport header, all offsets relative to l4. Each write stops at the vector's end.
    if l4 + 4 <= size:
        if server_is_dst:
            v[l4:l4 + 2] = b"\0\0"
            if not settings.server_port:
                v[l4 + 2:l4 + 4] = b"\0\0"
        else:
            v[l4 + 2:l4 + 4] = b"\0\0"
            if not settings.server_port:
                v[l4:l4 + 2] = b"\0\0"
    if settings.mask_capture_fields:
        if pkt.proto == 6:
            end = min(l4 + pkt.l4_len, size)
            _zero(v, l4 + 4, l4 + 12, size)  # sequence and acknowledgement numbers
            _zero(v, l4 + 14, l4 + 20, size)  # window, checksum, urgent pointer
            _zero(v, l4 + 20, end, size)  # options
        else:
            _zero(v, l4 + 6, l4 + 8, size)  # checksum
        if pkt.version == 4:
            v[1] = 0  # TOS
            _zero(v, 4, 12, size)  # identification, fragment field, TTL, protocol, checksum
            v[9] = pkt.proto  # protocol: restored, it is not a capture trait
            _zero(v, 20, l4, size)  # options
        else:
            v[0] = 0x60
            _zero(v, 1, 4, size)  # traffic class and flow label
            v[7] = 0  # hop limit
    if settings.mask_addresses:
        if pkt.version == 4:
            _zero(v, 12, 20, size)
        else:
            _zero(v, 8, 40, size)
    if settings.context:
        v += _context(pkt, server_is_dst, settings, gap_s, port_block)
    return bytes(v)


def _context(pkt, server_is_dst, settings, gap_s, port_block):
    gap = 0 if gap_s <= 0 else min(255, round(20.0 * math.log10(1.0 + gap_s * 1e6)))
    length = min(pkt.payload_len, 65535)
    size = min(255, round(16.0 * math.log2(1.0 + length)))
    port = 0
    if settings.server_port:
        port = pkt.dport if server_is_dst else pkt.sport
    out = bytes((0 if server_is_dst else 255, gap, size, length >> 8, length & 0xFF,
                 port >> 8, port & 0xFF, pkt.tcp_flags))
    if settings.port_buckets and port_block:
        out += port_block_of(port, settings)
    return out


@functools.lru_cache(maxsize=4096)
def port_block_of(server_port, settings):
    """Return the one-hot server port block of `settings` (empty without port buckets).

    Cached: the flow table asks for it once per window, and few ports repeat many times.
    """
    if not settings.port_buckets:
        return b""
    block = bytearray(settings.port_buckets)
    block[port_bucket(server_port, settings.port_buckets)] = 255
    return bytes(block)


def port_bucket(port, buckets):
    """Return the one-hot bucket of a server port (see the module docstring)."""
    return ((port * 2654435761) & 0xFFFFFFFF) % buckets


def _zero(v, start, end, size):
    end = min(end, size)
    if end > start:
        v[start:end] = bytes(end - start)
