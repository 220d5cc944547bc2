"""The classification pipeline: records in, one JSON line per classified flow out.

`Pipeline` is the Python reference. `make_pipeline` returns the compiled flow engine's
`edge_etc.engine.EnginePipeline` instead where the extension is built, with the same
interface and output.

Decision rule: a flow is classified from its first complete window. A window's class
probabilities are the model's output with its server port prior applied, where the model
has one (`Classifier.predict`, edge_etc.port_prior). With `max_windows`
above 1 (the default is 1), its next windows refine the decision: the class probabilities of every window seen
so far are averaged, and the label is the class with the highest mean probability. A record
is written when the flow is first classified, and again only when a later window changes
its label. When the mean probability of the label is under the model's unknown threshold
the label is "unknown".

Records are JSON objects, one per line:
    ts          time stamp (seconds) of the packet that completed the deciding window
    proto       "tcp" or "udp"
    src_ip, src_port, dst_ip, dst_port
                the client first (see edge_etc.flows for how the client is found)
    label, confidence
                the decision and its mean probability
    packets     packets of the flow seen when the deciding window was complete
    windows     windows combined into the decision
"""

import json
import logging
import socket
import struct

from .decode import Decoder
from .errors import PacketError
from .flows import FlowTable
from .config import DEFAULTS
from .model import UNKNOWN_LABEL

log = logging.getLogger(__name__)

_PROTO = {6: "tcp", 17: "udp"}


def format_ip(addr):
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class Stats:
    """Counters of one run, reported in the summary."""

    def __init__(self):
        self.records = 0  # capture records read, those the BPF filter rejects included
        self.filtered = 0  # capture file records rejected by the BPF filter
        self.packets = 0  # TCP/UDP packets accounted to flows
        self.skipped = {}  # reason -> records skipped
        self.malformed = {}  # reason -> records skipped as malformed
        self.windows = 0
        self.classified = 0
        self.relabelled = 0
        self.too_short = 0
        self.capture_drops = None  # (dropped by the kernel, dropped by the interface)
        self.stopped = None  # why reading stopped early, if it did

    def skip(self, err):
        table = self.malformed if err.malformed else self.skipped
        table[err.reason] = table.get(err.reason, 0) + 1


