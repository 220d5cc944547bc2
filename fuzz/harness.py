"""Contract checks shared by the atheris harnesses and tests/test_fuzz.py.

Nothing here imports atheris, so saved crash inputs replay in the ordinary test run.

Decoder input format (one byte string, parsed by `decoder_records`):

    byte 0           link type: LINKTYPES[b % len] for b < 0xF0, else an unsupported one
    then records     [control: 1 byte][length: 2 bytes, big-endian][frame: length bytes]

The control byte's bits 0-1 pick the wire length: 0 is None (as in a live capture), 1 the
captured length, 2 the captured length + 1000 and 3 the captured length + 65536. Bits 2-3
pick the time step before the record: +1 ms, +31 s (past the fragment timeout), 10 years
back, or a time stamp in 1970. A frame cut short by the end of the input is used as it is.

Capture file input: the bytes of a file, written to a temporary file and read with
`CaptureFile`; every record is decoded too.
"""

import importlib
import math
import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from edge_etc.capfile import MAX_RECORD_BYTES, CaptureFile  # noqa: E402
from edge_etc.decode import SUPPORTED_LINKTYPES, Decoder, Packet, Reassembler  # noqa: E402
from edge_etc.errors import CaptureFileError, PacketError  # noqa: E402
from edge_etc.preprocess import Preprocessing, vectorize  # noqa: E402

LINKTYPES = sorted(SUPPORTED_LINKTYPES)
UNSUPPORTED_LINKTYPES = [2, 105, 127, 147, 65535]
T0 = 1_700_000_000.0
TIME_STEPS = (0.001, 31.0, -315_576_000.0, None)  # None: stamp the record 1970-01-01
WIRE_EXTRA = (None, 0, 1000, 65536)

# Every setting is spelled out, so the checks do not move with the product's defaults.
SETTINGS_VARIANTS = [
    Preprocessing(vector_bytes=40, window_rule="all", context=False, port_buckets=0),
    Preprocessing(vector_bytes=48, context=False, port_buckets=0),
    Preprocessing(vector_bytes=128, context=False, port_buckets=0),
    Preprocessing(vector_bytes=300, server_port=False, context=False, port_buckets=0),
    Preprocessing(vector_bytes=128, mask_capture_fields=False, mask_addresses=False,
                  context=False, port_buckets=0),
    Preprocessing(vector_bytes=64, context=True, port_buckets=0),
    Preprocessing(vector_bytes=152, context=True, port_buckets=16, window_rule="all"),
    Preprocessing(vector_bytes=312, context=True, port_buckets=256),
]
GAPS_S = (0.0, 0.0004, 3.0, -5.0, 1e12)  # seconds since the flow's previous packet


# --- decoder --------------------------------------------------------------------------------

def linktype_of(byte):
    if byte >= 0xF0:
        return UNSUPPORTED_LINKTYPES[byte % len(UNSUPPORTED_LINKTYPES)]
    return LINKTYPES[byte % len(LINKTYPES)]


def decoder_records(data):
    """Parse a decoder input into (ts, linktype, frame, wire_len) records."""
    if not data:
        return []
    linktype = linktype_of(data[0])
    records = []
    ts = T0
    pos = 1
    while pos < len(data):
        control = data[pos]
        length = int.from_bytes(data[pos + 1:pos + 3], "big")
        frame = bytes(data[pos + 3:pos + 3 + length])
        pos += 3 + length
        step = TIME_STEPS[(control >> 2) & 3]
        ts = 1.0 if step is None else ts + step
        extra = WIRE_EXTRA[control & 3]
        records.append((ts, linktype, frame, None if extra is None else len(frame) + extra))
    return records


def decoder_input(linktype, frames, control=1):
    """Encode frames of one link type as a decoder input (the inverse of `decoder_records`)."""
    out = bytearray([LINKTYPES.index(linktype)])
    for frame in frames:
        frame = frame[:0xFFFF]
        out += bytes([control]) + struct.pack("!H", len(frame)) + frame
    return bytes(out)


def check_decoder_input(data):
    """Decode every record of a decoder input through one decoder with a small buffer."""
    decoder = Decoder(Reassembler(max_datagrams=8, timeout_s=30.0))
    for ts, linktype, frame, wire_len in decoder_records(data):
        decode_checked(decoder, ts, linktype, frame, wire_len)
        assert len(decoder.reassembler.pending) <= 8


