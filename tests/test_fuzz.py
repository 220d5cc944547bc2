"""Property-based fuzzing of the packet decoder, the capture file reader and the vectorizer.

The contracts checked here:
- `Decoder.decode` returns a `Packet` or None, or raises `PacketError` (with a non-empty
  `reason` and a bool `malformed`), and nothing else, for any bytes on any link type.
- `CaptureFile` raises only `CaptureFileError` when it opens a file, and iterating never
  raises: reading ends early with `stopped` set instead.
- `vectorize` always returns `vector_bytes` bytes, and zeros past the captured ones.

Inputs are arbitrary bytes and mutations of real frames and files from tests/data/cases
and tests/data/own/make_own.py. Example counts stay small, so the module runs in well under
a minute. The long coverage-guided runs use the atheris harnesses in fuzz/ (see
fuzz/README.md), and every input that once failed is replayed here.
"""

import os
import struct
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import CASES, ROOT
from edge_etc.capfile import MAX_RECORD_BYTES, CaptureFile
from edge_etc.decode import Decoder, Reassembler, ip_offset
from edge_etc.errors import PacketError
from edge_etc.flows import FlowTable
from edge_etc.preprocess import Preprocessing, vectorize

sys.path.insert(0, os.path.join(ROOT, "tests", "data", "own"))
sys.path.insert(0, os.path.join(ROOT, "fuzz"))
import fastpath_diff  # noqa: E402
import harness  # noqa: E402
import make_own as gen  # noqa: E402

CRASHES = os.path.join(ROOT, "fuzz", "crashes")
LINKTYPES = harness.LINKTYPES
UNSUPPORTED_LINKTYPES = harness.UNSUPPORTED_LINKTYPES

# Small shared cases whose records seed the frame mutations.
SEED_CAPTURES = [
    "eth_tls_2flows.pcap", "ipv6_exthdrs_tls_2flows.pcap", "ipv4_fragments_udp443.pcap",
    "malformed_headers_mix.pcap", "icmp_arp_igmp_only.pcap", "null_loopback_tls_2flows.pcap",
    "pppoe_session_tls_2flows.pcap", "sll_tls_2flows.pcap", "sll2_tls_2flows.pcap",
    "vlan_8021q_tls_2flows.pcap", "rawip_lt101_tls_2flows.pcap", "udp443_quic_like.pcap",
    "snaplen40_l4_cut.pcap", "short_flows_1_2_3_pkts.pcap", "pcapng_two_linktypes.pcapng",
]
# Whole files that seed the file mutations (small ones, so each example stays fast).
SEED_FILES = [
    "eth_tls_2flows.pcap", "pcapng_tls_2flows.pcapng", "pcapng_two_linktypes.pcapng",
    "nanosecond_tls_2flows.pcap", "malformed_headers_mix.pcap", "udp443_quic_like.pcap",
    "truncated_mid_record.pcap", "header_only_no_packets.pcap", "eth_tls_2flows.pcap.gz",
]

SETTINGS_VARIANTS = harness.SETTINGS_VARIANTS


def _seed_frames():
    """(link type, frame, wire length) of real frames of every supported link type."""
    frames = []
    for name in SEED_CAPTURES:
        with CaptureFile(os.path.join(CASES, name)) as capture:
            frames += [(lt, frame, wire_len) for _, lt, frame, wire_len in capture]
    for linktype, builder, versions in gen.LINK_VARIANTS.values():
        for version in versions:
            for _, ip in gen.tls_two_flows(version)[:8]:
                frame = builder(ip)
                frames.append((linktype, frame, len(frame)))
    own_ip = (gen.fragmented_udp_flow(6) + gen.fragmented_udp_flow(6, dest_options=True)
              + gen.fragmented_udp_flow(4, first_options=bytes([7, 7, 4]) + bytes(5))
              + gen.ipv6_ah_atomic_flow()[:4] + gen.ipv4_options_flow(15, 1)[:4])
    frames += [(101, ip, len(ip)) for _, ip in own_ip]
    return frames


