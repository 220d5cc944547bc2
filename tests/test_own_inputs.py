"""The project's own inputs beyond the shared cases in tests/data/cases: more link layers,
file formats, IP fragments and options, and flows with odd starts, reuse and time stamps.

Every capture is built at test time by tests/data/own/make_own.py (seeded, so the bytes
never change), and every check runs the real reader, decoder and flow table through
`Scan`, or the real CLI with the bundled model. Expected values come from how the inputs
were built (which flows, how many packets, which time stamps), never from the product.
"""

import json
import os
import re
import struct
import sys
import zlib

import pytest

from conftest import ROOT, Scan, run_cli
from edge_etc.capfile import CaptureFile
from edge_etc.errors import CaptureFileError
from edge_etc.preprocess import Preprocessing

sys.path.insert(0, os.path.join(ROOT, "tests", "data", "own"))
import make_own as gen  # noqa: E402



def packet_only(**kw):
    """Settings without flow context, so a vector depends on its packet's bytes alone."""
    return Preprocessing(context=False, port_buckets=0, **kw)


# Every setting is spelled out, so the checks do not move with the product's defaults.
PAYLOAD = packet_only(vector_bytes=128)
ALL = packet_only(vector_bytes=128, window_rule="all")
SHORT = packet_only(vector_bytes=48, window_rule="all")
CONTEXT = Preprocessing(vector_bytes=128 + 8 + 16, window_rule="all", context=True, port_buckets=16)
# Context vectors carry the time since the flow's previous packet, so captures whose time
# stamps differ are compared with PACKET_ONLY settings.
PACKET_ONLY = [PAYLOAD, ALL, SHORT]
SETTINGS = PACKET_ONLY + [CONTEXT]

FLOW4_A = "tcp 192.0.2.10:51000 <-> 198.51.100.20:443"
FLOW4_B = "tcp 192.0.2.11:51001 <-> 203.0.113.30:443"
FLOW6_A = "tcp 2001:db8:1::10:51010 <-> 2001:db8:2::20:443"
FLOW6_B = "tcp 2001:db8:1::11:51011 <-> 2001:db8:3::30:443"
UDP4 = "udp 192.0.2.10:52000 <-> 198.51.100.20:443"
UDP6 = "udp 2001:db8:1::10:52000 <-> 2001:db8:2::20:443"


@pytest.fixture(scope="module")
def write(tmp_path_factory):
    """Return a function that writes bytes to a file in the module's folder and returns its path."""
    folder = tmp_path_factory.mktemp("own")

    def _write(name, data):
        path = folder / name
        path.write_bytes(data)
        return str(path)

    return _write


def baseline(write, version=4):
    return write(f"eth_ipv{version}.pcap", gen.pcap(gen.eth_two_flows(version), 1))


def expected_packet_counts(version=4):
    """Packets per flow of `tls_two_flows`, counted from the generator's own packets."""
    packets = gen.tls_two_flows(version)
    if version == 4:
        client_a, name_a, name_b = gen.addr(gen.CLIENT4), FLOW4_A, FLOW4_B
        in_a = [client_a in (ip[12:16], ip[16:20]) for _, ip in packets]
    else:
        client_a, name_a, name_b = gen.addr(gen.CLIENT6), FLOW6_A, FLOW6_B
        in_a = [client_a in (ip[8:24], ip[24:40]) for _, ip in packets]
    return {name_a: sum(in_a), name_b: len(in_a) - sum(in_a)}


def assert_same_flows(scan, base):
    assert dict(scan.packets) == dict(base.packets)
    assert scan.windows.keys() == base.windows.keys()
    for key in base.windows:
        assert scan.windows[key] == base.windows[key], key
    assert not scan.skipped
    assert scan.stopped is None


def summary_line(stderr):
    (line,) = [x for x in stderr.splitlines() if "summary:" in x]
    return dict(kv.split("=") for kv in line.split("summary: ")[1].split())


# --- link layers -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 6])
def test_baseline_two_flows(write, version):
    expected = expected_packet_counts(version)
    for settings in SETTINGS:
        scan = Scan(baseline(write, version), settings)
        assert dict(scan.packets) == expected
        assert not scan.skipped
        for key in expected:
            assert scan.windows[key], key


LINK_CASES = [(name, version) for name, (_, _, versions) in gen.LINK_VARIANTS.items()
              for version in versions]


