"""The compiled flow engine (edge_etc/_engine.c) against the pure-Python pipeline.

The Python `Pipeline` and `FlowTable` are the reference. The whole-run checks run the same
driver (this file's `main`) twice in subprocesses, once with EDGE_ETC_PURE_PYTHON=1, over
every capture in tests/data/cases, the captures that tests/data/own/make_own.py builds,
the hard inputs in ../shared/cases and the corpus when present. Per capture and per table
configuration they compare the output lines, a hash of every window the model is given,
the summary, the skip and malformed reasons and the reader's stop message. Other checks run
`edge-etc run` itself both ways.
"""

import errno
import glob
import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_same_driver_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "data", "own"))
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))

from edge_etc import engine, fastpath  # noqa: E402
from edge_etc.preprocess import Preprocessing  # noqa: E402

CASES = os.path.join(ROOT, "tests", "data", "cases")
SHARED_CASES = os.path.normpath(os.path.join(ROOT, "..", "shared", "cases", "inputs"))
CORPUS = os.environ.get("EDGE_ETC_CORPUS") or os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus"))
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".gz", ".bz2", ".xz")

# Table configurations of the whole-run comparison: the defaults, averaged decisions, and a
# small tables, short idle timeouts and odd batch sizes, so that eviction, expiry,
# relabelling and windows of evicted flows waiting for inference all occur.
CONFIGS = {
    "default": dict(max_flows=65536, idle_timeout_s=120.0, max_windows=1, batch_size=64),
    "five_windows": dict(max_flows=65536, idle_timeout_s=120.0, max_windows=5, batch_size=64),
    "small_table": dict(max_flows=50, idle_timeout_s=2.0, max_windows=5, batch_size=7),
    "small_table_one_window": dict(max_flows=50, idle_timeout_s=2.0, max_windows=1,
                                   batch_size=256),
    "tiny_table_dicts": dict(max_flows=3, idle_timeout_s=0.5, max_windows=3, batch_size=1),
    "short_idle": dict(max_flows=65536, idle_timeout_s=0.5, max_windows=2, batch_size=64),
}

needs_engine = pytest.mark.skipif(not engine.available(),
                                  reason="edge_etc._fastpath is not built or is disabled")


def capture_files(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if os.path.isfile(p) and p.endswith(CAPTURE_SUFFIXES))


def run_driver(paths, pure, out_path, configs):
    env = dict(os.environ)
    env[fastpath.DISABLE_VARIABLE] = "1" if pure else "0"
    with open(out_path, "w") as listing:
        listing.write("\n".join(paths))
    result = subprocess.run([sys.executable, os.path.abspath(__file__), out_path, *configs],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out_path + ".out") as f:
        return f.read().splitlines()


def compare_runs(paths, tmp_path, configs=tuple(CONFIGS)):
    """Run the driver both ways and assert identical output; return the pure run's lines."""
    fast = run_driver(paths, False, str(tmp_path / "engine"), configs)
    slow = run_driver(paths, True, str(tmp_path / "pure"), configs)
    assert fast[0].startswith("# pipeline: EnginePipeline"), fast[0]
    assert slow[0].startswith("# pipeline: Pipeline"), slow[0]
    assert_same_driver_lines(fast, slow)
    return slow


def count_records(lines):
    return sum(1 for line in lines if line.startswith('{"ts"'))


def write_many_flows(folder):
    """Write three captures of many flows and return their paths.

    They are 3,000 interleaved TLS- and QUIC-like flows of 3 to 7 packets
    (benchmarks/gen_flows.py), and a SYN flood of 20,000 one-packet flows over 20 s followed
    by two TLS flows (tests/data/make_syn_flood.py). The third has 400 flows of varied
    windows on other ports (make_own.varied_flows), which the bundled model relabels with
    several windows per decision."""
    import make_own
    import make_syn_flood

    flows = os.path.join(folder, "flows_3k.pcap")
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gen_flows.py"), "--flows",
                    "3000", "--seed", "5", "--out", flows], check=True, capture_output=True,
                   cwd=os.path.join(ROOT, "benchmarks"))
    flood = os.path.join(folder, "syn_flood_20k.pcap")
    make_syn_flood.write(flood, 20_000)
    varied = os.path.join(folder, "varied_flows.pcap")
    with open(varied, "wb") as f:
        f.write(make_own.pcap(make_own.framed(make_own.varied_flows(), make_own.eth), 1))
    return [flows, flood, varied]


