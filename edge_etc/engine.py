"""The runner's pipeline on the compiled flow engine (`edge_etc._fastpath.Engine`).

`EnginePipeline` has the interface and the output of `edge_etc.runner.Pipeline`, which stays
the reference and runs where the extension is not built or EDGE_ETC_PURE_PYTHON is set.
The engine (edge_etc/_engine.c) decodes the common frame layouts, keeps the flow table,
builds the windows and applies the decision rule in C. Python runs only per batch of
windows, per control tick and for the records the fast decoder hands back:

- A classic pcap file without a BPF filter is fed to the engine buffer by buffer
  (`Engine.feed`). It returns to Python when the pending windows fill a batch, when a
  record needs the Python decoder (fragments, tunnels, extension headers, anything
  malformed: the Python decoder makes the packet and `Engine.add_packet` puts it into the
  same table), every 4,096 records for `Control.tick`, and when the buffer needs a refill.
- pcapng files, files read with `--filter` and live captures go record by record
  (`Engine.process`, one C call per record).
- The pending windows are rows of one buffer in the engine, which the classifier reads as
  a 2-D uint8 array. The engine copies each window's flow key, time stamp and packet count
  when the window completes, so a flow evicted before inference changes nothing.
- Records are formatted in C: as JSON lines when the output is JSON lines alone, else as
  dicts for `write` (anonymizing, syslog and Prometheus need the fields). Python writes
  them one by one and counts them, as the Python pipeline does.
"""

import collections
import json
import logging
import os

import numpy as np

from . import fastpath
from .capfile import MAX_RECORD_BYTES
from .decode import Decoder
from .errors import PacketError
from .model import UNKNOWN_LABEL
from .runner import Stats, log_summary_lines, summary_of

log = logging.getLogger(__name__)
# Time stamp jumps are logged under the name the Python flow table uses.
_flows_log = logging.getLogger("edge_etc.flows")

TICK_RECORDS = 4096  # records between two control ticks, as in runner.run_file

# Engine.feed results (edge_etc/_engine.c).
FEED_NEED_DATA, FEED_BATCH_FULL, FEED_HANDBACK, FEED_LIMIT, FEED_ERROR = range(5)


def available():
    """Return True when the compiled engine can run (the extension is built and enabled)."""
    return fastpath.native is not None and hasattr(fastpath.native, "Engine")


def jump_logger(level):
    """Return the engine's callback for forward time stamp jumps: the first is logged at
    `level`, the later ones at DEBUG, as the Python flow table does."""

    def log_jump(seconds, count):
        _flows_log.log(level if count == 1 else logging.DEBUG,
                       "time stamp jumped forward by %.0f s; expiring idle flows", seconds)

    return log_jump


def new_engine(settings, max_flows, idle_timeout_s, max_windows, capacity, labels=(),
               threshold=0.0, decisions=True, serials=False, jump_log_level=logging.INFO):
    """Create an `Engine` for the preprocessing `settings`.

    `labels` are the model's class names; without them the engine only collects windows
    (`take_windows`) and cannot decide. `decisions` keeps the probability sums of flows
    with `max_windows` above 1 for `decide`. `serials` numbers the flows in creation order
    for `take_windows`, at 8 more bytes per flow.
    """
    names = tuple(labels) + (UNKNOWN_LABEL,) if labels else ()
    return fastpath.native.Engine(
        settings, max_flows, float(idle_timeout_s), max_windows, capacity, names,
        tuple(json.dumps(name) for name in names), float(threshold), decisions, serials,
        int.from_bytes(os.urandom(8), "little"), jump_logger(jump_log_level))


class EngineFeeder:
    """Feeds records to an engine, with the Python decoder for the records it hands back.

    The counters of records, filtered records and skip reasons are in `stats`, as in
    `Pipeline`. Subclasses define `infer`, which must empty the pending windows; it runs
    whenever they fill the engine's capacity.
    """

    def __init__(self, engine):
        self.engine = engine
        self.batch_size = engine.capacity
        self.stats = Stats()
        self.decoder = Decoder()
        self._bug_logged = False

    def infer(self):
        raise NotImplementedError

    def finish(self):
        """Empty the pending windows and end every flow (end of a capture or a stop)."""
        self.infer()
        self.engine.flush()

    def advance(self, now):
        """Move the flow table's clock to `now` (a live link's wall clock)."""
        self.engine.advance(now)

    def process(self, ts, linktype, frame, wire_len):
        """Decode one record and account it, as `Pipeline.process` does."""
        self.stats.records += 1
        try:
            if not self.engine.process(ts, linktype, frame, wire_len):
                self._add_decoded(ts, linktype, frame, wire_len)
        except PacketError as e:
            self.stats.skip(e)
        except Exception as e:  # a decoder or engine bug must not end a long run
            self._count_internal_error(e)
        if self.engine.pending >= self.batch_size:
            self.infer()

    def _add_decoded(self, ts, linktype, frame, wire_len):
        """Decode a record with the Python decoder and add its packet to the engine."""
        pkt = self.decoder.decode(ts, linktype, frame, wire_len)
        if pkt is not None:  # None: a fragment waiting for the rest of its datagram
            self.engine.add_packet(pkt)

    def _count_internal_error(self, error):
        self.stats.skip(PacketError(f"internal error ({type(error).__name__})", malformed=True))
        if not self._bug_logged:
            self._bug_logged = True
            log.error("internal error on record %d; the packet was skipped",
                      self.stats.records, exc_info=error)

    def _handle_feed_detail(self, status, detail):
        """Finish the record that made `Engine.feed` return early."""
        if status == FEED_HANDBACK:
            try:
                self._add_decoded(*detail)
            except PacketError as e:
                self.stats.skip(e)
            except Exception as e:
                self._count_internal_error(e)
        elif status == FEED_ERROR:
            self._count_internal_error(detail)

    def feed_capture(self, capture, control=None, keep=None):
        """Feed every record of an open `CaptureFile` through the engine (see
        `edge_etc.runner.run_file` for the contract of `control` and `keep`)."""
        stats = self.stats
        count = 0

        def tick():
            """Run the control tick; return True to stop reading."""
            if control is None:
                return False
            control.tick()
            return control.stop

        def take(buf, pos):
            # Consumes the complete records of `buf` from `pos`; returns (offset of the first
            # record left to the reader, records consumed, stop reading).
            nonlocal count
            consumed = 0
            engine = self.engine
            while True:
                limit = TICK_RECORDS - (count % TICK_RECORDS)
                pos, records, status, detail = engine.feed(buf, pos, little_endian, tick_s,
                                                           linktype, MAX_RECORD_BYTES, limit)
                stats.records += records
                count += records
                consumed += records
                if status in (FEED_HANDBACK, FEED_ERROR):
                    self._handle_feed_detail(status, detail)
                if engine.pending >= self.batch_size:
                    self.infer()
                if records and count % TICK_RECORDS == 0 and tick():
                    return pos, consumed, True
                if status == FEED_NEED_DATA:
                    return pos, consumed, False

        bulk = keep is None and capture.format == "pcap"
        if bulk:
            little_endian, tick_s, linktype = capture.pcap_record_format()
        records = capture.iter_records(take if bulk else None)
        for ts, linktype_of_record, frame, wire_len in records:
            if keep is None or keep(linktype_of_record, frame):
                self.process(ts, linktype_of_record, frame, wire_len)
            else:
                stats.records += 1
                stats.filtered += 1
            count += 1
            if count % TICK_RECORDS == 0 and tick():
                break
        stats.stopped = capture.stopped