def _seed_files():
    """Seed file contents by name: shared cases and pcapng and compression variants."""
    files = {}
    for name in SEED_FILES:
        with open(os.path.join(CASES, name), "rb") as f:
            files[name] = f.read()
    records = gen.eth_two_flows()[:12]
    files["own_big_endian.pcapng"] = gen.pcapng_section(records, 1, endian=">", tsresol=0x94,
                                                        tsoffset=1_000_000)
    files["own_simple_blocks.pcapng"] = b"".join(
        [gen.pcapng_shb(), gen.pcapng_idb(1)] + [gen.pcapng_spb(f) for _, f in records])
    files["own_two_sections.pcapng"] = (gen.pcapng_section(records[:6], 1)
                                        + gen.pcapng_section(records[6:], 1, endian=">"))
    files["own_big_endian_nano.pcap"] = gen.pcap(records, 1, endian=">", nano=True)
    files["own.pcap.bz2"] = gen.compress(gen.pcap(records, 1), "bzip2")
    files["own.pcap.xz"] = gen.compress(gen.pcap(records, 1), "xz")
    return files


SEED_FRAMES = _seed_frames()
SEED_FILE_BYTES = _seed_files()
# Compressed seeds are mutated in a test of their own, so that a failure in the
# decompression cannot hide one in the pcap and pcapng parsing.
UNCOMPRESSED = sorted(n for n in SEED_FILE_BYTES if not n.endswith((".gz", ".bz2", ".xz")))
FILE_MAGICS = [b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
               b"\x0a\x0d\x0d\x0a"]