# --- whole runs, engine against Python ----------------------------------------------------

@needs_engine
def test_runs_identical_on_cases_and_own_inputs(tmp_path):
    import make_own
    own = tmp_path / "own"
    own.mkdir()
    make_own.write_all(str(own))
    many = write_many_flows(str(tmp_path))
    lines = compare_runs(capture_files(CASES) + capture_files(str(own)) + many, tmp_path)
    assert count_records(lines) > 200
    # The small tables must really evict, expire and relabel, or they test nothing.
    summaries = [json.loads(line[len("# summary "):]) for line in lines
                 if line.startswith("# summary ")]
    assert sum(s["evictions"] for s in summaries) > 100
    assert sum(s["expired"] for s in summaries) > 100
    assert sum(s["relabelled"] for s in summaries) > 0
    assert sum(s["malformed"] for s in summaries) > 0


@needs_engine
def test_runs_identical_on_shared_cases(tmp_path):
    if not os.path.isdir(SHARED_CASES):
        pytest.skip(f"hard inputs not present at {SHARED_CASES}")
    paths = capture_files(SHARED_CASES)
    assert paths, f"no captures under {SHARED_CASES}"
    compare_runs(paths, tmp_path)


@needs_engine
@pytest.mark.corpus
def test_runs_identical_on_whole_corpus(tmp_path):
    if not os.path.isdir(CORPUS):
        pytest.skip(f"corpus not present at {CORPUS}")
    paths = capture_files(CORPUS)
    assert paths, f"no captures under {CORPUS}"
    lines = compare_runs(paths, tmp_path)
    assert count_records(lines) > 1000


@needs_engine
@pytest.mark.corpus
def test_dataset_windows_identical_on_corpus():
    """The dataset builder's windows per flow, made by the engine and by the Python flow
    table, for every corpus capture and two settings (the default and every packet)."""
    from edge_etc.convert import dataset

    if not os.path.isdir(CORPUS):
        pytest.skip(f"corpus not present at {CORPUS}")
    paths = capture_files(CORPUS)
    windows = 0
    for settings in (Preprocessing(), SETTINGS):
        for path in paths:
            fast, fast_short = dataset.capture_windows(path, settings, use_engine=True)
            slow, slow_short = dataset.capture_windows(path, settings, use_engine=False)
            assert fast_short == slow_short, path
            assert [(f.serial, f.proto, f.client, f.client_port, f.server, f.server_port)
                    for f, _ in fast] == [(f.serial, f.proto, f.client, f.client_port, f.server,
                                           f.server_port) for f, _ in slow], path
            assert [w for _, w in fast] == [w for _, w in slow], path
            windows += sum(len(w) for _, w in fast)
    assert windows > 10000


# Settings whose window shapes the runner's model does not use: one, two and five packets
# per window, no context or port block, and every packet in windows.
WINDOW_SETTINGS = [
    Preprocessing(vector_bytes=64, window_packets=1, context=False, port_buckets=0),
    Preprocessing(vector_bytes=80, window_packets=2, window_rule="all", context=True,
                  port_buckets=0),
    Preprocessing(vector_bytes=152, window_packets=5, context=True, port_buckets=16),
    Preprocessing(vector_bytes=48, window_packets=3, server_port=False, context=False,
                  port_buckets=0),
]