class EnginePipeline(EngineFeeder):
    """Decoder, compiled flow engine and classifier, with the interface of `Pipeline`.

    Args:
        classifier: an `edge_etc.infer.Classifier`.
        write: called with each output record (a dict). When it has a `text_writer()`
            method that returns a callable, that callable gets each record as one JSON
            line instead (see `edge_etc.outputs.Outputs.text_writer`).
        max_flows, idle_timeout_s, max_windows: see `edge_etc.flows.FlowTable`.
        batch_size: windows collected before the interpreter runs.
    """

    def __init__(self, classifier, write, max_flows=65536, idle_timeout_s=120.0,
                 max_windows=1, batch_size=64):
        super().__init__(new_engine(classifier.model.preprocessing, max_flows, idle_timeout_s,
                                    max_windows, batch_size, classifier.model.labels,
                                    classifier.model.unknown_threshold))
        self.classifier = classifier
        self.labels = classifier.model.labels
        self.write = write
        self._windows = np.frombuffer(self.engine, dtype=np.uint8).reshape(
            batch_size, self.engine.window_bytes)
        text_writer = getattr(write, "text_writer", None)
        self._write_line = text_writer() if text_writer is not None else None

    def read_capture(self, capture, control, keep=None):
        """Log and feed every record of an open `CaptureFile` (`runner.run_file`)."""
        log.info("reading %s", capture.path)
        self.feed_capture(capture, control, keep)

    def infer(self):
        """Run the pending windows through the model and write the decisions."""
        engine = self.engine
        n = engine.pending
        if not n:
            return
        probabilities = self.classifier.predict(self._windows[:n])
        as_text = self._write_line is not None
        records, first = engine.decide(probabilities, as_text)
        write = self._write_line if as_text else self.write
        stats = self.stats
        # Each record is counted just before it is written, as Pipeline.infer does, so an
        # output that fails partway (a full disk) leaves the same counters.
        for record, is_first in zip(records, first):
            if is_first:
                stats.classified += 1
            else:
                stats.relabelled += 1
            write(record)

    def summary(self):
        """Return the run's counters as one dict, with the keys of `Pipeline.summary`."""
        return summary_of(self.stats, self.engine, self.engine, self.decoder)

    def log_summary(self):
        """Log the summary as `Pipeline.log_summary` does."""
        return log_summary_lines(self.summary(), self.stats, self.decoder,
                                 self.engine.time_jumps_back, self.engine.time_jumps_forward)


FlowInfo = collections.namedtuple("FlowInfo", "serial proto client client_port server server_port")
FlowInfo.__doc__ = """A flow of `WindowCollector`: its number in creation order from 1, the IP
protocol, and the client's and server's addresses (bytes) and ports, client first as in
`edge_etc.flows`."""


class WindowCollector(EngineFeeder):
    """Collects every window of a capture with its flow, as the dataset builder needs them.

    Args:
        settings: the `Preprocessing` to build windows with.
        max_flows, idle_timeout_s, max_windows: see `edge_etc.flows.FlowTable`.
        capacity: windows kept in the engine between two collections.
        jump_log_level: level of the log message on the first forward time stamp jump.

    `windows` lists (FlowInfo, window bytes) in the order the windows were completed.
    """

    def __init__(self, settings, max_flows=1 << 30, idle_timeout_s=120.0, max_windows=1 << 30,
                 capacity=1024, jump_log_level=logging.DEBUG):
        super().__init__(new_engine(settings, max_flows, idle_timeout_s, max_windows, capacity,
                                    decisions=False, serials=True,
                                    jump_log_level=jump_log_level))
        self.windows = []

    def infer(self):
        data, flows = self.engine.take_windows()
        size = self.engine.window_bytes
        for i, flow in enumerate(flows):
            self.windows.append((FlowInfo(*flow), data[i * size:(i + 1) * size]))
