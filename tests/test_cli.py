"""The `edge-etc` command's behaviour at its edges: exit codes, help text, environment
variables and messages, each run through the real command."""

import bz2
import errno
import gzip
import lzma
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import case, corpus, default_signals, end_process, flows_in, reaped, run_cli  # noqa: F401 (corpus is a fixture)

PCAP = case("eth_tls_2flows.pcap")
PCAP_HEADER_BYTES = 24


def pcap_parts(path):
    """Return (file header, records) of a classic pcap file, as bytes."""
    with open(path, "rb") as f:
        data = f.read()
    return data[:PCAP_HEADER_BYTES], data[PCAP_HEADER_BYTES:]


# --- a capture file run stopped by a signal --------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_file_run_stopped_by_signal_exit_code(tmp_path, signum, code):
    """Feed a capture on stdin, signal the run while it waits for more, then feed enough
    records to reach the next stop check (every 4,096 records)."""
    header, records = pcap_parts(PCAP)
    out = tmp_path / "flows.jsonl"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", "-",
                                 "-o", str(out)], stdin=subprocess.PIPE, stderr=err,
                                preexec_fn=default_signals)
    try:
        proc.stdin.write(header + records)
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while "reading stdin" not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "the run did not start reading"
            time.sleep(0.05)
        proc.send_signal(signum)

        # At most 2 MiB more reaches the next check; the run stops long before the end.
        try:
            for _ in range(200_000):
                proc.stdin.write(records)
        except BrokenPipeError:
            pass
        proc.wait(timeout=120)

    finally:
        end_process(proc)
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    stderr = err_path.read_text()
    assert proc.returncode == code, stderr
    assert f"stopping on {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr
    assert out.read_text().count("\n") >= 1  # the partial results were written


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_before_input_opens_exit_code(signum, code):
    """A signal while the run still waits for the capture file header, before the run's
    own handlers exist: one line and 128 + N, not click's "Aborted!" or a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", "-",
                             "-o", os.devnull], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)
    with reaped(proc):
        time.sleep(2)  # start-up takes about 0.2 s; the run then blocks reading stdin
        assert proc.poll() is None
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, stderr
    assert stderr.strip() == f"edge-etc: stopped by {signal.Signals(signum).name}"


def test_summary_and_reopen_requests_during_start_up(tmp_path):
    """SIGUSR1 and SIGHUP while the run still waits for the capture file header: the run
    goes on, logs the requested summary and reopens its output once reading starts."""
    header, records = pcap_parts(PCAP)
    out = tmp_path / "flows.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", "-",
                             "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=default_signals)
    with reaped(proc):
        time.sleep(2)  # start-up takes about 0.2 s; the run then blocks reading stdin
        assert proc.poll() is None
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None, "a request during start-up ended the run"
        stderr = proc.communicate(header + records, timeout=120)[1].decode()
    assert proc.returncode == 0, stderr
    assert stderr.count("summary:") == 2, stderr
    assert f"reopened output file {out}" in stderr
    final = [line for line in stderr.splitlines() if "summary:" in line][-1]
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", final)}
    assert counts["classified"] == 2
    # One line per classified flow, and one more per later window that changed a label.
    assert out.read_text().count("\n") == counts["classified"] + counts["relabelled"]


def start_stdin_run(**popen_args):
    """Start `edge-etc run --pcap -` with pipes for its standard streams."""
    return subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=default_signals, **popen_args)


def write_until_decided(proc, data):
    """Write `data` to the standard input of `proc`, leave it open and wait up to 60 s for
    the first decision on its standard output."""
    proc.stdin.write(data)
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "no decision written while the pipe stayed open"


def stop_with_writer_open(proc):
    """Send SIGTERM to `proc` and return its (stdout, stderr) once it has ended.

    The wait comes before communicate(), which would close the standard input of `proc`
    and so end the run whether the signal worked or not."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return proc.communicate(timeout=30)