@pytest.mark.parametrize("name,version", LINK_CASES, ids=[f"{n}-ipv{v}" for n, v in LINK_CASES])
def test_link_layer_matches_ethernet(write, name, version):
    linktype, builder, _ = gen.LINK_VARIANTS[name]
    path = write(f"link_{name}_ipv{version}.pcap",
                 gen.pcap(gen.framed(gen.tls_two_flows(version), builder), linktype))
    base = baseline(write, version)
    for settings in SETTINGS:
        assert_same_flows(Scan(path, settings), Scan(base, settings))


@pytest.mark.parametrize("name,version", [("qinq_88a8_8100", 4), ("ppp9_no_ff03_pfc", 6),
                                          ("loop108_af30", 6)])
def test_cli_link_layer_same_records(write, name, version):
    linktype, builder, _ = gen.LINK_VARIANTS[name]
    path = write(f"cli_{name}.pcap", gen.pcap(gen.framed(gen.tls_two_flows(version), builder), linktype))
    other = run_cli("run", "--pcap", path)
    base = run_cli("run", "--pcap", baseline(write, version))
    assert other.returncode == 0, other.stderr
    assert base.returncode == 0, base.stderr
    assert other.stdout == base.stdout
    assert len(other.stdout.splitlines()) >= 2  # both flows classified
    assert summary_line(other.stderr) == summary_line(base.stderr)


# --- file formats ----------------------------------------------------------------------------

def read_records(path):
    with CaptureFile(path) as capture:
        records = list(capture)
        assert capture.stopped is None, capture.stopped
    return records


def assert_records(path, source, linktype=1, tolerance=1e-6):
    records = read_records(path)
    assert len(records) == len(source)
    for (ts, lt, frame, wire_len), (want_ts, want_frame) in zip(records, source):
        assert lt == linktype
        assert frame == want_frame
        assert wire_len == len(want_frame)
        assert ts == pytest.approx(want_ts, abs=tolerance)


@pytest.mark.parametrize("name,make", [
    ("big_endian_micro.pcap", lambda r: gen.pcap(r, 1, endian=">")),
    ("big_endian_nano.pcap", lambda r: gen.pcap(r, 1, endian=">", nano=True)),
    ("little_endian_nano.pcap", lambda r: gen.pcap(r, 1, nano=True)),
    ("big_endian.pcapng", lambda r: gen.pcapng_section(r, 1, endian=">")),
    ("little_endian.pcapng", lambda r: gen.pcapng_section(r, 1)),
])
def test_byte_orders_same_records(write, name, make):
    source = gen.eth_two_flows()
    path = write(name, make(source))
    assert_records(path, source)
    assert_same_flows(Scan(path, ALL), Scan(baseline(write), ALL))


def test_pcapng_two_sections(write):
    # Section 1: little-endian Ethernet. Section 2: big-endian raw IP, its own interface 0.
    source = gen.tls_two_flows()
    half = len(source) // 2
    eth_part = gen.framed(source[:half], gen.eth)
    raw_part = source[half:]
    data = gen.pcapng_section(eth_part, 1) + gen.pcapng_section(raw_part, 101, endian=">")
    path = write("two_sections.pcapng", data)
    records = read_records(path)
    assert [lt for _, lt, _, _ in records] == [1] * half + [101] * (len(source) - half)
    assert [f for _, _, f, _ in records] == [f for _, f in eth_part + raw_part]
    assert_same_flows(Scan(path, ALL), Scan(baseline(write), ALL))


def test_pcapng_new_section_forgets_interfaces(write):
    source = gen.eth_two_flows()
    # The second section has no interface description, so its packet names interface 0
    # of a section that has none.
    data = gen.pcapng_section(source[:4], 1) + gen.pcapng_shb(">") + gen.pcapng_epb(*source[4], ">")
    path = write("section_without_interface.pcapng", data)
    with CaptureFile(path) as capture:
        assert len(list(capture)) == 4
        assert capture.stopped is not None
        assert "interface 0" in capture.stopped


@pytest.mark.parametrize("tsresol,tsoffset", [
    (0x94, None),  # 2^-20 s
    (9, None),  # 10^-9 s
    (3, None),  # milliseconds
    (None, 1_600_000_000),
    (0x94, 1_699_999_000),
    (9, -3600),
])
def test_pcapng_tsresol_and_tsoffset(write, tsresol, tsoffset):
    source = gen.eth_two_flows()
    data = gen.pcapng_section(source, 1, tsresol=tsresol, tsoffset=tsoffset)
    path = write(f"tsresol_{tsresol}_{tsoffset}.pcapng", data)
    # One time stamp unit, plus the rounding of a float near 1.7e9 s.
    tolerance = gen.tick_of(tsresol) + 1e-6
    assert_records(path, source, tolerance=tolerance)
    assert_same_flows(Scan(path, ALL), Scan(baseline(write), ALL))