@needs_engine
@pytest.mark.parametrize("settings", WINDOW_SETTINGS, ids=["one", "two_all", "five", "masked_port"])
def test_window_shapes_identical(settings, tmp_path):
    """Engine windows, flows and counters equal the Python flow table's for other window
    shapes, with small tables that evict and expire, over the test captures and 3,000
    generated flows."""
    sys.path.insert(0, os.path.join(ROOT, "fuzz"))
    import fastpath_diff

    paths = capture_files(CASES) + write_many_flows(str(tmp_path))
    saved = fastpath_diff.ENGINE_SETTINGS, dict(fastpath_diff.TABLE)
    windows = 0
    try:
        fastpath_diff.ENGINE_SETTINGS = settings
        for table in (dict(max_flows=7, idle_timeout_s=1.0, max_windows=2),
                      dict(max_flows=100000, idle_timeout_s=120.0, max_windows=1000)):
            fastpath_diff.TABLE.clear()
            fastpath_diff.TABLE.update(table)
            for path in paths:
                try:
                    fast = fastpath_diff.windows_engine(path, 1 << 20)
                except Exception as e:  # a file the reader rejects: both must reject it
                    with pytest.raises(type(e)):
                        fastpath_diff.windows_python(path, 1 << 20)
                    continue
                slow = fastpath_diff.windows_python(path, 1 << 20)
                assert fast[2] == slow[2], (path, table)
                assert fast[1] == slow[1], (path, table)
                assert fast[0] == slow[0], (path, table)
                windows += len(fast[0])
    finally:
        fastpath_diff.ENGINE_SETTINGS = saved[0]
        fastpath_diff.TABLE.clear()
        fastpath_diff.TABLE.update(saved[1])
    assert windows > 1000


# --- edge-etc run, engine against Python ----------------------------------------------------