@pytest.mark.parametrize("name, pure_python", [
    ("eth_tls_2flows.pcap", False),
    ("eth_tls_2flows.pcap", True),
    ("eth_tls_2flows.pcap.gz", False),
    ("pcapng_tls_2flows.pcapng", False),
])
def test_open_pipe_writes_decisions_and_stops(name, pure_python):
    """Records on a pipe whose writer stays open: the decisions come out while it waits,
    and SIGTERM ends the run then, not when the writer closes. The same for a compressed
    and a pcapng stream."""
    with open(case(name), "rb") as f:
        data = f.read()
    env = dict(os.environ, EDGE_ETC_PURE_PYTHON="1" if pure_python else "0")
    proc = start_stdin_run(env=env)
    with reaped(proc):
        write_until_decided(proc, data)
        # os.read, not readline: communicate() reads the descriptor itself, so lines that
        # a buffered readline had taken in would be lost to it.
        first = os.read(proc.stdout.fileno(), 1 << 16)
        assert first.startswith(b'{"ts": '), first
        started = time.monotonic()
        out, err = stop_with_writer_open(proc)
        waited = time.monotonic() - started
    assert proc.returncode == 143, err
    assert b"Traceback" not in err
    assert waited < 10, f"the run took {waited:.1f} s to stop"
    assert flows_in(first + out) == 2  # both flows of the capture


def test_trickling_pipe_writes_and_stops():
    """A writer that sends one record every 50 ms never leaves the pipe empty for 0.2 s:
    the decisions still come out while it writes, and SIGTERM still ends the run."""
    header, records = pcap_parts(PCAP)
    assert header[:4] == b"\xd4\xc3\xb2\xa1"  # little-endian record headers
    chunks = []
    pos = 0
    while pos < len(records):
        size = 16 + int.from_bytes(records[pos + 8:pos + 12], "little")  # header + caplen
        chunks.append(records[pos:pos + size])
        pos += size
    assert pos == len(records)
    stop = threading.Event()

    def trickle():
        # The capture's records once, then its last record again and again, until stopped.
        try:
            proc.stdin.write(header)
            for chunk in chunks + [chunks[-1]] * 10000:
                if stop.is_set():
                    return
                proc.stdin.write(chunk)
                proc.stdin.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ValueError):
            return

    proc = start_stdin_run()
    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    try:
        # Both flows' decisions, read as they come: the second flow's window completes a
        # few records after the first one's.
        first = b""
        deadline = time.monotonic() + 15
        while first.count(b"\n") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                first += os.read(proc.stdout.fileno(), 1 << 16)
        assert first.count(b"\n") == 2, f"decisions written while records kept arriving: {first!r}"
        assert first.startswith(b'{"ts": '), first
        assert writer.is_alive(), "the writer had stopped: the pipe was empty"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        waited = time.monotonic() - started
    finally:
        stop.set()
        end_process(proc)
        writer.join(timeout=10)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert waited < 5, f"the run took {waited:.1f} s to stop"
    assert flows_in(first + out) == 2  # both flows of the capture


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress],
                         ids=["gzip", "bzip2", "xz"])
def test_compressed_pipe_read_to_end(compress):
    """A whole compressed capture on a pipe whose writer stays open: every record is read
    while the pipe waits, not only those in the decompressor's first 8 KiB reads."""
    with open(PCAP, "rb") as f:
        data = compress(f.read())
    assert len(data) % 8192, "the stream must end inside an 8 KiB read"
    proc = start_stdin_run()
    with reaped(proc):
        write_until_decided(proc, data)
        time.sleep(1)  # five waits of 0.2 s with the pipe empty
        _, err = stop_with_writer_open(proc)
    err = err.decode()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert summary_fields(err)["records"] == "30", err


@pytest.mark.parametrize("compress, first_write", [(gzip.compress, 1), (lzma.compress, 3)],
                         ids=["gzip", "xz"])
def test_magic_split_across_writes(compress, first_write):
    """A compressed stream whose first write is shorter than its magic number is
    recognized once the rest of the magic number arrives."""
    with open(PCAP, "rb") as f:
        data = compress(f.read())
    proc = start_stdin_run()
    with reaped(proc):
        proc.stdin.write(data[:first_write])
        proc.stdin.flush()
        time.sleep(3)  # start-up done, waiting for the rest of the magic number
        proc.stdin.write(data[first_write:])
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert flows_in(out) == 2  # both flows of the capture