COMPRESSED_MAGICS = [b"\x1f\x8b\x08\x00", b"BZh9", b"\xfd7zXZ\x00"]
# Values that sit on a length check's boundary: block and record lengths, limits, signs.
INTERESTING_U32 = [0, 1, 3, 4, 7, 8, 11, 12, 16, 20, 24, 28, 32, 40, 0x7F, 0xFF, 0x100,
                   0xFFFF, 0x10000, MAX_RECORD_BYTES, MAX_RECORD_BYTES + 1, 16 * 1024 * 1024 + 4,
                   0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


# --- mutations --------------------------------------------------------------------------------

_OP = st.tuples(
    st.sampled_from(("flip", "overwrite", "truncate", "insert", "delete", "duplicate", "u16", "u32")),
    st.integers(0, 1 << 20),
    st.binary(min_size=1, max_size=16),
    st.sampled_from(INTERESTING_U32),
    st.booleans(),
)


def mutate(data, ops):
    """Apply drawn mutation operations to `data`; positions wrap around its length."""
    b = bytearray(data)
    for kind, pos, chunk, value, big_endian in ops:
        if not b:
            b += chunk
            continue
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= chunk[0] or 0x80
        elif kind == "overwrite":
            b[i:i + len(chunk)] = chunk
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = chunk
        elif kind == "delete":
            del b[i:i + len(chunk)]
        elif kind == "duplicate":
            b[i:i] = b[i:i + 8 * len(chunk)]
        elif kind == "u16":
            b[i:i + 2] = struct.pack(">H" if big_endian else "<H", value & 0xFFFF)
        else:
            b[i:i + 4] = struct.pack(">I" if big_endian else "<I", value)
    return bytes(b)


mutations = st.lists(_OP, min_size=1, max_size=6)


@st.composite
def mutated_frames(draw):
    linktype, frame, wire_len = draw(st.sampled_from(SEED_FRAMES))
    frame = mutate(frame, draw(mutations))
    return linktype, frame, draw(wire_lengths(frame, wire_len))


def wire_lengths(frame, original=None):
    """None (live capture), the captured length, the original one, or more."""
    choices = [st.none(), st.just(len(frame)), st.integers(len(frame), len(frame) + 70000)]
    if original is not None and original >= len(frame):
        choices.append(st.just(original))
    return st.one_of(choices)


# --- checks ---------------------------------------------------------------------------------
# The contract checks live in fuzz/harness.py, shared with the atheris harnesses.

decode_checked = harness.decode_checked
check_vector = harness.check_vector
read_checked = harness.read_checked


@pytest.fixture(scope="module")
def scratch():
    """A file path that each example overwrites."""
    with tempfile.TemporaryDirectory(prefix="edge-etc-fuzz-") as folder:
        yield os.path.join(folder, "input.bin")


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


# EDGE_ETC_FUZZ_FACTOR multiplies every example count, for a longer run by hand.
FACTOR = int(os.environ.get("EDGE_ETC_FUZZ_FACTOR", "1"))
FAST = settings(max_examples=400 * FACTOR, deadline=None)
FILES = settings(max_examples=200 * FACTOR, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- decoder ----------------------------------------------------------------------------------

@FAST
@given(st.sampled_from(LINKTYPES + UNSUPPORTED_LINKTYPES), st.binary(max_size=200), st.data())
def test_decode_arbitrary_bytes(linktype, frame, data):
    decode_checked(Decoder(), 1.0, linktype, frame, data.draw(wire_lengths(frame)))


@FAST
@given(st.sampled_from(SEED_FRAMES), st.sampled_from([0x40, 0x45, 0x46, 0x4F, 0x60]),
       st.binary(max_size=120), st.data())
def test_decode_real_link_header_random_ip(seed, first_byte, rest, data):
    linktype, frame, _ = seed
    try:
        off = ip_offset(linktype, frame)
    except PacketError:
        off = 0
    frame = frame[:off] + bytes([first_byte]) + rest
    decode_checked(Decoder(), 1.0, linktype, frame, data.draw(wire_lengths(frame)))


@FAST
@given(mutated_frames())
def test_decode_mutated_real_frames(case):
    linktype, frame, wire_len = case
    decode_checked(Decoder(), 1.0, linktype, frame, wire_len)


@settings(max_examples=150 * FACTOR, deadline=None)
@given(st.lists(st.tuples(mutated_frames(), st.floats(-1e10, 1e10, allow_nan=False)), max_size=30))
def test_decoder_sequence_small_buffer(frames):
    # A tiny fragment buffer and timeout, so eviction and expiry run often.
    decoder = Decoder(Reassembler(max_datagrams=4, timeout_s=1.0))
    for (linktype, frame, wire_len), ts in frames:
        decode_checked(decoder, ts, linktype, frame, wire_len)
        assert len(decoder.reassembler.pending) <= 4


@settings(max_examples=300 * FACTOR, deadline=None)
@given(st.sampled_from(SEED_FRAMES), st.integers(0, 2000), st.sampled_from(SETTINGS_VARIANTS))
def test_snaplen_cut_changes_only_uncaptured_bytes(seed, cut, settings_):
    linktype, frame, wire_len = seed
    full = decode_checked(Decoder(), 1.0, linktype, frame, wire_len)
    if full is None or cut >= len(frame):
        return
    short = decode_checked(Decoder(), 1.0, linktype, frame[:cut], wire_len)
    if short is None:
        return
    assert (short.sport, short.dport, short.src, short.dst) == (full.sport, full.dport, full.src, full.dst)
    assert short.payload_len == full.payload_len  # from the IP header, not the frame
    for to_server in (True, False):
        v_short = vectorize(short, to_server, settings_)
        v_full = vectorize(full, to_server, settings_)
        captured = len(short.ip)
        if short.proto == 17 and captured >= short.l4_offset + 8:
            captured += 12
        # Only the header part: the context bytes carry TCP flags, unknown when cut short.
        limit = min(captured, settings_.header_bytes)
        assert v_short[:limit] == v_full[:limit]


@st.composite
def any_settings(draw):
    """Valid `Preprocessing` settings, flow context and port buckets included."""
    server_port = draw(st.booleans())
    context = draw(st.booleans())
    buckets = draw(st.integers(0, 64)) if context and server_port else 0
    header = draw(st.integers(40, 400))
    probe = Preprocessing(vector_bytes=4096, context=context, server_port=server_port,
                          port_buckets=buckets)
    return Preprocessing(vector_bytes=min(4096, header + probe.context_bytes),
                         window_rule=draw(st.sampled_from(["payload", "all"])),
                         server_port=server_port, mask_addresses=draw(st.booleans()),
                         mask_capture_fields=draw(st.booleans()), context=context,
                         port_buckets=buckets)


@settings(max_examples=300 * FACTOR, deadline=None)
@given(mutated_frames(), any_settings(), st.floats(-1e20, 1e20, allow_nan=False))
def test_vectorize_any_settings(case, settings_, gap_s):
    linktype, frame, wire_len = case
    pkt = decode_checked(Decoder(), 1.0, linktype, frame, wire_len)
    if pkt is None:
        return
    for to_server in (True, False):
        check_vector(pkt, vectorize(pkt, to_server, settings_, gap_s), settings_)


# --- capture file reader -----------------------------------------------------------------------

@FILES
@given(st.sampled_from(FILE_MAGICS), st.binary(max_size=600))
def test_capfile_magic_then_random(scratch, magic, rest):
    read_checked(write_file(scratch, magic + rest))


@FILES
@given(st.sampled_from(COMPRESSED_MAGICS), st.binary(max_size=600))
def test_capfile_compressed_magic_then_random(scratch, magic, rest):
    read_checked(write_file(scratch, magic + rest))


@FILES
@given(st.binary(max_size=64))
def test_capfile_arbitrary_bytes(scratch, data):
    read_checked(write_file(scratch, data))


@FILES
@given(st.sampled_from(UNCOMPRESSED), mutations)
def test_capfile_mutated_files(scratch, name, ops):
    read_checked(write_file(scratch, mutate(SEED_FILE_BYTES[name], ops)))


CONTEXT = Preprocessing(vector_bytes=96, context=True, port_buckets=8, window_rule="all")


@FILES
@given(st.sampled_from(UNCOMPRESSED), mutations, st.integers(1, 4))
def test_flow_table_on_mutated_files(scratch, name, ops, max_flows):
    """Run the reader, the decoder and a small flow table with flow context; every
    window keeps its size."""
    records = read_checked(write_file(scratch, mutate(SEED_FILE_BYTES[name], ops)))
    if records is None:
        return
    sizes = []
    table = FlowTable(CONTEXT, lambda flow, ts, window: sizes.append(len(window)),
                      max_flows=max_flows, idle_timeout_s=30.0, max_windows=3)
    decoder = Decoder()
    for record in records:
        pkt = decode_checked(decoder, *record)
        if pkt is not None:
            table.add(pkt)
            assert len(table) <= max_flows
    table.flush()
    assert set(sizes) <= {CONTEXT.window_packets * CONTEXT.vector_bytes}


def _flip_at(where):
    return [("flip", where, b"\x55", 0, False)]


@settings(max_examples=100 * FACTOR, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(SEED_FILE_BYTES)), mutations, st.sampled_from(["gzip", "bzip2", "xz"]),
       st.booleans())
# A flipped byte inside the deflate data of the shared gzip file: zlib rejects the stream.
@example(name="eth_tls_2flows.pcap.gz", ops=_flip_at(40), method="gzip", compress_after=False)
def test_capfile_compressed_mutations(scratch, name, ops, method, compress_after):
    """Mutate a file and then compress it, or mutate compressed bytes."""
    data = SEED_FILE_BYTES[name]
    if compress_after:
        data = gen.compress(mutate(data, ops), method)
    elif name.endswith((".gz", ".bz2", ".xz")):
        data = mutate(data, ops)
    else:
        data = mutate(gen.compress(data, method), ops)
    read_checked(write_file(scratch, data))


# --- compiled fast path against Python -------------------------------------------------------
# fuzz/fastpath_diff.py contains the checks: the compiled decoder, vectorizer and record slicer
# must give Python's packets, bytes and records.

needs_extension = pytest.mark.skipif(not fastpath_diff.available(),
                                     reason="edge_etc._fastpath is not built or is disabled")


@needs_extension
@FAST
@given(st.lists(mutated_frames(), min_size=1, max_size=8))
def test_fastpath_decode_same_as_python(frames):
    for linktype, frame, wire_len in frames:
        fastpath_diff.check_decode_same((1.0, linktype, frame, wire_len))


@needs_extension
@FILES
@given(st.sampled_from(sorted(n for n in SEED_FILE_BYTES if n.endswith(".pcap"))), mutations,
       st.integers(0, 31))
def test_fastpath_pcap_reader_same_as_python(scratch, name, ops, chunk_step):
    """Small read chunks put record headers and data across chunk ends."""
    data = SEED_FILE_BYTES[name]
    flags, linktype = fastpath_diff.fuzz_flags_of(data, chunk_step)
    body = mutate(data[24:], ops)
    fastpath_diff.check_pcap_input(bytes([flags, linktype]) + body, scratch)


def _crash_files():
    if not os.path.isdir(CRASHES):
        return []
    return sorted(n for n in os.listdir(CRASHES)
                  if n.startswith(("capfile-", "decoder-", "fastpath-")))


@pytest.mark.parametrize("name", _crash_files() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no saved fuzz crash inputs in fuzz/crashes"))])
def test_saved_fuzz_crashes(name):
    """Replay every input an atheris run failed on, with the harness it came from."""
    with open(os.path.join(CRASHES, name), "rb") as f:
        data = f.read()
    if name.startswith("capfile-"):
        harness.check_capfile_input(data)
    elif name.startswith("fastpath-"):
        if not fastpath_diff.available():
            pytest.skip("edge_etc._fastpath is not built or is disabled")
        fastpath_diff.check_input(data)
    else:
        harness.check_decoder_input(data)