def run_cli_both(args, tmp_path):
    """Run `edge-etc run ARGS` with the engine and with EDGE_ETC_PURE_PYTHON=1; return the
    (stdout, summary lines of stderr, packet path line) of each."""
    results = []
    for pure in (False, True):
        env = dict(os.environ)
        env[fastpath.DISABLE_VARIABLE] = "1" if pure else "0"
        done = subprocess.run([sys.executable, "-m", "edge_etc", "run", *args], env=env,
                              capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
        assert done.returncode == 0, done.stderr[-2000:]
        summary = [line for line in done.stderr.splitlines()
                   if "summary:" in line or line.startswith("edge-etc: INFO:   ")]
        path_line = next(line for line in done.stderr.splitlines() if "packet path:" in line)
        results.append((done.stdout, summary, path_line))
    return results


CLI_CASES = [
    ("eth_tls_2flows.pcap", []),
    ("pcapng_two_linktypes.pcapng", ["--max-windows", "5"]),
    ("malformed_headers_mix.pcap", ["--max-flows", "50", "--idle-timeout", "2"]),
    ("ipv4_fragments_udp443.pcap", ["--max-windows", "5", "--batch-size", "3"]),
    ("out_of_order_timestamps.pcap", ["--max-flows", "2", "--idle-timeout", "1"]),
    ("eth_tls_2flows.pcap.gz", ["--filter", "tcp port 443"]),
    ("dns_ntp_mdns_noise_plus_1tls.pcap", ["--anonymize", "--anonymize-key", "KEY"]),
]


@needs_engine
@pytest.mark.parametrize("name,args", CLI_CASES, ids=[c[0] + " " + " ".join(c[1]) for c in CLI_CASES])
def test_cli_output_identical(name, args, tmp_path):
    (tmp_path / "KEY").write_bytes(b"k" * 32)
    (fast_out, fast_summary, fast_path), (slow_out, slow_summary, slow_path) = run_cli_both(
        ["--pcap", os.path.join(CASES, name), *args], tmp_path)
    assert "compiled flow engine" in fast_path
    assert "pure Python" in slow_path
    assert fast_out == slow_out
    assert fast_summary == slow_summary


@needs_engine
def test_cli_many_flows_identical(tmp_path):
    flows, flood = write_many_flows(str(tmp_path))[:2]
    for args in (["--pcap", flows, "--max-flows", "200", "--max-windows", "5"],
                 ["--pcap", flood, "--max-flows", "50", "--idle-timeout", "1"]):
        (fast_out, fast_summary, _), (slow_out, slow_summary, _) = run_cli_both(args, tmp_path)
        assert fast_out == slow_out, args
        assert fast_summary == slow_summary, args
    assert fast_out.count("\n") >= 2


class FullDisk(io.RawIOBase):
    """A raw output stream that takes `room` bytes, then fails like a full file system."""

    def __init__(self, room):
        self.room = room
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        size = min(len(b), self.room - len(self.data))
        if size <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.data += bytes(b[:size])
        return size


def run_to_full_disk(pipeline_class, path, room, anonymize):
    """Run `pipeline_class` over `path` into an output that fails after `room` bytes;
    return (summary, bytes written, whether the write failed)."""
    from edge_etc.capfile import CaptureFile
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info
    from edge_etc.outputs import Anonymizer, Outputs
    from edge_etc.runner import JsonLines, run_file

    class Control:
        stop = False

        def tick(self):
            pass

    raw = FullDisk(room)
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
    anonymizer = Anonymizer(b"k" * 32) if anonymize else None
    outputs = Outputs(JsonLines(None, stream=stream), anonymizer=anonymizer)
    classifier = Classifier(load_model_info(default_model_path()), batch_size=64)
    pipeline = pipeline_class(classifier, outputs, max_windows=2, batch_size=64)
    failed = False
    try:
        with CaptureFile(path) as capture:
            run_file(pipeline, capture, Control())
        pipeline.finish()
        outputs.flush()
    except OSError as e:
        assert e.errno == errno.ENOSPC
        failed = True
    return pipeline.summary(), bytes(raw.data), failed


@needs_engine
@pytest.mark.parametrize("anonymize", [False, True], ids=["text", "dicts"])
def test_full_disk_counters_identical(anonymize, tmp_path):
    """When the output fails partway (a full disk), the engine counts the same decisions as
    the Python pipeline: those up to the record whose write failed."""
    from edge_etc.runner import Pipeline

    flows = write_many_flows(str(tmp_path))[0]
    for room in (1, 9000, 50000):
        fast = run_to_full_disk(engine.EnginePipeline, flows, room, anonymize)
        slow = run_to_full_disk(Pipeline, flows, room, anonymize)
        assert slow[2], "the output must fail partway, or this tests nothing"
        assert fast[2] == slow[2], room
        assert fast[1] == slow[1], room
        assert fast[0] == slow[0], room


# --- the engine's interface ---------------------------------------------------------------

SETTINGS = Preprocessing(vector_bytes=96, context=True, port_buckets=8, window_rule="all")


def ethernet_tcp(sport, dport, payload=b"x" * 40, flags=0x18):
    """Return an Ethernet frame of an IPv4 TCP packet from 10.0.0.1 to 10.0.0.2."""
    ip_len = 40 + len(payload)
    ip = (b"\x45\x00" + ip_len.to_bytes(2, "big") + bytes(4) + b"\x40\x06\x00\x00" +
          bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]))
    tcp = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(8) + b"\x50" +
           bytes([flags]) + bytes(6))
    return bytes(12) + b"\x08\x00" + ip + tcp + payload


@needs_engine
def test_engine_rejects_packets_when_pending_full():
    e = engine.new_engine(SETTINGS, 10, 60.0, 1, 1, decisions=False, serials=True)
    frame = ethernet_tcp(40000, 443)
    for i in range(3):
        assert e.process(float(i), 1, frame, len(frame))
    assert e.pending == 1
    with pytest.raises(RuntimeError, match="pending windows are full"):
        e.process(3.0, 1, frame, len(frame))
    windows, flows = e.take_windows()
    assert len(windows) == e.window_bytes
    assert flows == [(1, 6, bytes([10, 0, 0, 1]), 40000, bytes([10, 0, 0, 2]), 443)]
    assert e.process(3.0, 1, frame, len(frame))


