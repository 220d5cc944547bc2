"""The compiled fast path (edge_etc/_fastpath.c) against the pure-Python code.

Both paths must give the same packets, vectors and output records byte for byte. The
whole-run checks run the same driver (this file's `main`) twice in subprocesses, once with
EDGE_ETC_PURE_PYTHON=1, over the hard inputs in tests/data/cases, the captures that
tests/data/own/make_own.py builds, and the real corpus when present.
"""

import glob
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import assert_same_driver_lines
from hypothesis import given, settings as hypothesis_settings, strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "data", "own"))

from edge_etc import decode, fastpath  # noqa: E402
from edge_etc.capfile import CaptureFile  # noqa: E402
from edge_etc.errors import CaptureFileError, PacketError  # noqa: E402
from edge_etc.preprocess import Preprocessing, vectorize  # noqa: E402

CASES = os.path.join(ROOT, "tests", "data", "cases")
CORPUS = os.environ.get("EDGE_ETC_CORPUS") or os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus"))
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".gz", ".bz2", ".xz")
FIELDS = ("ts", "version", "proto", "src", "dst", "sport", "dport", "ip", "l4_offset",
          "l4_len", "payload_len", "tcp_flags", "truncated")
# Settings that reach every branch of the vectorizer: context and port buckets, short
# vectors that cut headers, every packet, and the ablation switches.
VECTOR_SETTINGS = [
    Preprocessing(),
    Preprocessing(vector_bytes=48, context=False, port_buckets=0, window_rule="all"),
    Preprocessing(vector_bytes=60, context=True, port_buckets=0, window_rule="all"),
    Preprocessing(vector_bytes=128, server_port=False, mask_addresses=False,
                  mask_capture_fields=False, context=True, port_buckets=0),
    Preprocessing(vector_bytes=1500, context=True, port_buckets=16),
]

needs_extension = pytest.mark.skipif(
    fastpath.native is None and fastpath.DISABLE_VARIABLE in os.environ,
    reason=f"{fastpath.DISABLE_VARIABLE} is set")


def capture_files(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if os.path.isfile(p) and p.endswith(CAPTURE_SUFFIXES))


def records_of(paths):
    for path in paths:
        try:
            with CaptureFile(path) as capture:
                yield from capture
        except CaptureFileError:
            continue


def python_decode(ts, linktype, frame, wire_len):
    """Decode with the compiled decoder switched off."""
    native_decode = decode._native_decode
    decode._native_decode = None
    try:
        return decode.Decoder().decode(ts, linktype, frame, wire_len)
    finally:
        decode._native_decode = native_decode


def as_python_packet(pkt):
    return decode.PythonPacket(*(getattr(pkt, name) for name in FIELDS))


def assert_same_decoding(record):
    """Check that the compiled decoder, where it takes `record`, agrees with Python's."""
    fast = fastpath.native.decode(*record)
    if fast is None:
        return False
    try:
        slow = python_decode(*record)
    except PacketError as e:
        pytest.fail(f"compiled decoder accepted a record Python rejects ({e}): {record!r}")
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name
        assert type(getattr(fast, name)) is type(getattr(slow, name)), name
    return True


# --- the extension is there --------------------------------------------------------------

@needs_extension
def test_extension_built_and_selected():
    assert fastpath.native is not None, (
        f"edge_etc._fastpath did not import ({fastpath.reason}); rebuild it with "
        "`pip install -e .` (needs gcc and the Python headers)")
    assert decode.Packet is fastpath.native.Packet


def cpu_has_fused_multiply_add():
    """Return True when this CPU runs fused multiply-add instructions (x86-64 with the
    `fma` flag, or aarch64, where they are part of the base instruction set)."""
    import platform

    machine = platform.machine()
    if machine in ("aarch64", "arm64"):
        return True
    if machine != "x86_64" or not os.path.isfile("/proc/cpuinfo"):
        return False
    with open("/proc/cpuinfo") as f:
        return " fma " in f.read().replace("\n", " ")