def decode_checked(decoder, ts, linktype, frame, wire_len):
    """Decode one frame: any exception but PacketError propagates; check what comes out."""
    try:
        pkt = decoder.decode(ts, linktype, frame, wire_len)
    except PacketError as e:
        assert isinstance(e.reason, str) and e.reason, repr(e.reason)
        assert isinstance(e.malformed, bool), repr(e.malformed)
        return None
    if pkt is not None:
        check_packet(pkt)
    return pkt


def check_packet(pkt):
    """Check a decoded packet's fields and its vectors under several settings."""
    assert isinstance(pkt, Packet)
    assert pkt.proto in (6, 17)
    assert pkt.version in (4, 6)
    assert len(pkt.src) == len(pkt.dst) == (4 if pkt.version == 4 else 16)
    assert isinstance(pkt.ip, bytes)
    assert pkt.l4_offset >= 20
    assert pkt.l4_offset + 4 <= len(pkt.ip), "ports read from bytes that were not captured"
    assert 0 <= pkt.sport <= 0xFFFF
    assert 0 <= pkt.dport <= 0xFFFF
    assert pkt.l4_len >= 8
    assert pkt.payload_len >= 0
    for settings in SETTINGS_VARIANTS:
        for to_server in (True, False):
            for gap_s in GAPS_S if settings.context else (0.0,):
                check_vector(pkt, vectorize(pkt, to_server, settings, gap_s), settings)


def check_vector(pkt, vec, settings):
    """Check that a vector has `vector_bytes` bytes, and that its header part has zeros
    past the captured bytes and masked addresses."""
    assert isinstance(vec, bytes)
    assert len(vec) == settings.vector_bytes
    size = settings.header_bytes
    vec = vec[:size]
    # A UDP header is followed by 12 bytes of padding, so the payload sits 12 bytes later.
    captured = len(pkt.ip)
    if pkt.proto == 17 and captured >= pkt.l4_offset + 8:
        captured += 12
    assert vec[captured:] == bytes(max(0, size - captured)), "vector holds bytes past the capture"
    if settings.mask_addresses:
        lo, hi = (12, 20) if pkt.version == 4 else (8, 40)
        hi = min(hi, size)
        assert vec[lo:hi] == bytes(max(0, hi - lo)), "address bytes not masked"


# --- capture file reader --------------------------------------------------------------------

def read_checked(path):
    """Open and read a capture file under the reader's contract and decode every record.

    Returns the records, or None when opening raised CaptureFileError.
    """
    try:
        capture = CaptureFile(path)
    except CaptureFileError as e:
        assert path in str(e), str(e)
        return None
    decoder = Decoder()
    records = []
    with capture:
        for ts, linktype, frame, wire_len in capture:
            assert isinstance(ts, (int, float)) and math.isfinite(ts), repr(ts)
            assert isinstance(linktype, int) and linktype >= 0, repr(linktype)
            assert isinstance(frame, bytes)
            assert len(frame) <= MAX_RECORD_BYTES, f"record of {len(frame)} bytes"
            assert wire_len >= len(frame), (wire_len, len(frame))
            records.append((ts, linktype, frame, wire_len))
            decode_checked(decoder, ts, linktype, frame, wire_len)
        assert capture.records == len(records)
        if capture.stopped is not None:
            assert path in capture.stopped
    return records


def scratch_path():
    """Return a per-process file path for capture inputs, in /dev/shm where it exists."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(folder, f"edge-etc-fuzz-{os.getpid()}.bin")


def check_capfile_input(data, path=None):
    path = path or scratch_path()
    with open(path, "wb") as f:
        f.write(data)
    try:
        return read_checked(path)
    finally:
        os.unlink(path)


# --- known failures -------------------------------------------------------------------------

def known_errors():
    """Exception types named in EDGE_ETC_FUZZ_KNOWN (such as "zlib.error,KeyError"). A long
    run counts and skips them, so it can search past a bug that is already reported."""
    types = []
    for name in os.environ.get("EDGE_ETC_FUZZ_KNOWN", "").split(","):
        name = name.strip()
        if not name:
            continue
        module, _, attr = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module or "builtins"), attr, None)
        except ImportError:
            found = None
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise SystemExit(f"EDGE_ETC_FUZZ_KNOWN: {name!r} is not an exception type")
        types.append(found)
    return tuple(types)


def report_known(seen, error):
    """Count a known error; print the count at powers of two so a long run stays quiet."""
    name = f"{type(error).__module__}.{type(error).__qualname__}"
    seen[name] += 1
    if seen[name] & (seen[name] - 1) == 0:
        print(f"known error {name} seen {seen[name]} times: {error}", file=sys.stderr)
