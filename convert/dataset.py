"""Labelled windows from labelled captures, built with the runner's own code.

Each capture is read with `edge_etc.capfile.CaptureFile`, decoded and windowed by the
compiled flow engine (`edge_etc.engine`) or, where the extension is not built,
`edge_etc.decode.Decoder` and `edge_etc.flows.FlowTable`, exactly as `edge-etc run` does. So
a window in the training set is byte for byte what the runner feeds the model; both ways
give the same windows (tests/test_engine.py). Flow labels come from the corpus's
`FLOWS.tsv` (one row per bidirectional 5-tuple); flows labelled `background` or `unknown`,
or not listed, are kept apart as unlabelled.

Windows are taken from every position of a flow, not just its start, so the model learns
to classify a flow the runner joins mid-stream. A flow with more than
`max_windows_per_flow` windows contributes its first `FIRST_WINDOWS_KEPT` windows (the
runner decides on a flow's first windows) and a random sample of the rest.
"""

import csv
import dataclasses
import ipaddress
import logging
import os

import numpy as np

from edge_etc import engine
from edge_etc.capfile import CaptureFile
from edge_etc.decode import Decoder
from edge_etc.errors import CaptureFileError, ConfigError, PacketError
from edge_etc.flows import FlowTable

log = logging.getLogger(__name__)

CLASSES = ("Chat", "Email", "FileTransfer", "Game", "P2P", "RemoteAccess", "Streaming", "VPN",
           "VoIP", "Web")
UNLABELLED = ("background", "unknown")
FIRST_WINDOWS_KEPT = 8
HELD_OUT_SHARE = 0.2  # captures of each class held out for testing


def default_corpus():
    """Return the corpus folder: $EDGE_ETC_CORPUS, else ../shared/corpus from the working
    directory or from the repository."""
    env = os.environ.get("EDGE_ETC_CORPUS")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (os.getcwd(), here):
        path = os.path.join(base, "..", "shared", "corpus")
        if os.path.isfile(os.path.join(path, "FLOWS.tsv")):
            return os.path.normpath(path)
    return os.path.normpath(os.path.join(os.getcwd(), "..", "shared", "corpus"))


@dataclasses.dataclass
class Capture:
    path: str  # relative to the corpus folder
    label: str
    application: str = ""  # MANIFEST.tsv's application name, where it gives one


def read_manifest(corpus):
    """Return the corpus's captures in MANIFEST.tsv order."""
    manifest = os.path.join(corpus, "MANIFEST.tsv")
    hint = "give --corpus DIR or set EDGE_ETC_CORPUS"
    if not os.path.isdir(corpus):
        raise ConfigError(f"{corpus}: corpus folder not found; {hint}")
    if not os.path.isfile(manifest):
        raise ConfigError(f"{corpus}: not a corpus folder (MANIFEST.tsv not found); {hint}")
    with open(manifest, newline="") as f:
        return [Capture(row["file"], row["class"], row.get("application") or "")
                for row in csv.DictReader(f, delimiter="\t")]


def _endpoint(addr, port):
    return (ipaddress.ip_address(addr).packed, int(port))