@needs_engine
def test_engine_limits_read_whole():
    """max_flows and max_windows are checked as given: 2**32 + 5 does not become 5 where
    long has 32 bits, nor 2**64 + 5 on any build."""
    for value in (0, -1, 2**32 - 1, 2**32 + 5, 2**64 + 5):
        with pytest.raises(ValueError, match="invalid engine limits"):
            engine.new_engine(SETTINGS, value, 60.0, 1, 4, decisions=False)
        with pytest.raises(ValueError, match="invalid engine limits"):
            engine.new_engine(SETTINGS, 10, 60.0, value, 4, decisions=False)
    with pytest.raises(TypeError):
        engine.new_engine(SETTINGS, 10.0, 60.0, 1, 4, decisions=False)
    largest = engine.new_engine(SETTINGS, 2**32 - 2, 60.0, 2**32 - 2, 4, decisions=False)
    assert largest.max_windows == 2**32 - 2


@needs_engine
def test_engine_without_init_is_empty():
    e = fastpath.native.Engine.__new__(fastpath.native.Engine)
    e.flush()
    e.advance(5.0)
    assert len(e) == 0
    assert e.take_windows() == (b"", [])
    with pytest.raises(RuntimeError):
        e.process(1.0, 1, ethernet_tcp(1, 2), 60)
    with pytest.raises(RuntimeError):
        e.decide(np.zeros((0, 2), np.float32), True)


@needs_engine
def test_engine_hands_back_unusual_frames():
    e = engine.new_engine(SETTINGS, 10, 60.0, 1, 4, decisions=False)
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert e.process(1.0, 1, arp, len(arp)) is False
    assert e.packets == 0
    assert e.process(1.0, 9999, ethernet_tcp(1, 2), 60) is False
    assert e.process(1, 1, ethernet_tcp(1, 2), 60) is False  # an int time stamp: Python's


@needs_engine
def test_engine_windows_as_uint8_rows():
    e = engine.new_engine(SETTINGS, 10, 60.0, 5, 8, decisions=False)
    frame = ethernet_tcp(40000, 443)
    for i in range(4):
        e.process(float(i), 1, frame, len(frame))
    rows = np.frombuffer(e, dtype=np.uint8).reshape(e.capacity, e.window_bytes)[:e.pending]
    windows, _ = e.take_windows()
    assert rows.shape == (2, 3 * SETTINGS.vector_bytes)
    assert windows == rows.tobytes()


@needs_engine
def test_engine_state_per_flow_is_small():
    """A flow that has made its window keeps no vectors: the fixed slot is all it costs."""
    e = engine.new_engine(Preprocessing(), 200000, 60.0, 1, 1 << 16, decisions=False)
    for port in range(1024, 1024 + 20000):
        frame = ethernet_tcp(port, 443)
        for i in range(3):
            e.process(float(i), 1, frame, len(frame))
        if e.pending > 60000:
            e.take_windows()
    memory = e.memory()
    assert len(e) == 20000
    assert memory["vector_buffers_in_use"] == 0
    per_flow = (memory["flow_slots"] + memory["hash_buckets"]) / len(e)
    assert memory["flow_slot_bytes"] <= 128
    assert per_flow < 256, memory


@needs_engine
def test_rounded_floats_formatted_as_python():
    """The engine writes repr(round(x, digits)) for time stamps and confidences, partly with
    integer arithmetic: check it against Python on ties, range ends and random values."""
    rng = np.random.default_rng(11)
    values = [0.0, -0.0, 1e-4, 0.99995, 0.00005, 0.00015, 1 / 128, 3 / 128, 2.5e-7, 1.5e-6,
              1700000000.0078125, 1700000000.123456, 8589934591.9999995, 8589934592.0,
              1e16, 1e-7, -1700000000.5, float("inf"), 123456789.0000005]
    values += list(rng.uniform(0, 1, 2000)) + list(rng.uniform(1.6e9, 1.8e9, 2000))
    values += [k / 2 ** 20 for k in range(1, 3000)] + list(rng.uniform(0, 2 ** 34, 500))
    for x in values:
        for digits in (4, 6):
            expected = json.dumps(round(float(x), digits))
            assert fastpath.native.format_rounded(float(x), digits) == expected, (x, digits)


