"""Differential checks of the compiled fast path (edge_etc/_fastpath.c) against the
pure-Python reference, shared by fuzz/fuzz_fastpath.py and tests/test_fuzz.py.

Nothing here imports atheris. Input format (one byte string):

    byte 0, bit 0 = 0   decoder input: bytes 1.. are a decoder input of harness.py
                        (link type and frames). Each frame goes to the compiled decoder and
                        to the Python decoder. Where the compiled one returns a packet, the
                        Python one must return the same fields. Both vectorizers must then
                        give the same bytes under every setting of harness.SETTINGS_VARIANTS.
    byte 0, bit 0 = 1   pcap input: a classic pcap global header is written first (bits 1-2
                        of byte 0 pick little or big endian, micro- or nanoseconds; byte 1
                        picks the link type), then bytes 2.. as the records. The file is
                        read with the compiled record slicer and without it, with a chunk
                        size of 16 to 512 bytes (16 * (1 + (byte 0 >> 3))) so records cross chunk ends;
                        both reads must give the same records, count and stop message.
                        The file also goes through the compiled flow engine and through
                        the Python decoder and flow table, each with a table of 4 flows
                        and 3 windows per flow. Both must give the same windows with the
                        same flows, skip reasons and table counters.
"""

import os
import struct

import collections

import harness
from edge_etc import capfile, decode, engine, fastpath
from edge_etc.errors import PacketError
from edge_etc.flows import FlowTable
from edge_etc.preprocess import vectorize

FIELDS = ("ts", "version", "proto", "src", "dst", "sport", "dport", "ip", "l4_offset",
          "l4_len", "payload_len", "tcp_flags", "truncated")
PCAP_MAGICS = (0xA1B2C3D4, 0xA1B23C4D)


def available():
    return fastpath.native is not None


def decode_python(decoder, record):
    saved = decode._native_decode
    decode._native_decode = None
    try:
        return decoder.decode(*record)
    finally:
        decode._native_decode = saved


def check_decode_same(record):
    """Compare the compiled decoder with the Python one on one record."""
    fast = fastpath.native.decode(*record)
    if fast is None:
        return
    try:
        slow = decode_python(decode.Decoder(), record)
    except PacketError as e:
        raise AssertionError(f"compiled decoder took a record Python rejects ({e}): {record!r}")
    assert slow is not None, record
    for name in FIELDS:
        a, b = getattr(fast, name), getattr(slow, name)
        assert type(a) is type(b), (name, a, b, record)
        assert a == b, (name, a, b, record)
    python_pkt = decode.PythonPacket(*(getattr(fast, name) for name in FIELDS))
    for settings in harness.SETTINGS_VARIANTS:
        for to_server in (True, False):
            for gap_s in harness.GAPS_S if settings.context else (0.0,):
                for port_block in (True, False):
                    a = vectorize(fast, to_server, settings, gap_s, port_block)
                    b = vectorize(python_pkt, to_server, settings, gap_s, port_block)
                    assert a == b, (settings, to_server, gap_s, port_block, record)


def check_decoder_input(data):
    for record in harness.decoder_records(data):
        check_decode_same(record)