def read_flow_labels(corpus):
    """Return {capture path: {(proto, endpoint, endpoint) sorted: class}} from FLOWS.tsv."""
    labels = {}
    with open(os.path.join(corpus, "FLOWS.tsv"), newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            proto = {"tcp": 6, "udp": 17}.get(row["l4"])
            if proto is None:
                continue
            a = _endpoint(row["addr_a"], row["port_a"])
            b = _endpoint(row["addr_b"], row["port_b"])
            key = (proto,) + (a + b if a <= b else b + a)
            labels.setdefault(row["file"], {}).setdefault(key, row["class"])
    return labels


class Windows:
    """Windows of a set of captures, with their flow, capture and position.

    Attributes:
        x: uint8 array (n, window_packets, vector_bytes).
        y: class index per window, -1 for unlabelled flows.
        flow: global flow number per window.
        capture: capture index (into `captures`) per window.
        position: the window's number inside its flow (0 for the first window).
        flow_label: class index per flow number, -1 when unlabelled.
        flow_capture: capture index per flow number.
        flow_unlabelled: the FLOWS.tsv class of unlabelled flows ("background", "unknown"
            or "unlisted"), per flow number.
        flow_server_port: {flow number: server port}.
    """

    def __init__(self, settings, captures, classes=CLASSES):
        self.settings = settings
        self.captures = captures
        self.classes = list(classes)
        self.x = np.zeros((0, settings.window_packets, settings.vector_bytes), np.uint8)
        self.y = self.flow = self.capture = self.position = np.zeros(0, np.int64)
        self.flow_label = self.flow_capture = np.zeros(0, np.int64)
        self.flow_unlabelled = []
        self.flow_server_port = {}
        self.too_short = 0

    def select(self, capture_indices):
        """Return the mask of windows from the given captures."""
        return np.isin(self.capture, np.asarray(list(capture_indices), dtype=np.int64))


def capture_windows(path, settings, use_engine=None):
    """Return ([(flow, [window, ...]), ...], flows too short) for one capture file.

    Reads, decodes and windows with the runner's code: the compiled flow engine where it
    is available (`use_engine` None) or requested, else the Python `FlowTable`. The table is
    unbounded and keeps every window, in packet order per flow. A forward time stamp jump,
    which the runner logs at INFO, is logged at DEBUG here: over hundreds of captures it is
    noise.
    """
    if use_engine is None:
        use_engine = engine.available()
    if use_engine:
        collector = engine.WindowCollector(settings)
        with CaptureFile(path) as capture:
            collector.feed_capture(capture)
        collector.finish()
        per_flow = {}
        for flow, window in collector.windows:
            per_flow.setdefault(flow.serial, (flow, []))[1].append(window)
        return list(per_flow.values()), collector.engine.too_short

    per_flow = {}

    def on_window(flow, ts, window):
        per_flow.setdefault(flow.serial, (flow, []))[1].append(window)

    ended = []
    table = FlowTable(settings, on_window, lambda flow, reason: ended.append(flow),
                      max_flows=1 << 30, idle_timeout_s=120.0, max_windows=1 << 30,
                      jump_log_level=logging.DEBUG)
    decoder = Decoder()
    with CaptureFile(path) as capture:
        for ts, linktype, frame, wire_len in capture:
            try:
                pkt = decoder.decode(ts, linktype, frame, wire_len)
            except PacketError:
                continue
            if pkt is not None:
                table.add(pkt)
    table.flush()
    return list(per_flow.values()), sum(1 for f in ended if f.windows == 0)


def build_windows(corpus, settings, captures=None, max_windows_per_flow=64, seed=0,
                  classes=CLASSES):
    """Read captures and return their `Windows`.

    Args:
        corpus: the corpus folder (MANIFEST.tsv, FLOWS.tsv and the captures).
        settings: the `Preprocessing` to build windows with.
        captures: `Capture`s to read; all of the manifest when None.
        max_windows_per_flow: cap per flow; longer flows are sampled evenly.
        seed: seed of the sampling.
    """
    if captures is None:
        captures = read_manifest(corpus)
    flow_labels = read_flow_labels(corpus)
    class_index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    out = Windows(settings, captures, classes)
    xs, ys, flows, caps, positions = [], [], [], [], []
    flow_label, flow_capture, flow_unlabelled = [], [], []

    for ci, cap in enumerate(captures):
        path = os.path.join(corpus, cap.path)
        try:
            per_flow, too_short = capture_windows(path, settings)
        except CaptureFileError as e:
            log.warning("skipping %s", e)
            continue
        out.too_short += too_short
        labels_here = flow_labels.get(cap.path, {})
        for flow, windows in per_flow:
            a = (flow.client, flow.client_port)
            b = (flow.server, flow.server_port)
            key = (flow.proto,) + (a + b if a <= b else b + a)
            name = labels_here.get(key, "unlisted")
            label = class_index.get(name, -1)
            n = len(windows)
            if n > max_windows_per_flow:
                # The first windows are what the runner decides on: always keep them.
                head = min(FIRST_WINDOWS_KEPT, max_windows_per_flow)
                rest = rng.choice(np.arange(head, n), max_windows_per_flow - head, replace=False)
                keep = np.concatenate([np.arange(head), np.sort(rest)])
            else:
                keep = np.arange(n)
            fid = len(flow_label)
            out.flow_server_port[fid] = flow.server_port
            flow_label.append(label)
            flow_capture.append(ci)
            flow_unlabelled.append(None if label >= 0 else name)
            for i in keep:
                xs.append(windows[i])
                ys.append(label)
                flows.append(fid)
                caps.append(ci)
                positions.append(int(i))

    w, v = settings.window_packets, settings.vector_bytes
    if xs:
        out.x = np.frombuffer(b"".join(xs), dtype=np.uint8).reshape(-1, w, v).copy()
    out.y = np.asarray(ys, np.int64)
    out.flow = np.asarray(flows, np.int64)
    out.capture = np.asarray(caps, np.int64)
    out.position = np.asarray(positions, np.int64)
    out.flow_label = np.asarray(flow_label, np.int64)
    out.flow_capture = np.asarray(flow_capture, np.int64)
    out.flow_unlabelled = flow_unlabelled
    log.info("%d windows from %d flows in %d captures (%d labelled windows; %d flows too short)",
             len(out.y), len(flow_label), len(captures), int((out.y >= 0).sum()), out.too_short)
    return out


def spread_captures(captures, n):
    """Return `n` captures taken round-robin over the classes (for quick runs)."""
    by_class = {}
    for c in captures:
        by_class.setdefault(c.label, []).append(c)
    picked = []
    while len(picked) < n and any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label] and len(picked) < n:
                picked.append(by_class[label].pop(0))
    return picked


def split_captures(captures, test_share=HELD_OUT_SHARE, seed=0):
    """Split capture indices into (train, test), per class, so no capture is on both sides.

    A class holds out `round(n * test_share)` of its n captures, but at least one when it
    has two or more, so every class with two captures is tested. With few captures per
    class the held-out share is larger than `test_share`: ten classes of two captures hold
    out 10 of 20 (50%). A class with one capture holds out none.
    """
    rng = np.random.default_rng(seed)
    by_class = {}
    for i, cap in enumerate(captures):
        by_class.setdefault(cap.label, []).append(i)
    train, test = [], []
    for label in sorted(by_class):
        idx = list(by_class[label])
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_share))
        if len(idx) >= 2:
            n_test = max(1, n_test)
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)