def test_pcapng_same_decisions_as_pcap(write):
    """The same records as pcap and as pcapng (microsecond ticks) give the same JSON lines,
    to the last digit: both formats turn a time stamp into the same float."""
    import gzip

    with gzip.open(os.path.join(ROOT, "tests", "data", "cases", "long_flow_20k_packets.pcap.gz")) as f:
        data = f.read()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"  # little endian, microseconds
    linktype = struct.unpack_from("<I", data, 20)[0]
    blocks = [gen.pcapng_shb(), gen.pcapng_idb(linktype)]
    pos = 24
    while pos < len(data):
        sec, usec, caplen, wire_len = struct.unpack_from("<IIII", data, pos)
        ticks = sec * 1_000_000 + usec
        body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, caplen, wire_len)
        frame = data[pos + 16:pos + 16 + caplen]
        blocks.append(gen._block("<", 6, body + frame + bytes(-caplen % 4)))
        pos += 16 + caplen
    pcap = write("same_as_pcapng.pcap", data)
    pcapng = write("same_as_pcap.pcapng", b"".join(blocks))
    pcap_times = [ts for ts, _, _, _ in read_records(pcap)]
    assert len(pcap_times) == 20003
    assert [ts for ts, _, _, _ in read_records(pcapng)] == pcap_times
    from_pcap = run_cli("run", "--pcap", pcap, "--max-windows", "5")
    from_pcapng = run_cli("run", "--pcap", pcapng, "--max-windows", "5")
    assert from_pcap.returncode == 0, from_pcap.stderr
    assert from_pcapng.returncode == 0, from_pcapng.stderr
    assert from_pcap.stdout
    assert from_pcapng.stdout == from_pcap.stdout


def test_pcapng_interfaces_with_own_resolution(write):
    # Two interfaces, one per IP version's flows, with different resolutions and offsets.
    v4 = gen.eth_two_flows(4)
    v6 = [(ts + 0.0025, f) for ts, f in gen.eth_two_flows(6)]
    merged = sorted([(ts, f, 0) for ts, f in v4] + [(ts, f, 1) for ts, f in v6], key=lambda r: r[0])
    blocks = [gen.pcapng_shb(), gen.pcapng_idb(1, tsresol=0x94),
              gen.pcapng_idb(1, tsresol=9, tsoffset=1_000_000_000)]
    for ts, frame, iface in merged:
        if iface == 0:
            blocks.append(gen.pcapng_epb(ts, frame, iface=0, tsresol=0x94))
        else:
            blocks.append(gen.pcapng_epb(ts, frame, iface=1, tsresol=9, tsoffset=1_000_000_000))
    path = write("two_interfaces.pcapng", b"".join(blocks))
    records = read_records(path)
    assert [f for _, _, f, _ in records] == [f for _, f, _ in merged]
    for (ts, _, _, _), (want, _, _) in zip(records, merged):
        assert ts == pytest.approx(want, abs=2e-6)
    scan = Scan(path, ALL)
    assert dict(scan.packets) == {**expected_packet_counts(4), **expected_packet_counts(6)}


def test_pcapng_simple_packet_blocks(write):
    source = gen.eth_two_flows()
    blocks = [gen.pcapng_shb(), gen.pcapng_idb(1)] + [gen.pcapng_spb(f) for _, f in source]
    path = write("simple_blocks.pcapng", b"".join(blocks))
    records = read_records(path)
    assert [f for _, _, f, _ in records] == [f for _, f in source]
    assert all(ts == 0.0 for ts, _, _, _ in records)
    assert_same_flows(Scan(path, ALL), Scan(baseline(write), ALL))


@pytest.mark.parametrize("method,suffix", [("bzip2", "bz2"), ("xz", "xz"), ("gzip", "gz")])
def test_compressed_read_transparently(write, method, suffix):
    source = gen.eth_two_flows()
    path = write(f"compressed.pcap.{suffix}", gen.compress(gen.pcap(source, 1), method))
    with CaptureFile(path) as capture:
        assert capture.compression == method
    assert_records(path, source)
    assert_same_flows(Scan(path, ALL), Scan(baseline(write), ALL))