def pcap_bytes(data):
    """Build a classic pcap file from a pcap fuzz input (format above)."""
    flags = data[0] if data else 1
    little = bool(flags & 2)
    magic = PCAP_MAGICS[(flags >> 2) & 1]
    linktype = harness.linktype_of(data[1]) if len(data) > 1 else 1
    header = struct.pack(("<" if little else ">") + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    return header + bytes(data[2:])


def fuzz_flags_of(pcap, chunk_step=0):
    """Return the first two bytes of a pcap fuzz input (byte order, time unit, link type)
    that rebuild the global header of the classic pcap file `pcap`, with read chunks of
    16 * (chunk_step + 1) bytes."""
    magic_le, magic_be = struct.unpack("<I", pcap[:4])[0], struct.unpack(">I", pcap[:4])[0]
    little = magic_le in PCAP_MAGICS
    magic = magic_le if little else magic_be
    if magic not in PCAP_MAGICS:
        raise ValueError(f"not a classic pcap file (magic {pcap[:4].hex()})")
    linktype = struct.unpack_from("<I" if little else ">I", pcap, 20)[0] & 0x0FFFFFFF
    flags = 1 | (2 if little else 0) | (PCAP_MAGICS.index(magic) << 2) | ((chunk_step & 31) << 3)
    return flags, harness.LINKTYPES.index(linktype)


def read_all(path, native, chunk):
    saved_native, saved_chunk = fastpath.native, capfile.CHUNK_BYTES
    fastpath.native = native
    capfile.CHUNK_BYTES = chunk
    try:
        with capfile.CaptureFile(path) as capture:
            records = list(capture)
            return records, capture.records, capture.stopped
    finally:
        fastpath.native, capfile.CHUNK_BYTES = saved_native, saved_chunk


# The flow table of the engine check: small, so that flows are evicted and expire.
TABLE = dict(max_flows=4, idle_timeout_s=30.0, max_windows=3)
ENGINE_SETTINGS = harness.SETTINGS_VARIANTS[6]  # context, port buckets, every packet


def windows_python(path, chunk):
    """Return the windows, skip reasons and table counters of the Python decoder and flow
    table over a capture file."""
    windows = []
    too_short = 0

    def on_window(flow, ts, window):
        windows.append(((flow.serial, flow.proto, flow.client, flow.client_port, flow.server,
                         flow.server_port), window))

    def on_end(flow, reason):
        nonlocal too_short
        too_short += flow.windows == 0

    table = FlowTable(ENGINE_SETTINGS, on_window, on_end, **TABLE)
    decoder = decode.Decoder()
    reasons = collections.Counter()
    saved_chunk = capfile.CHUNK_BYTES
    capfile.CHUNK_BYTES = chunk
    try:
        with capfile.CaptureFile(path) as capture:
            for record in capture:
                try:
                    pkt = decoder.decode(*record)
                except PacketError as e:
                    reasons[e.reason] += 1
                    continue
                if pkt is not None:
                    table.add(pkt)
    finally:
        capfile.CHUNK_BYTES = saved_chunk
    table.flush()
    counters = (table.flows_created, table.evictions, table.expirations, too_short,
                table.time_jumps_back, table.time_jumps_forward)
    return windows, dict(reasons), counters


def windows_engine(path, chunk):
    """Return what `windows_python` returns, from the compiled flow engine."""
    collector = engine.WindowCollector(ENGINE_SETTINGS, capacity=2, **TABLE)
    saved_chunk = capfile.CHUNK_BYTES
    capfile.CHUNK_BYTES = chunk
    try:
        with capfile.CaptureFile(path) as capture:
            collector.feed_capture(capture)
    finally:
        capfile.CHUNK_BYTES = saved_chunk
    collector.finish()
    windows = [(tuple(flow), window) for flow, window in collector.windows]
    reasons = dict(collections.Counter({**collector.stats.skipped, **collector.stats.malformed}))
    e = collector.engine
    counters = (e.flows_created, e.evictions, e.expirations, e.too_short, e.time_jumps_back,
                e.time_jumps_forward)
    return windows, reasons, counters


def check_engine_same(path, chunk):
    fast = windows_engine(path, chunk)
    slow = windows_python(path, chunk)
    assert fast[2] == slow[2], ("table counters", fast[2], slow[2])
    assert fast[1] == slow[1], ("skip reasons", fast[1], slow[1])
    assert len(fast[0]) == len(slow[0]), ("windows", len(fast[0]), len(slow[0]))
    for a, b in zip(fast[0], slow[0]):
        assert a == b, (a, b)


def check_pcap_input(data, path=None):
    path = path or harness.scratch_path()
    flags = data[0] if data else 1
    chunk = 16 + (flags >> 3) * 16
    with open(path, "wb") as f:
        f.write(pcap_bytes(data))
    try:
        fast = read_all(path, fastpath.native, chunk)
        slow = read_all(path, None, chunk)
        if engine.available():
            check_engine_same(path, chunk)
    finally:
        os.unlink(path)
    assert fast[1] == slow[1], (fast[1], slow[1])
    assert fast[2] == slow[2], (fast[2], slow[2])
    assert len(fast[0]) == len(slow[0])
    for a, b in zip(fast[0], slow[0]):
        assert a == b, (a, b)
        assert [type(x) for x in a] == [type(x) for x in b], (a, b)
    for record in fast[0][:64]:
        check_decode_same(record)


def check_input(data, path=None):
    if not data:
        return
    if data[0] & 1:
        check_pcap_input(data, path)
    else:
        check_decoder_input(data[1:])