@pytest.mark.parametrize("with_records", [False, True], ids=["no header", "records"])
def test_stdin_left_blocking_after_signal(with_records):
    """Standard input, shared with the parent, is in blocking mode after a run that
    SIGTERM ended: while it waited for the file header (a start-up signal) or for more
    records."""
    data = b"".join(pcap_parts(PCAP)) if with_records else b""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", "-"],
                                stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with reaped(proc):
            os.write(write_end, data)
            time.sleep(3)  # start-up done, waiting on the pipe
            _, err = stop_with_writer_open(proc)
        assert proc.returncode == 143, err
        assert os.get_blocking(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def open_fifo_writer(path, proc, timeout=60):
    """Open the FIFO `path` for writing once `proc` has opened it for reading.

    Fails the test if `proc` ends or `timeout` seconds pass first, where a plain open
    would hang."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        else:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "wb")
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run did not open the FIFO"
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["eth_tls_2flows.pcap", "eth_tls_2flows.pcap.gz",
                                  "pcapng_tls_2flows.pcapng"])
def test_fifo_path_same_as_file(tmp_path, name):
    """A FIFO given by path (mkfifo) gives the decisions of the same capture read as a
    regular file."""
    expected = run_cli("run", "--pcap", case(name))
    assert expected.returncode == 0, expected.stderr
    fifo = tmp_path / "capture"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        with open(case(name), "rb") as f, open_fifo_writer(fifo, proc) as writer:
            writer.write(f.read())
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert out == expected.stdout
    assert flows_in(out) == 2


def test_closed_stdout_one_line_error(tmp_path):
    """Records for stdout while stdout is closed (a service started with `>&-`): one
    line and exit code 2 before any packet, not a traceback at the first record. With -o
    FILE, a closed stdout is no problem."""
    def close_stdout():
        os.close(1)

    command = [sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP]
    closed = subprocess.run(command, capture_output=False, stderr=subprocess.PIPE,
                            preexec_fn=close_stdout, text=True, timeout=120)
    assert closed.returncode == 2, closed.stderr
    assert "Traceback" not in closed.stderr
    assert closed.stderr.strip().splitlines()[-1] == (
        "edge-etc: error: --output -: standard output is closed; give --output FILE, or "
        "--output '' for no JSON lines")
    out = tmp_path / "flows.jsonl"
    to_file = subprocess.run(command + ["-o", str(out)], stderr=subprocess.PIPE,
                             preexec_fn=close_stdout, text=True, timeout=120)
    assert to_file.returncode == 0, to_file.stderr
    assert flows_in(out.read_text()) == 2


def test_file_run_to_end_exits_0(tmp_path):
    header, records = pcap_parts(PCAP)
    proc = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", "-"],
                          input=header + records, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- messages ----------------------------------------------------------------------------

def bpf_error(*args):
    proc = subprocess.run([sys.executable, "-m", "edge_etc", "run", *args,
                           "--filter", "tcp and and"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line


def test_file_bpf_error_has_libpcap_message():
    line = bpf_error("--pcap", PCAP)
    assert line == ("edge-etc: error: invalid BPF filter 'tcp and and': can't parse filter "
                    "expression: syntax error")


@pytest.mark.skipif(os.geteuid() != 0, reason="live capture on lo needs root")
def test_file_and_live_bpf_errors_agree():
    file_line = bpf_error("--pcap", PCAP)
    live_line = bpf_error("--iface", "lo")
    assert live_line.replace("error: lo: ", "error: ") == file_line


def summary_fields(stderr):
    (line,) = [x for x in stderr.splitlines() if "summary:" in x]
    return dict(kv.split("=") for kv in line.split("summary: ")[1].split())


def test_summary_records_include_filtered():
    proc = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP, "-o", "",
                           "--filter", "tcp and src port 443"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = summary_fields(proc.stderr)
    unfiltered = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP, "-o", ""],
                                capture_output=True, text=True, timeout=120)
    assert summary["records"] == summary_fields(unfiltered.stderr)["records"]
    assert 0 < int(summary["filtered"]) < int(summary["records"])
    assert int(summary["packets"]) == int(summary["records"]) - int(summary["filtered"])


def test_info_counts_averaged_networks():
    """`edge-etc info` names how many networks the bundled model averages, and their output
    blocks fill the model's output exactly."""
    import json

    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info

    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    model = load_model_info(default_model_path())
    assert doc["networks"] == model.networks
    assert model.networks >= 1
    out = Classifier(model).interpreter.get_output_details()[0]
    assert out["shape"][-1] == doc["networks"] * len(doc["labels"])

    # The file reader finds the same layout in the graph, before any interpreter exists.
    from edge_etc.tflite_file import TFLiteModel

    assert TFLiteModel(model.data).output_blocks() == [len(doc["labels"])] * doc["networks"]


def _bad_model(tmp_path, kind):
    from edge_etc.model import default_model_path

    path = tmp_path / "model.tflite"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
        return path
    data = {"empty": b"", "capture": open(PCAP, "rb").read(),
            "cut": open(default_model_path(), "rb").read()[:1000]}[kind]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, problem", [
    ("missing", "model file not found"),
    ("directory", "is a directory, not a model file"),
    ("empty", "empty file, not a TFLite model"),
    ("capture", "not a TFLite model (no TFL3 file identifier at byte 4)"),
    ("cut", "corrupt or truncated TFLite file"),
])
def test_run_bad_model_one_line(tmp_path, kind, problem):
    path = _bad_model(tmp_path, kind)
    proc = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP, "--model", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"edge-etc: error: {path}: {problem}"), line