def test_compressed_pcapng_big_endian(write):
    source = gen.eth_two_flows()
    path = write("big_endian.pcapng.xz", gen.compress(gen.pcapng_section(source, 1, ">"), "xz"))
    assert_records(path, source)


@pytest.mark.parametrize("method,suffix", [("gzip", "gz"), ("xz", "xz")])
def test_truncated_stream_keeps_records(write, method, suffix):
    path = write(f"truncated.pcap.{suffix}", gen.truncated_compressed(method))
    total = len(gen.eth_two_flows())
    scan = Scan(path, ALL)
    kept_records = sum(scan.packets.values())
    assert 0 < kept_records < total
    assert scan.stopped is not None
    assert path in scan.stopped
    assert f"kept {kept_records} record{'' if kept_records == 1 else 's'}" in scan.stopped

    r = run_cli("run", "--pcap", path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert summary_line(r.stderr)["records"] == str(kept_records)
    assert f"kept {kept_records} record{'' if kept_records == 1 else 's'}" in r.stderr
    strict = run_cli("run", "--pcap", path, "--strict")
    assert strict.returncode == 3


def test_truncated_gzip_names_byte_offset(write):
    # The README promises the record number and the byte offset where reading stopped.
    path = write("truncated_offset.pcap.gz", gen.truncated_compressed("gzip"))
    with CaptureFile(path) as capture:
        kept_records = len(list(capture))
        stopped = capture.stopped
    assert f"kept {kept_records} record{'' if kept_records == 1 else 's'}" in stopped
    match = re.search(r"byte offset (-?\d+)", stopped)
    assert match, stopped
    assert int(match.group(1)) >= 0, stopped


def test_truncated_bzip2_no_traceback(write):
    # bzip2 decompresses whole blocks of up to 900 kB, so a file cut inside its only
    # block yields no record at all. The reader must still end cleanly.
    path = write("truncated.pcap.bz2", gen.truncated_compressed("bzip2"))
    result = assert_open_or_stop(path)
    if result is not None:
        records, stopped = result
        assert stopped is not None
    r = run_cli("run", "--pcap", path)
    assert "Traceback" not in r.stderr
    assert r.returncode in (0, 2), r.stderr
    assert path in r.stderr


def broken_deflate(data, start, stop):
    """Yield (position, copy of gzip `data` with 4 bytes flipped there) for each position
    in range(start, stop) whose flip makes zlib itself reject the deflate stream."""
    for where in range(start, stop):
        broken = gen.flip_bytes(data, where)
        try:
            # gzip.compress with mtime=0 writes a 10-byte header, then raw deflate data.
            zlib.decompressobj(-15).decompress(broken[10:])
        except zlib.error:
            yield where, broken


def assert_open_or_stop(path):
    """Check the reader's contract: CaptureFileError at open, else an iteration that ends
    without raising (with `stopped` set when it ends early)."""
    try:
        capture = CaptureFile(path)
    except CaptureFileError as e:
        assert path in str(e)
        return None
    with capture:
        records = list(capture)
    return records, capture.stopped


def test_corrupt_gzip_early_only_capture_file_error(write):
    data = gen.compress(gen.pcap(gen.eth_two_flows(), 1), "gzip")
    inputs = list(broken_deflate(data, 10, 2000))[:10]
    assert inputs, "no flipped position broke the deflate stream"
    for where, broken in inputs:
        assert_open_or_stop(write(f"corrupt_early_{where}.pcap.gz", broken))


def test_corrupt_gzip_late_stops_reading(write):
    # The corruption sits past the first read buffer, so it fails during iteration.
    source = gen.repeated_rounds(40)
    data = gen.compress(gen.pcap(source, 1), "gzip")
    inputs = list(broken_deflate(data, 9000, len(data) - 20))[:10]
    assert inputs, "no flipped position broke the deflate stream"
    for where, broken in inputs:
        result = assert_open_or_stop(write(f"corrupt_late_{where}.pcap.gz", broken))
        assert result is not None
        records, stopped = result
        assert 0 < len(records) < len(source)
        assert stopped is not None


def test_cli_corrupt_gzip_no_traceback(write):
    data = gen.compress(gen.pcap(gen.eth_two_flows(), 1), "gzip")
    where, broken = next(broken_deflate(data, 10, 2000))
    path = write(f"cli_corrupt_{where}.pcap.gz", broken)
    r = run_cli("run", "--pcap", path)
    assert "Traceback" not in r.stderr
    assert r.returncode == 2, r.stderr
    assert path in r.stderr


def test_huge_caplen_stops_with_message(write):
    path = write("huge_record.pcap", gen.pcap_with_huge_record(keep=5, caplen=300_000))
    with CaptureFile(path) as capture:
        assert len(list(capture)) == 5
        assert "record 6" in capture.stopped
        assert "300000" in capture.stopped
    r = run_cli("run", "--pcap", path)
    assert r.returncode == 0, r.stderr
    assert summary_line(r.stderr)["records"] == "5"
    assert "record 6" in r.stderr


def test_record_at_size_limit_read(write):
    # 262,144 bytes is the largest record the reader accepts.
    path = write("limit_record.pcap", gen.pcap_with_huge_record(keep=5, caplen=262_144))
    with CaptureFile(path) as capture:
        lengths = [len(f) for _, _, f, _ in capture]
        assert capture.stopped is None
    assert len(lengths) == len(gen.eth_two_flows()) + 1
    assert lengths[5] == 262_144


def test_pcapng_huge_enhanced_packet_stops(write):
    source = gen.eth_two_flows()
    data = gen.pcapng_section(source[:3], 1) + gen.pcapng_epb(gen.T0 + 1, bytes(300_000))
    path = write("huge_epb.pcapng", data)
    with CaptureFile(path) as capture:
        assert len(list(capture)) == 3
        assert capture.stopped is not None


def test_pcapng_huge_simple_packet_stops(write):
    # The README: "A record longer than 262,144 bytes stops the reading."
    source = gen.eth_two_flows()
    blocks = [gen.pcapng_shb(), gen.pcapng_idb(1)] + [gen.pcapng_spb(f) for _, f in source[:3]]
    blocks.append(gen.pcapng_spb(bytes(300_000)))
    path = write("huge_spb.pcapng", b"".join(blocks))
    with CaptureFile(path) as capture:
        lengths = [len(f) for _, _, f, _ in capture]
        assert max(lengths) <= 262_144
        assert len(lengths) == 3
        assert capture.stopped is not None


def test_pcapng_block_length_not_multiple_of_4(write):
    path = write("bad_block_length.pcapng", gen.pcapng_bad_block_length(keep=5, bad_length=30))
    with CaptureFile(path) as capture:
        assert len(list(capture)) == 5
        assert "length 30" in capture.stopped
        assert "byte offset" in capture.stopped


def test_pcapng_packet_names_missing_interface(write):
    path = write("missing_interface.pcapng", gen.pcapng_missing_interface(keep=5, iface=1))
    with CaptureFile(path) as capture:
        assert len(list(capture)) == 5
        assert "interface 1" in capture.stopped
    r = run_cli("run", "--pcap", path)
    assert r.returncode == 0, r.stderr
    assert "interface 1" in r.stderr
    assert summary_line(r.stderr)["records"] == "5"


# --- IP --------------------------------------------------------------------------------------

def raw_scan(write, name, records, settings=ALL):
    return Scan(write(name, gen.pcap(records, 101)), settings)


def test_ipv6_fragments_reassembled(write):
    scan = raw_scan(write, "ipv6_frag.pcap", gen.fragmented_udp_flow(6))
    whole = raw_scan(write, "ipv6_whole.pcap", gen.fragmented_udp_flow(6, fragment=False))
    assert dict(scan.packets) == {UDP6: 4}
    assert not scan.skipped
    assert not scan.decoder.reassembler.pending
    assert not scan.decoder.reassembler.dropped
    # The rebuilt datagram drops the fragment header, so its vectors are the whole one's.
    assert scan.windows == whole.windows


def test_ipv4_fragments_reassembled(write):
    scan = raw_scan(write, "ipv4_frag.pcap", gen.fragmented_udp_flow(4))
    whole = raw_scan(write, "ipv4_whole.pcap", gen.fragmented_udp_flow(4, fragment=False))
    assert dict(scan.packets) == {UDP4: 4}
    assert not scan.decoder.reassembler.pending
    assert scan.windows == whole.windows


def test_ipv4_fragments_options_in_first_only(write):
    # RFC 791 copies options whose copied flag is clear (record route, 7) into the first
    # fragment only, so the fragments' header lengths differ (28 and 20 bytes).
    options = bytes([7, 7, 4]) + bytes(5)
    frag = raw_scan(write, "ipv4_frag_opts.pcap", gen.fragmented_udp_flow(4, first_options=options))
    whole = raw_scan(write, "ipv4_whole_opts.pcap",
                     gen.fragmented_udp_flow(4, fragment=False, first_options=options))
    assert dict(whole.packets) == {UDP4: 4}
    assert dict(frag.packets) == {UDP4: 4}
    assert frag.windows == whole.windows


def test_ipv6_fragments_with_dest_options_after(write):
    # A destination options header after the fragment header travels in the first
    # fragment's data; the transport header comes after it.
    frag = raw_scan(write, "ipv6_frag_dstopts.pcap", gen.fragmented_udp_flow(6, dest_options=True))
    whole = raw_scan(write, "ipv6_whole_dstopts.pcap",
                     gen.fragmented_udp_flow(6, fragment=False, dest_options=True))
    assert dict(whole.packets) == {UDP6: 4}
    assert dict(frag.packets) == {UDP6: 4}
    assert not frag.skipped


def test_ipv4_overlapping_fragments_dropped(write):
    scan = raw_scan(write, "ipv4_overlap.pcap", gen.overlapping_ipv4_fragments())
    assert dict(scan.packets) == {UDP4: 2}
    assert scan.decoder.reassembler.dropped == {"fragment overlap or oversize": 1}
    assert not scan.decoder.reassembler.pending


def test_cli_overlap_counted(write):
    path = write("cli_ipv4_overlap.pcap", gen.pcap(gen.overlapping_ipv4_fragments(), 101))
    r = run_cli("run", "--pcap", path)
    assert r.returncode == 0, r.stderr
    summary = summary_line(r.stderr)
    assert summary["fragments_dropped"] == "1"
    assert summary["flows"] == "1"
    assert "fragment overlap" in r.stderr


def test_fragment_buffer_bound(write):
    # 300 incomplete datagrams; the buffer keeps 256, so the 44 oldest are dropped. Then
    # datagrams 44 and 299 complete, and the orphan last fragment of datagram 0 waits.
    scan = raw_scan(write, "fragment_flood.pcap", gen.fragment_flood(300, (44, 299), 0))
    reassembler = scan.decoder.reassembler
    assert reassembler.dropped == {"fragment buffer full": 44}
    assert dict(scan.packets) == {UDP4: 2}
    assert len(reassembler.pending) == 256 - 2 + 1
    assert len(reassembler.pending) <= reassembler.max_datagrams


def test_fragment_buffer_dropped_never_completes(write):
    # Datagram 43 was dropped, so its last fragment completes nothing.
    scan = raw_scan(write, "fragment_flood_43.pcap", gen.fragment_flood(300, (43,), 1))
    assert UDP4 not in scan.packets


def test_cli_fragment_buffer_bound(write):
    path = write("cli_fragment_flood.pcap", gen.pcap(gen.fragment_flood(), 101))
    r = run_cli("run", "--pcap", path)
    assert r.returncode == 0, r.stderr
    summary = summary_line(r.stderr)
    assert summary["fragments_dropped"] == "44"
    assert summary["packets"] == "2"


def test_fragment_kept_across_epoch_stamp(write):
    # A fragment of another datagram stamped 1970 between the two halves of a datagram: a
    # time stamp that jumps back must not expire what waits in the buffer.
    (src, dst, body), = gen.udp_datagrams(4, [1500])
    first, last = gen.ipv4_fragments(src, dst, 17, body, 0x6001, 1232)
    stray, _ = gen.ipv4_fragments(src, dst, 17, body, 0x6002, 1232)
    records = [(gen.T0, first), (1.0, stray), (gen.T0 + 0.01, last)]
    scan = raw_scan(write, "fragment_epoch.pcap", records)
    assert dict(scan.packets) == {UDP4: 1}
    assert "fragment timeout" not in scan.decoder.reassembler.dropped


@pytest.mark.parametrize("atomic", [True, False], ids=["ah_atomic_fragment", "ah_only"])
def test_ipv6_ah_and_atomic_fragment(write, atomic):
    scan = raw_scan(write, f"ipv6_ah_{atomic}.pcap", gen.ipv6_ah_atomic_flow(atomic))
    plain = raw_scan(write, "ipv6_plain.pcap", gen.ipv6_first_flow())
    assert dict(scan.packets) == dict(plain.packets) == {FLOW6_A: expected_packet_counts(6)[FLOW6_A]}
    assert not scan.skipped
    assert not scan.decoder.reassembler.pending
    assert len(scan.windows[FLOW6_A]) == len(plain.windows[FLOW6_A])
    l4 = 40 + 24 + (8 if atomic else 0)
    for w in scan.windows[FLOW6_A]:
        for i in range(ALL.window_packets):
            vec = w[i * ALL.vector_bytes:(i + 1) * ALL.vector_bytes]
            assert vec[8:40] == bytes(32)  # addresses
            ports = (vec[l4:l4 + 2], vec[l4 + 2:l4 + 4])
            # One port is the masked client port, the other the server's 443.
            assert sorted(ports) == [b"\x00\x00", b"\x01\xbb"]


@pytest.mark.parametrize("ihl", range(6, 16))
def test_ipv4_options_masked(write, ihl):
    first = raw_scan(write, f"opts_{ihl}_a.pcap", gen.ipv4_options_flow(ihl, seed=1))
    second = raw_scan(write, f"opts_{ihl}_b.pcap", gen.ipv4_options_flow(ihl, seed=2))
    plain = raw_scan(write, "opts_5.pcap", gen.ipv4_options_flow(5, seed=1))
    assert dict(first.packets) == {FLOW4_A: expected_packet_counts(4)[FLOW4_A]}
    assert dict(plain.packets) == dict(first.packets)
    assert not first.skipped
    # Option content differs between the two captures, but the vectors must not.
    assert first.windows == second.windows
    header = ihl * 4
    size = ALL.vector_bytes
    shift = header - 20
    for w_opt, w_plain in zip(first.windows[FLOW4_A], plain.windows[FLOW4_A]):
        for i in range(ALL.window_packets):
            vec = w_opt[i * size:(i + 1) * size]
            base = w_plain[i * size:(i + 1) * size]
            assert vec[0] == 0x40 | ihl
            assert vec[20:header] == bytes(shift)  # options zeroed
            assert vec[4:20] == base[4:20]  # masked header fields, addresses
            assert vec[header:] == base[20:size - shift]  # transport moved by the options


def test_ipv4_options_fill_short_vector(write):
    # In a 48-byte vector, IHL 15 (a 60-byte header) leaves no transport byte. The packets
    # must still count and the vectors keep their size.
    settings = SHORT
    scan = raw_scan(write, "opts_15_default.pcap", gen.ipv4_options_flow(15, seed=3), settings)
    assert scan.packets[FLOW4_A] == expected_packet_counts(4)[FLOW4_A]
    for w in scan.windows[FLOW4_A]:
        assert len(w) == settings.window_packets * settings.vector_bytes
        for i in range(settings.window_packets):
            vec = w[i * settings.vector_bytes:(i + 1) * settings.vector_bytes]
            assert vec[20:] == bytes(settings.vector_bytes - 20)


# --- flows -----------------------------------------------------------------------------------

class EndScan(Scan):
    """A `Scan` that also keeps each ended flow's name, reason and packet count."""

    def _on_end(self, flow, reason):
        super()._on_end(flow, reason)
        self.ended_packets = getattr(self, "ended_packets", [])
        self.ended_packets.append((self.ended[-1][0], reason, flow.packets))


def test_mid_connection_higher_port_is_client(write):
    records = gen.mid_connection(skip=7)
    first_ip = records[0][1]
    assert first_ip[20:22] == b"\x01\xbb"  # the capture starts with the server's packet
    path = write("mid_connection.pcap", gen.pcap(gen.framed(records, gen.eth), 1))
    full = write("full_connection.pcap", gen.pcap(gen.framed(gen.full_tls_flow(), gen.eth), 1))
    for settings in SETTINGS:
        scan = Scan(path, settings)
        assert dict(scan.packets) == {FLOW4_A: len(records)}
        if settings.context:
            continue  # the first packet's gap differs from the whole connection's
        # Windows slide over consecutive packets, so the cut capture's windows are the
        # last ones of the whole connection's.
        whole = Scan(full, settings).windows[FLOW4_A]
        cut = scan.windows[FLOW4_A]
        assert cut
        assert cut == whole[len(whole) - len(cut):]


def test_cli_mid_connection_record(write):
    records = gen.mid_connection(skip=7)
    path = write("cli_mid_connection.pcap", gen.pcap(gen.framed(records, gen.eth), 1))
    r = run_cli("run", "--pcap", path)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert records
    for record in records:  # the first decision and any relabelling
        assert (record["src_ip"], record["src_port"]) == ("192.0.2.10", 51000)
        assert (record["dst_ip"], record["dst_port"]) == ("198.51.100.20", 443)


@pytest.mark.parametrize("close", ["rst", "fin"])
def test_reuse_after_close_new_flow(write, close):
    records, first_count = gen.reuse_after(close)
    path = write(f"reuse_{close}.pcap", gen.pcap(gen.framed(records, gen.eth), 1))
    scan = EndScan(path, PAYLOAD)
    name = "tcp 192.0.2.10:51500 <-> 198.51.100.20:443"
    assert scan.table.flows_created == 2
    assert scan.ended_packets == [(name, "reused", first_count),
                                  (name, "flushed", len(records) - first_count)]


def test_syn_on_open_flow_keeps_flow(write):
    records = gen.syn_retransmit_open_flow()
    path = write("syn_on_open_flow.pcap", gen.pcap(gen.framed(records, gen.eth), 1))
    scan = EndScan(path, PAYLOAD)
    assert scan.table.flows_created == 1
    assert scan.ended_packets == [("tcp 192.0.2.10:51600 <-> 198.51.100.20:443", "flushed", len(records))]


def test_epoch_stamps_expire_nothing(write):
    path = write("epoch_middle.pcap", gen.pcap(gen.epoch_stamped_middle(10, 6), 1))
    for settings in SETTINGS:
        scan = Scan(path, settings, idle_timeout_s=120.0)
        base = Scan(baseline(write), settings)
        assert dict(scan.packets) == dict(base.packets)
        if not settings.context:
            assert scan.windows == base.windows
        assert scan.table.expirations == 0
        assert {reason for _, reason in scan.ended} == {"flushed"}
        assert scan.table.time_jumps_back >= 1
        assert scan.table.time_jumps_forward == 0


def test_ten_year_jump_back(write):
    path = write("ten_years_back.pcap", gen.pcap(gen.ten_year_jump_back(8), 1))
    for settings in SETTINGS:
        scan = Scan(path, settings, idle_timeout_s=120.0)
        base = Scan(baseline(write), settings)
        assert dict(scan.packets) == dict(base.packets)
        if not settings.context:
            assert scan.windows == base.windows
        assert scan.table.expirations == 0
        assert {reason for _, reason in scan.ended} == {"flushed"}
        # Every packet behind the clock counts as a jump back.
        assert scan.table.time_jumps_back == len(gen.eth_two_flows()) - 8


def test_cli_ten_year_jump_back(write):
    path = write("cli_ten_years_back.pcap", gen.pcap(gen.ten_year_jump_back(8), 1))
    r = run_cli("run", "--pcap", path)
    base = run_cli("run", "--pcap", baseline(write))
    assert r.returncode == 0, r.stderr
    summary = summary_line(r.stderr)
    assert summary["expired"] == "0"
    assert summary["flows"] == "2"
    # A model with flow context reads the time between packets, so only the flows, their
    # packet counts and window counts must match, not the label and confidence.
    fields = ("proto", "src_ip", "src_port", "dst_ip", "dst_port", "packets", "windows")

    def flows(stdout):
        records = [json.loads(line) for line in stdout.splitlines()]
        return sorted(tuple(record[k] for k in fields) for record in records if record["windows"] == 1)

    assert flows(r.stdout) == flows(base.stdout)
    assert len(flows(r.stdout)) == 2


def test_generator_deterministic():
    assert gen.pcap(gen.eth_two_flows(6), 1) == gen.pcap(gen.eth_two_flows(6), 1)
    assert gen.fragment_flood() == gen.fragment_flood()
    assert gen.truncated_compressed("gzip") == gen.truncated_compressed("gzip")


def test_one_kept_record_is_singular(write):
    # One whole record, then the header of a second whose data is missing.
    whole = gen.pcap(gen.eth_two_flows()[:1], 1)
    cut = struct.pack("<IIII", 2, 0, 100, 100) + bytes(10)
    path = write("one_record_then_cut.pcap", whole + cut)
    with CaptureFile(path) as capture:
        assert len(list(capture)) == 1
        stopped = capture.stopped
    assert "kept 1 record" in stopped, stopped
    assert "kept 1 records" not in stopped, stopped