class DecisionState:
    """Codec of a flow's classification state, packed into one bytes object (`Flow.decision`).

    The state is the number of windows combined, the label code (the class index, or the
    number of classes for "unknown") and the sum of the class probabilities over those
    windows. Each sum is kept in the narrowest of float16,
    float32 and float64 that gives every sum of the flow back exactly, so the means and
    labels are those of float64 sums. With a softmax output quantized to int8 (scale
    1/256), every probability is a multiple of 1/256 and the sums of up to 8 windows fit
    float16: 26 bytes for 10 classes, where float64 needs 86.
    """

    def __init__(self, classes):
        self._classes = classes
        self._head = struct.Struct("<IH")  # windows combined, label code
        self._narrow = [struct.Struct(f"<{classes}e"), struct.Struct(f"<{classes}f")]
        self._wide = struct.Struct(f"<{classes}d")
        self._by_width = {layout.size // classes: layout for layout in (*self._narrow, self._wide)}

    def pack(self, results, code, sums):
        """Return the state as bytes."""
        sums = tuple(sums)
        head = self._head.pack(results, code)
        for layout in self._narrow:
            try:
                packed = layout.pack(*sums)
            except OverflowError:  # a sum beyond float16's range
                continue
            if layout.unpack(packed) == sums:
                return head + packed
        return head + self._wide.pack(*sums)

    def unpack(self, state):
        """Return (windows combined, label code, sums)."""
        head = self._head
        results, code = head.unpack_from(state)
        layout = self._by_width[(len(state) - head.size) // self._classes]
        return results, code, layout.unpack_from(state, head.size)


class Pipeline:
    """Decoder, flow table and classifier, fed one record at a time.

    Args:
        classifier: an `edge_etc.infer.Classifier`.
        write: called with each output record (a dict).
        max_flows, idle_timeout_s, max_windows: see `edge_etc.flows.FlowTable`.
        batch_size: windows collected before the interpreter runs.
    """

    def __init__(self, classifier, write, max_flows=65536, idle_timeout_s=120.0,
                 max_windows=DEFAULTS.flows.max_windows, batch_size=64):
        self.classifier = classifier
        self.labels = classifier.model.labels
        self.threshold = classifier.model.unknown_threshold
        self.write = write
        self.stats = Stats()
        self.decoder = Decoder()
        self.table = FlowTable(classifier.model.preprocessing, self._on_window, self._on_end,
                               max_flows=max_flows, idle_timeout_s=idle_timeout_s,
                               max_windows=max_windows, serials=False)
        self.batch_size = batch_size
        self.pending = []  # (flow, ts, packets, window)
        self._decisions = DecisionState(len(self.labels))
        # Label codes in `Flow.decision`: a class index, or the last one for "unknown".
        self._label_names = list(self.labels) + [UNKNOWN_LABEL]
        self._bug_logged = False

    def process(self, ts, linktype, frame, wire_len):
        """Decode one record and account it. A bad packet is counted, never raised: any
        exception from decoding or the flow table is caught below."""
        stats = self.stats
        stats.records += 1
        try:
            pkt = self.decoder.decode(ts, linktype, frame, wire_len)
            if pkt is None:
                return  # a fragment waiting for the rest of its datagram
            stats.packets += 1
            self.table.add(pkt)
        except PacketError as e:
            stats.skip(e)
        except Exception as e:  # a decoder bug must not end a long run
            stats.skip(PacketError(f"internal error ({type(e).__name__})", malformed=True))
            if not self._bug_logged:
                self._bug_logged = True
                log.exception("internal error on record %d; the packet was skipped", stats.records)
        # Outside the guard: an interpreter or output failure is not a packet's fault.
        if len(self.pending) >= self.batch_size:
            self.infer()

    def _on_window(self, flow, ts, window):
        self.stats.windows += 1
        self.pending.append((flow, ts, flow.packets, window))

    def _on_end(self, flow, reason):
        if flow.windows == 0:
            self.stats.too_short += 1

    def infer(self):
        """Run the pending windows through the model and write the decisions."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        # Python floats from the float32 probabilities are exact, and Python's float
        # arithmetic is numpy's float64 arithmetic, so sums and means match a float64 array.
        rows = self.classifier.predict([p[3] for p in pending]).tolist()
        max_windows = self.table.max_windows
        decisions = self._decisions
        names = self._label_names
        unknown_code = len(names) - 1
        classes = range(unknown_code)
        for (flow, ts, packets, _), sums in zip(pending, rows):
            if flow.decision is None:
                results, previous = 1, None
            else:
                results, code, before = decisions.unpack(flow.decision)
                results += 1
                previous = names[code]
                sums = [total + p for total, p in zip(before, sums)]
            mean = [total / results for total in sums]
            best = max(classes, key=mean.__getitem__)  # the first of equal maxima, as np.argmax
            confidence = mean[best]
            code = best if confidence >= self.threshold else unknown_code
            # After the flow's last window nothing is combined any more: free the state.
            flow.decision = decisions.pack(results, code, sums) if results < max_windows else None
            label = names[code]
            if label == previous:
                continue
            if previous is None:
                self.stats.classified += 1
            else:
                self.stats.relabelled += 1
            self.write({
                "ts": round(ts, 6),
                "proto": _PROTO[flow.proto],
                "src_ip": format_ip(flow.client),
                "src_port": flow.client_port,
                "dst_ip": format_ip(flow.server),
                "dst_port": flow.server_port,
                "label": label,
                "confidence": round(confidence, 4),
                "packets": packets,
                "windows": results,
            })

    def finish(self):
        """Classify what is pending and end every flow (end of a capture or a stop)."""
        self.infer()
        self.table.flush()

    def summary(self):
        """Return the run's counters as one dict."""
        return summary_of(self.stats, self.stats, self.table, self.decoder)

    def log_summary(self):
        """Log the summary: one key=value line, then one line per skip reason."""
        return log_summary_lines(self.summary(), self.stats, self.decoder,
                                 self.table.time_jumps_back, self.table.time_jumps_forward)

    def advance(self, now):
        """Move the flow table's clock to `now` (a live link's wall clock)."""
        self.table.advance(now)


def summary_of(stats, counters, table, decoder):
    """Return a run's counters as one dict.

    `counters` has the counts of packets, windows and too_short (a `Stats` or an engine),
    `table` those of flows_created, evictions and expirations and the open flows as its
    length (a `FlowTable` or an engine). Both pipelines count classified and relabelled
    flows in `stats`, as they write the records.
    """
    out = {
        "records": stats.records,
        "filtered": stats.filtered,
        "packets": counters.packets,
        "flows": table.flows_created,
        "open_flows": len(table),
        "windows": counters.windows,
        "classified": stats.classified,
        "relabelled": stats.relabelled,
        "too_short": counters.too_short,
        "skipped": sum(stats.skipped.values()),
        "malformed": sum(stats.malformed.values()),
        "evictions": table.evictions,
        "expired": table.expirations,
        "fragments_dropped": sum(decoder.reassembler.dropped.values()),
    }
    if stats.capture_drops is not None:
        out["capture_drops"], out["interface_drops"] = stats.capture_drops
    return out


def log_summary_lines(summary, stats, decoder, time_jumps_back, time_jumps_forward):
    """Log a pipeline's summary: one key=value line, then one line per skip reason."""
    log.info("summary: %s", " ".join(f"{k}={v}" for k, v in summary.items()))
    for label, table in (("skipped", stats.skipped), ("malformed", stats.malformed),
                         ("fragments dropped", decoder.reassembler.dropped)):
        for reason, count in sorted(table.items(), key=lambda kv: -kv[1]):
            log.info("  %s: %s: %d", label, reason, count)
    if time_jumps_back or time_jumps_forward:
        log.info("  packets stamped more than 1 s before the clock: %d; forward jumps over "
                 "10 idle timeouts: %d", time_jumps_back, time_jumps_forward)
    if stats.stopped:
        log.info("  reading stopped early: %s", stats.stopped)
    return summary


def make_pipeline(classifier, write, **options):
    """Return the pipeline of a run: `EnginePipeline` (the compiled flow engine) where the
    extension is built and enabled, else `Pipeline`. `options` are Pipeline's."""
    from . import engine

    if engine.available():
        return engine.EnginePipeline(classifier, write, **options)
    return Pipeline(classifier, write, **options)


class JsonLines:
    """Writes records as JSON lines to stdout or a file; `reopen` supports log rotation."""

    def __init__(self, path=None, stream=None):
        self.path = path
        self._stream = stream
        self.f = stream if path is None else open(path, "a", encoding="utf-8")
        self.lines = 0

    def __call__(self, record):
        self.f.write(json.dumps(record, separators=(", ", ": ")) + "\n")
        self.lines += 1

    def write_line(self, line):
        """Write one record already formatted as a JSON line, newline included.

        One write call per record, as `__call__` makes, so a failing output (a full disk)
        fails at the same record whichever path formatted it.
        """
        self.f.write(line)
        self.lines += 1

    def text_writer(self):
        """Return the callable that takes one record as a JSON line (see `write_line`)."""
        return self.write_line

    def flush(self):
        self.f.flush()

    def reopen(self):
        """Open the output path anew (after log rotation moved the file), then close the old
        file, so a failed open leaves the old file in use."""
        if self.path is None:
            return
        new = open(self.path, "a", encoding="utf-8")
        old, self.f = self.f, new
        old.close()
        log.info("reopened output file %s", self.path)

    def close(self):
        self.flush()
        if self.path is not None:
            self.f.close()


def run_file(pipeline, capture, control, keep=None):
    """Feed every record of an open `CaptureFile` through `pipeline`.

    `control.stop` is checked every 4,096 records so a signal ends a long file quickly, and
    `control.tick()` runs there too (signal requests such as a summary or a reopen).
    `keep(linktype, frame)`, when given, is a BPF filter: rejected records are counted in
    `pipeline.stats.records` and `pipeline.stats.filtered` and not decoded. A pipeline with
    a `read_capture` method (`edge_etc.engine.EnginePipeline`) reads the file itself.
    """
    read_capture = getattr(pipeline, "read_capture", None)
    if read_capture is not None:
        read_capture(capture, control, keep)
        return
    process = pipeline.process
    stats = pipeline.stats
    count = 0
    log.info("reading %s", capture.path)
    for ts, linktype, frame, wire_len in capture:
        if keep is None or keep(linktype, frame):
            process(ts, linktype, frame, wire_len)
        else:
            stats.records += 1
            stats.filtered += 1
        count += 1
        if count & 0xFFF == 0:
            control.tick()
            if control.stop:
                break
    stats.stopped = capture.stopped