def test_predict_array_matches_byte_strings():
    """Classifier.predict gives the same probabilities for a 2-D uint8 array as for byte
    strings, and its addition shortcut for an affine input table equals the table lookup."""
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info

    model = load_model_info(default_model_path())
    classifier = Classifier(model, batch_size=16)
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, size=(40, classifier.window_shape[0] * classifier.window_shape[1]),
                        dtype=np.uint8)
    from_array = classifier.predict(rows)
    from_bytes = classifier.predict([row.tobytes() for row in rows])
    assert np.array_equal(from_array, from_bytes)
    offset = classifier._lut_offset
    classifier._lut_offset = None
    from_table = classifier.predict(rows)
    assert np.array_equal(from_array, from_table)
    classifier._lut_offset = offset


# --- the driver, run in a subprocess --------------------------------------------------------

def main(listing, config_names):
    """Run the runner's pipeline over every capture named in `listing` with each table
    configuration, and write per capture its records, a hash of the windows the model got,
    its counters and the reader's stop message."""
    from edge_etc.capfile import CaptureFile
    from edge_etc.errors import CaptureFileError
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info
    from edge_etc.outputs import Anonymizer, Outputs
    from edge_etc.runner import JsonLines, make_pipeline, run_file

    class Control:
        stop = False

        def tick(self):
            pass

    with open(listing) as f:
        paths = f.read().splitlines()
    model = load_model_info(default_model_path())
    classifiers = {}
    window_hash = hashlib.sha256()

    def hashing_predict(classifier):
        predict = classifier.predict

        def wrapped(windows):
            if isinstance(windows, np.ndarray):
                window_hash.update(windows.tobytes())
            else:
                window_hash.update(b"".join(windows))
            return predict(windows)
        return wrapped

    with open(listing + ".out", "w") as out:
        kind = "EnginePipeline" if engine.available() else "Pipeline"
        out.write(f"# pipeline: {kind}\n")
        for path in paths:
            for name in config_names:
                config = dict(CONFIGS[name])
                batch_size = config.pop("batch_size")
                if batch_size not in classifiers:
                    classifier = Classifier(model, batch_size=batch_size)
                    classifier.predict = hashing_predict(classifier)
                    classifiers[batch_size] = classifier
                out.write(f"# file {os.path.relpath(path, ROOT)} {name}\n")
                try:
                    capture = CaptureFile(path)
                except CaptureFileError as e:
                    out.write(f"# rejected: {e}\n")
                    continue
                text = io.StringIO()
                # The dicts configuration anonymizes, which makes the engine hand records
                # over as dicts instead of JSON lines text.
                anonymizer = Anonymizer(b"k" * 32) if name.endswith("_dicts") else None
                outputs = Outputs(JsonLines(None, stream=text), anonymizer=anonymizer)
                pipeline = make_pipeline(classifiers[batch_size], outputs, batch_size=batch_size,
                                         **config)
                window_hash = hashlib.sha256()
                with capture:
                    run_file(pipeline, capture, Control())
                pipeline.finish()
                out.write(text.getvalue())
                table = pipeline.engine if hasattr(pipeline, "engine") else pipeline.table
                out.write(f"# windows {window_hash.hexdigest()}\n")
                out.write(f"# summary {json.dumps(pipeline.summary())}\n")
                out.write(f"# skipped {json.dumps(pipeline.stats.skipped, sort_keys=True)}\n")
                out.write(f"# malformed {json.dumps(pipeline.stats.malformed, sort_keys=True)}\n")
                out.write(f"# fragments {json.dumps(pipeline.decoder.reassembler.dropped, sort_keys=True)}\n")
                out.write(f"# jumps {table.time_jumps_back} {table.time_jumps_forward}\n")
                out.write(f"# reader records={capture.records} stopped={capture.stopped}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
