"""Shared fixtures: paths, a subprocess runner for the CLI, and a flow scanner built on the
same reader, decoder, flow table and vectorizer the runner uses."""

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from edge_etc.capfile import CaptureFile
from edge_etc.decode import Decoder
from edge_etc.errors import PacketError
from edge_etc.flows import FlowTable
from edge_etc.preprocess import Preprocessing
from edge_etc.runner import format_ip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(ROOT, "tests", "data", "cases")
CORPUS = os.environ.get("EDGE_ETC_CORPUS") or os.path.normpath(os.path.join(ROOT, "..", "shared", "corpus"))


def end_process(proc):
    """Kill `proc` if it is still running, and wait for it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def reaped(proc):
    """Run the block, then end `proc` if the block left it running (a failed assert)."""
    try:
        yield proc
    finally:
        end_process(proc)


def case(name):
    return os.path.join(CASES, name)


@pytest.fixture
def corpus():
    if not os.path.isfile(os.path.join(CORPUS, "FLOWS.tsv")):
        pytest.skip(f"corpus not present at {CORPUS}")
    return CORPUS


def default_signals():
    """Give a child the default SIGINT and SIGHUP actions (a `preexec_fn`).

    edge-etc keeps a signal ignored when its parent ignores it. pytest run as a background
    job of a non-interactive shell ignores SIGINT, and under nohup it ignores SIGHUP. Tests
    that send the command either signal start it with this.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def assert_same_driver_lines(fast, slow):
    """Assert that two driver outputs, header line aside, are equal line for line, naming
    the file of the first difference."""
    assert len(fast) == len(slow)
    current = None
    for fast_line, slow_line in zip(fast[1:], slow[1:]):
        if slow_line.startswith("# file "):
            current = slow_line
        assert fast_line == slow_line, f"first difference in {current}"


def run_cli(*args, timeout=300, **kwargs):
    """Run `python -m edge_etc ARGS`; return the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", "edge_etc", *args], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def flows_in(records):
    """Return the number of distinct flows in JSON-line flow records (str or bytes). With
    more than one window per decision, a flow has a second record when a window changes its
    label."""
    keys = set()
    for line in records.splitlines():
        r = json.loads(line)
        keys.add((r["proto"], r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]))
    return len(keys)


def flow_name(flow):
    proto = "tcp" if flow.proto == 6 else "udp"
    return (f"{proto} {format_ip(flow.client)}:{flow.client_port} <-> "
            f"{format_ip(flow.server)}:{flow.server_port}")


class Scan:
    """What the shared pipeline makes of a capture, without a model."""

    def __init__(self, path, settings=None, max_flows=1 << 30, idle_timeout_s=120.0,
                 max_windows=1 << 30):
        self.settings = settings or Preprocessing()
        self.packets = collections.Counter()
        self.windows = collections.defaultdict(list)
        self.ended = []
        self.skipped = collections.Counter()
        self.table = FlowTable(self.settings, self._on_window, self._on_end, max_flows=max_flows,
                               idle_timeout_s=idle_timeout_s, max_windows=max_windows)
        self.decoder = Decoder()
        with CaptureFile(path) as capture:
            for ts, linktype, frame, wire_len in capture:
                try:
                    pkt = self.decoder.decode(ts, linktype, frame, wire_len)
                except PacketError as e:
                    self.skipped[e.reason] += 1
                    continue
                if pkt is not None:
                    self.table.add(pkt)
            self.stopped = capture.stopped
        self.table.flush()

    def _on_window(self, flow, ts, window):
        self.windows[flow_name(flow)].append(window)

    def _on_end(self, flow, reason):
        self.packets[flow_name(flow)] += flow.packets
        self.ended.append((flow_name(flow), reason))