# Compares the record time stamps of PcapSlicer with Python's `sec + frac * tick`, the
# arithmetic of CaptureFile, for small and current seconds.
_TIME_STAMP_CHECK = """
import random, struct, sys
from edge_etc import fastpath
assert fastpath.native.__file__.startswith(sys.argv[1]), fastpath.native.__file__
rng = random.Random(5)
for tick, scale in ((1e-6, 10 ** 6), (1e-9, 10 ** 9)):
    stamps = [(rng.randrange(4) if k % 2 else rng.randrange(1 << 31), rng.randrange(scale))
              for k in range(20000)]
    data = b"".join(struct.pack("<IIII", sec, frac, 0, 0) for sec, frac in stamps)
    records = fastpath.native.PcapSlicer(data, 0, True, tick, 1, 262144)
    wrong = [(sec, frac) for (sec, frac), record in zip(stamps, records)
             if record[0] != sec + frac * tick]
    assert not wrong, (tick, len(wrong), wrong[:3])
"""


def build_extension(tmp_path, flags):
    """Compile edge_etc._fastpath with pyproject.toml's arguments and `flags` into a copy of
    the package in `tmp_path`. Returns the environment that imports that copy."""
    import shutil
    import sysconfig

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extension = tomllib.load(f)["tool"]["setuptools"]["ext-modules"][0]
    package = tmp_path / "edge_etc"
    shutil.copytree(os.path.join(ROOT, "edge_etc"), package,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    target = package / ("_fastpath" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run([c_compiler(), "-shared", "-fPIC", *flags,
                            *extension["extra-compile-args"],
                            "-I" + sysconfig.get_paths()["include"],
                            *[os.path.join(ROOT, source) for source in extension["sources"]],
                            "-o", str(target), "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop(fastpath.DISABLE_VARIABLE, None)
    return env


def c_compiler():
    import shutil

    return shutil.which("gcc") or shutil.which("cc")


def run_check(script, tmp_path, env):
    check = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                           cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]


@needs_extension
def test_time_stamps_exact_where_fused_multiply_add(tmp_path):
    """Built for a CPU with fused multiply-add, the extension still computes time stamps
    as Python does: compilers may fuse `sec + frac * tick` into one instruction with one
    rounding unless the build turns that off (-ffp-contract=off in pyproject.toml)."""
    if c_compiler() is None or not cpu_has_fused_multiply_add():
        pytest.skip("needs a C compiler and a CPU with fused multiply-add")
    fma = ["-mfma"] if os.uname().machine == "x86_64" else []
    run_check(_TIME_STAMP_CHECK, tmp_path, build_extension(tmp_path, fma))


# Checks that an extension whose double arithmetic runs on the x87 (32-bit x86 without
# SSE2) rounds each operation to double where Python's float arithmetic does. It checks the
# time stamps of the slicer and of Engine.feed, and the gap byte of the vectorizer at the
# gaps where the byte changes. The expected values emulate an x87 operation stored as a
# double: the exact result rounded to the register's 64-bit significand, then to 53 bits.
_X87_CHECK = r"""
import math, random, struct, sys
from fractions import Fraction
from edge_etc import engine, fastpath
from edge_etc.preprocess import Preprocessing
assert fastpath.native.__file__.startswith(sys.argv[1]), fastpath.native.__file__


def x87(value):
    for bits in (64, 53):
        exponent = value.numerator.bit_length() - value.denominator.bit_length()
        if Fraction(2) ** exponent > value:
            exponent -= 1
        scale = Fraction(2) ** (bits - 1 - exponent)
        value = Fraction(round(value * scale)) / scale
    return float(value)


rng = random.Random(5)
ip = bytes.fromhex("4500002800000000400600000a0000010a000002")
tcp = bytes.fromhex("9c4001bb00000000000000005010000000000000")
frame = bytes(12) + b"\x08\x00" + ip + tcp  # no payload, so no windows
for tick, scale in ((1e-6, 10 ** 6), (1e-9, 10 ** 9)):
    stamps = sorted((rng.randrange(4) if k % 2 else rng.randrange(1 << 31), rng.randrange(scale))
                    for k in range(4000))
    expected = [x87(sec + Fraction(x87(frac * Fraction(tick)))) for sec, frac in stamps]
    data = b"".join(struct.pack("<IIII", sec, frac, len(frame), len(frame)) + frame
                    for sec, frac in stamps)
    records = list(fastpath.native.PcapSlicer(data, 0, True, tick, 1, 262144))
    wrong = [stamp for stamp, want, record in zip(stamps, expected, records) if record[0] != want]
    assert not wrong, ("PcapSlicer", tick, len(wrong), wrong[:3])
    table = engine.new_engine(Preprocessing(), 10, 60.0, 1, 1, decisions=False)
    pos, wrong = 0, []
    for stamp, want in zip(stamps, expected):
        pos, _, _, _ = table.feed(data, pos, True, tick, 1, 262144, 1)
        if table.now != want:  # the stamps ascend, so the clock is the last one
            wrong.append(stamp)
    assert not wrong, ("Engine.feed", tick, len(wrong), wrong[:3])

settings = Preprocessing()
packet = fastpath.native.decode(1.0, 1, frame, len(frame))
wrong = []
for byte in range(160):
    # The gap at which round(20 * log10(1 + microseconds)) changes from `byte` to byte + 1,
    # and the 60 doubles on either side of it.
    gap_s = (10 ** ((byte + 0.5) / 20) - 1) / 1e6
    for _ in range(60):
        gap_s = math.nextafter(gap_s, 0.0)
    for _ in range(120):
        gap_s = math.nextafter(gap_s, 1.0)
        microseconds = x87(Fraction(gap_s) * Fraction(1e6))
        log = math.log10(x87(1 + Fraction(microseconds)))
        want = min(255, round(x87(20 * Fraction(log))))
        got = fastpath.native.vectorize(packet, True, settings, gap_s, False)[settings.header_bytes + 1]
        if got != want:
            wrong.append((gap_s, got, want))
assert not wrong, ("gap byte", len(wrong), wrong[:3])
"""


def evaluates_double_with_x87(flags):
    """Return True when the C compiler with `flags` evaluates double expressions with the
    x87's precision (FLT_EVAL_METHOD 2)."""
    probe = subprocess.run([c_compiler(), *flags, "-E", "-P", "-x", "c", "-"],
                           input="#include <float.h>\nFLT_EVAL_METHOD\n", capture_output=True,
                           text=True)
    return probe.returncode == 0 and probe.stdout.split()[-1:] == ["2"]


@needs_extension
def test_time_stamps_and_gaps_rounded_on_x87(tmp_path):
    """Where double arithmetic runs on the x87 (32-bit x86), the extension rounds each
    operation to double as Python does. On x86-64 the check builds it with -mfpmath=387."""
    machine = os.uname().machine
    flags = ["-mfpmath=387"] if machine == "x86_64" else []
    if machine not in ("x86_64", "i386", "i486", "i586", "i686"):
        pytest.skip(f"no x87 on {machine}")
    if c_compiler() is None or not evaluates_double_with_x87(flags):
        pytest.skip("needs a C compiler that evaluates doubles on the x87")
    run_check(_X87_CHECK, tmp_path, build_extension(tmp_path, flags))


# --- packet by packet ---------------------------------------------------------------------

@needs_extension
def test_decode_matches_python_on_cases(tmp_path):
    import make_own
    make_own.write_all(str(tmp_path))
    paths = capture_files(CASES) + capture_files(str(tmp_path))
    taken = 0
    total = 0
    for record in records_of(paths):
        total += 1
        taken += assert_same_decoding(record)
    assert total > 1000
    # Most records are plain Ethernet TCP or UDP; if the fast path took none, it is broken.
    assert taken > total // 2


@needs_extension
def test_vectorize_matches_python():
    decoder = decode.Decoder()
    packets = []
    for record in records_of(capture_files(CASES)):
        try:
            pkt = decoder.decode(*record)
        except PacketError:
            continue
        if pkt is not None:
            packets.append(pkt)
    assert len(packets) > 1000
    rng = random.Random(7)
    for settings in VECTOR_SETTINGS:
        for pkt in packets:
            server_is_dst = rng.random() < 0.5
            gap_s = rng.choice((0.0, -1.0, 1e-7, 0.0015, 2.5, 1e9))
            port_block = rng.random() < 0.8
            fast = vectorize(pkt, server_is_dst, settings, gap_s, port_block)
            slow = vectorize(as_python_packet(pkt), server_is_dst, settings, gap_s, port_block)
            assert fast == slow, (settings, pkt.ip[:60].hex())


def _plain_frames():
    frames = []
    for ts, linktype, frame, wire_len in records_of([os.path.join(CASES, n) for n in (
            "eth_tls_2flows.pcap", "vlan_8021q_tls_2flows.pcap", "sll2_tls_2flows.pcap",
            "udp443_quic_like.pcap", "ipv6_exthdrs_tls_2flows.pcap", "snaplen40_l4_cut.pcap")]):
        frames.append((ts, linktype, frame[:200], wire_len))
    return frames


PLAIN_FRAMES = _plain_frames()


@needs_extension
@hypothesis_settings(max_examples=3000, deadline=None)
@given(index=st.integers(min_value=0), edits=st.lists(
    st.tuples(st.integers(min_value=0, max_value=199), st.integers(min_value=0, max_value=255)),
    max_size=4), cut=st.integers(min_value=0, max_value=200),
    wire=st.sampled_from(["record", "none", "short"]))
def test_decode_matches_python_on_mutations(index, edits, cut, wire):
    ts, linktype, frame, wire_len = PLAIN_FRAMES[index % len(PLAIN_FRAMES)]
    data = bytearray(frame)
    for at, value in edits:
        if at < len(data):
            data[at] = value
    data = bytes(data[:cut])
    wire_len = {"record": wire_len, "none": None, "short": len(data)}[wire]
    record = (ts, linktype, data, wire_len)
    if fastpath.native.decode(*record) is not None:
        assert_same_decoding(record)


# --- hostile values through the Python interface --------------------------------------------

# Each case runs in a child process, because before the fix they crashed the interpreter
# (a NULL field read, and writes at an offset that wrapped around). `vectorize` must give
# Python's bytes or raise, and `decode` must agree with Python.
HOSTILE_SCRIPT = r"""
import sys
from edge_etc import decode, fastpath
from edge_etc.preprocess import Preprocessing, vectorize

FIELDS = %r
case = sys.argv[1]
settings = Preprocessing(vector_bytes=152, context=True, port_buckets=16)
fields = dict(ts=1.0, version=4, proto=6, src=bytes(4), dst=bytes(4), sport=1, dport=2,
              ip=bytes(range(60)), l4_offset=20, l4_len=20, payload_len=0, tcp_flags=0,
              truncated=False)
if case == "deleted_field":
    # Python's vectorizer reads some fields only under some settings; the compiled one
    # reads them all, so it may raise AttributeError where Python does not. Otherwise the
    # bytes must be Python's.
    for name in FIELDS:
        fast = fastpath.native.Packet(*fields.values())
        slow = decode.PythonPacket(*fields.values())
        delattr(fast, name)
        delattr(slow, name)
        try:
            got = fastpath.native.vectorize(fast, True, settings, 0.0, True)
        except AttributeError:
            continue
        assert got == vectorize(slow, True, settings, 0.0, True), name
elif case.startswith("far_"):
    name = {"far_l4": "l4_offset", "far_l4_len": "l4_len"}[case]
    for proto in (6, 17):
        # Values from 2**31 on exceed a 32-bit build's long, from 2**63 on a 64-bit build's.
        for value in (2**31 - 1, 2**62, sys.maxsize - 1, sys.maxsize, 2**63, 2**100):
            fields.update(proto=proto, **{name: value})
            fast = fastpath.native.Packet(*fields.values())
            slow = decode.PythonPacket(*fields.values())
            for to_server in (True, False):
                got = vectorize(fast, to_server, settings, 0.5, True)
                assert got == vectorize(slow, to_server, settings, 0.5, True), (name, value)
elif case == "odd_gaps":
    # Python's round() raises on a NaN or infinite gap, and so must the compiled path.
    fast = fastpath.native.Packet(*fields.values())
    slow = decode.PythonPacket(*fields.values())
    for gap_s in (float("nan"), float("inf"), 1e305, float("-inf"), 1e300):
        try:
            expected = vectorize(slow, True, settings, gap_s, True)
        except (ValueError, OverflowError) as e:
            expected = type(e)
        try:
            got = vectorize(fast, True, settings, gap_s, True)
        except (ValueError, OverflowError) as e:
            got = type(e)
        assert got == expected, (gap_s, got, expected)
elif case == "negative_wire_len":
    frame = bytes(12) + b"\x08\x00" + bytes.fromhex("4500002800000000400600000a0000010a000002")
    frame += bytes.fromhex("0001000200000000000000005002000000000000")
    for wire_len in (-2**63, -1, 13):
        # Python rejects the frame ("IPv4 total length > frame length"), so the compiled
        # decoder must leave it to Python.
        assert fastpath.native.decode(1.0, 1, frame, wire_len) is None, wire_len
print("ok")
""" % (FIELDS,)


@needs_extension
@pytest.mark.parametrize("case", ["deleted_field", "far_l4", "far_l4_len", "odd_gaps",
                                  "negative_wire_len"])
def test_hostile_values_neither_crash_nor_differ(case, tmp_path):
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE_SCRIPT)
    env = dict(os.environ)
    env.pop(fastpath.DISABLE_VARIABLE, None)
    result = subprocess.run([sys.executable, str(script), case], env=env, capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "ok"


# --- whole runs ---------------------------------------------------------------------------

def run_driver(paths, pure, out_path):
    env = dict(os.environ)
    env[fastpath.DISABLE_VARIABLE] = "1" if pure else "0"
    with open(out_path, "w") as listing:
        listing.write("\n".join(paths))
    result = subprocess.run([sys.executable, os.path.abspath(__file__), out_path], env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out_path + ".out") as f:
        return f.read().splitlines()


def compare_runs(paths, tmp_path):
    fast = run_driver(paths, False, str(tmp_path / "fast"))
    slow = run_driver(paths, True, str(tmp_path / "pure"))
    assert fast[0].startswith("# packet path: compiled"), fast[0]
    assert slow[0].startswith("# packet path: pure Python"), slow[0]
    assert_same_driver_lines(fast, slow)
    return slow


@needs_extension
def test_runs_identical_on_cases_and_own_inputs(tmp_path):
    import make_own
    own = tmp_path / "own"
    own.mkdir()
    make_own.write_all(str(own))
    lines = compare_runs(capture_files(CASES) + capture_files(str(own)), tmp_path)
    assert sum(1 for line in lines if line.startswith("{\"ts\"")) > 50


@needs_extension
@pytest.mark.corpus
def test_runs_identical_on_corpus(tmp_path):
    if not os.path.isdir(CORPUS):
        pytest.skip(f"corpus not present at {CORPUS}")
    paths = capture_files(CORPUS)
    assert paths, f"no captures under {CORPUS}"
    lines = compare_runs(paths, tmp_path)
    assert sum(1 for line in lines if line.startswith("{\"ts\"")) > 1000


# --- the driver, run in a subprocess --------------------------------------------------------

def main(listing):
    """Run the pipeline over every capture named in `listing` and write, per capture, its
    records, a hash of its windows, its counters and the reader's stop message."""
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info
    from edge_etc.runner import Pipeline, run_file

    class Control:
        stop = False

        def tick(self):
            pass

    class HashingPipeline(Pipeline):
        def _on_window(self, flow, ts, window):
            self.window_hash.update(window)
            super()._on_window(flow, ts, window)

    with open(listing) as f:
        paths = f.read().splitlines()
    model = load_model_info(default_model_path())
    classifier = Classifier(model, batch_size=64)
    with open(listing + ".out", "w") as out:
        out.write(f"# packet path: {fastpath.describe()}\n")
        for path in paths:
            out.write(f"# file {os.path.relpath(path, ROOT)}\n")
            try:
                capture = CaptureFile(path)
            except CaptureFileError as e:
                out.write(f"# rejected: {e}\n")
                continue
            pipeline = HashingPipeline(classifier, lambda r: out.write(json.dumps(r) + "\n"))
            pipeline.window_hash = hashlib.sha256()
            with capture:
                run_file(pipeline, capture, Control())
            pipeline.finish()
            out.write(f"# windows {pipeline.window_hash.hexdigest()}\n")
            out.write(f"# summary {json.dumps(pipeline.summary())}\n")
            out.write(f"# skipped {json.dumps(pipeline.stats.skipped, sort_keys=True)}\n")
            out.write(f"# malformed {json.dumps(pipeline.stats.malformed, sort_keys=True)}\n")
            out.write(f"# fragments {json.dumps(pipeline.decoder.reassembler.dropped, sort_keys=True)}\n")
            out.write(f"# reader records={capture.records} stopped={capture.stopped}\n")


if __name__ == "__main__":
    main(sys.argv[1])