# --- training side -----------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["absent.h5"], "edge-etc: error: absent.h5: model file not found"),
    ([PCAP, "-o", "/nonexistent-dir/m.tflite"],
     "edge-etc: error: --output /nonexistent-dir/m.tflite: directory /nonexistent-dir not found"),
    ([PCAP, "--corpus", "/nonexistent-dir"], "edge-etc: error: --corpus /nonexistent-dir: folder not found"),
])
def test_convert_checks_inputs_before_tensorflow(tmp_path, args, expected):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "edge_etc", "convert", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("import time:")]
    assert lines == [expected]
    imported = [x.split("|")[-1].strip() for x in proc.stderr.splitlines()
                if x.startswith("import time:")]
    assert "tensorflow" not in imported
    assert "keras" not in imported


@pytest.mark.parametrize("kind, problem", [
    ("tflite", "is a TFLite model already; convert takes the Keras model.h5 that 'edge-etc train' writes"),
    ("capture", "not a Keras model (neither an HDF5 .h5 nor a zipped .keras file)"),
])
def test_convert_names_wrong_model_file(tmp_path, kind, problem):
    pytest.importorskip("tensorflow", reason="needs the training extra")
    from edge_etc.model import default_model_path

    path = default_model_path() if kind == "tflite" else PCAP
    proc = subprocess.run([sys.executable, "-m", "edge_etc", "convert", path,
                           "--corpus", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"edge-etc: error: {path}: {problem}"]


def test_missing_train_extra_names_both_install_commands():
    code = ("import sys; sys.modules['tensorflow'] = None; from edge_etc.cli import main; "
            "sys.argv = ['edge-etc', 'train']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "tensorflow is not installed" in line
    assert "pip install 'edge-etc[train]'" in line
    assert "pip install '.[train]'" in line


def test_train_few_captures_warns_and_reports(corpus, tmp_path):
    pytest.importorskip("tensorflow")
    proc = subprocess.run([sys.executable, "-m", "edge_etc", "train", "--corpus", corpus,
                           "--limit-captures", "20", "--epochs", "1", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # One log line per epoch on stderr; no Keras progress bar among the report on stdout.
    assert "\x1b[" not in proc.stdout
    assert "Epoch" not in proc.stdout
    assert re.search(r"INFO: epoch 1/1: .*loss=", proc.stderr)
    assert "WARNING: 10 of 20 captures (50%) are held out for testing" in proc.stderr
    assert "WARNING: unknown threshold 0.00: no validation captures" in proc.stderr
    report = (tmp_path / "report.txt").read_text()
    assert "Unknown threshold: 0.00" in report
    assert "no validation captures" in report
    assert "the model never reports unknown" in report
    assert "10 of 20 captures (50%) are held out for testing" in report
    assert "Networks averaged: 5 (seeds 0, 1000, 2000, 3000, 4000)" in report


# --- a capture source from the command line and from the environment ------------------------

def test_command_line_pcap_wins_over_iface_variable():
    env = dict(os.environ, EDGE_ETC_RUN_IFACE="edgeetc-none0")
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert flows_in(r.stdout) == 2


def test_command_line_iface_wins_over_pcap_variable():
    env = dict(os.environ, EDGE_ETC_RUN_PCAP=PCAP)
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--iface", "edgeetc-none0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    assert "edgeetc-none0" in r.stderr


def test_both_source_variables_rejected():
    env = dict(os.environ, EDGE_ETC_RUN_PCAP=PCAP, EDGE_ETC_RUN_IFACE="edgeetc-none0")
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert "set only one of EDGE_ETC_RUN_PCAP and EDGE_ETC_RUN_IFACE" in r.stderr


@pytest.mark.parametrize("variable, option, value", [
    ("EDGE_ETC_RUN_BATCH_SIZE", "--batch-size", "abc"),
    ("EDGE_ETC_RUN_MAX_FLOWS", "--max-flows", "-5"),
    ("EDGE_ETC_RUN_BACKEND", "--backend", "gpu"),
])
def test_invalid_variable_is_named(variable, option, value):
    """An invalid value from a variable is reported under the variable's name; the same
    value on the command line under the option's."""
    env = dict(os.environ, **{variable: value})
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"edge-etc: error: Invalid value for {variable} (environment variable of {option})")
    assert line.endswith(" run --help' for the options.")
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", PCAP, option, value],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"edge-etc: error: Invalid value for '{option}'")


@pytest.mark.parametrize("args, message", [
    (["run", "--no-such-option"], "No such option '--no-such-option'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["run", "--pcap", PCAP, "--max-windows", "0"], "Invalid value for '--max-windows'"),
    (["run", "--pcap", PCAP, "--iface", "lo"],
     "give exactly one of --pcap FILE or --iface IFACE. Run '"),
])
def test_usage_error_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "edge_etc", *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"edge-etc: error: {message}"), line


def test_no_command_prints_help():
    r = subprocess.run([sys.executable, "-m", "edge_etc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("Usage: ")
    assert "Commands:" in r.stderr


def test_ignored_sigint_stays_ignored():
    """A parent that ignores SIGINT (a background job of a non-interactive shell): the
    run keeps going on SIGINT, before and after its input opens, and SIGTERM stops it."""
    header, records = pcap_parts(PCAP)
    proc = subprocess.Popen([sys.executable, "-m", "edge_etc", "run", "--pcap", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    with reaped(proc):
        time.sleep(2)  # blocked on the file header: start-up handlers
        proc.send_signal(signal.SIGINT)
        proc.stdin.write(header + records)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no decision written"
        proc.send_signal(signal.SIGINT)  # the run's own handlers
        time.sleep(1)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 143


def test_closed_stdin_one_line_error():
    """`--pcap -` in a process started with its standard input closed (`<&-`)."""
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", "-"],
                       stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       preexec_fn=lambda: os.close(0), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == ("edge-etc: error: stdin: standard input is closed; "
                                "give --pcap FILE")


def test_stdin_named_stdin_in_errors():
    r = subprocess.run([sys.executable, "-m", "edge_etc", "run", "--pcap", "-"],
                       input=b"text\n", capture_output=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "edge-etc: error: stdin: not a pcap or pcapng file (magic 74657874)"


def test_training_help_states_defaults():
    """The help of `train` and `evaluate` names the training module's defaults, which the
    device-side command line cannot import."""
    pytest.importorskip("tensorflow")
    from edge_etc.convert import evaluate, train

    def help_text(command):
        r = subprocess.run([sys.executable, "-m", "edge_etc", command, "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0
        return " ".join(r.stdout.split())

    train_help = help_text("train")
    assert f"no early stopping) [default: {train.EPOCHS}]" in train_help
    assert f"inference time [default: {train.MEMBERS}]" in train_help
    full = evaluate.PRESETS["full"]
    evaluate_help = help_text("evaluate")
    assert (f"full: {full['folds']} folds, {full['epochs']} epochs, {full['repeats']} training "
            "repeats;") in evaluate_help
    assert f"[default: {train.MEMBERS}, the bundled model's members]" in evaluate_help
