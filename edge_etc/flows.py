"""Bidirectional flow table and windowing, shared by the runner and the dataset builder.

A flow is the traffic of one TCP or UDP 5-tuple in both directions. The table is bounded:
at most `max_flows` flows, least-recently-used first out, and flows idle for
`idle_timeout_s` of capture time are expired. Per flow it keeps only what the next window
needs: the vectors of the last `window_packets - 1` usable packets, nothing before the
flow carries a usable packet, and nothing once it has produced `max_windows` windows.

Clock: the table's time `now` is the largest packet time stamp seen so far. A time stamp
that jumps backwards therefore neither expires nor corrupts anything, and the packet still
counts in its flow. A jump forward expires the flows it makes idle, once.

Client and server: the client is the sender of a TCP SYN (or the receiver of a SYN+ACK)
when the handshake is seen; otherwise the endpoint with the higher port number, because
servers listen on the lower port far more often than not, and a rule that ignores packet
order gives the same result wherever in a flow the capture started. With equal ports the
sender of the flow's first packet is the client. The client is reported
as `src`. The server port is the one the vectors may keep.

A TCP SYN without ACK on a 5-tuple whose flow has seen FIN or RST starts a new flow.
"""

import collections
import logging

from .decode import ACK, FIN, RST, SYN
from .preprocess import port_block_of, vectorize

log = logging.getLogger(__name__)

# A forward time stamp jump larger than this many idle timeouts is logged as a jump.
_JUMP_LOG_FACTOR = 10


class Flow:
    """State of one flow.

    `recent` contains the vectors for the next window. It is None before the first usable
    packet and after the last window. `prob_sum`, `label` and `confidence` belong to the
    runner, which combines the model outputs of the flow's windows.
    """

    __slots__ = ("proto", "client", "client_port", "server", "server_port", "first_ts",
                 "last_seen", "last_ts", "packets", "recent", "windows", "results",
                 "prob_sum", "label", "confidence", "closing", "serial")

    def __init__(self, pkt, serial):
        self.proto = pkt.proto
        self.first_ts = pkt.ts
        self.last_seen = pkt.ts
        self.last_ts = pkt.ts  # time stamp of the flow's latest packet, for the gap
        self.packets = 0
        self.recent = None
        self.windows = 0
        self.results = 0
        self.prob_sum = None
        self.label = None
        self.confidence = 0.0
        self.closing = False
        self.serial = serial
        flags = pkt.tcp_flags
        if pkt.proto == 6 and flags & SYN:
            if flags & ACK:  # SYN+ACK: the sender is the server
                self._orient(pkt.dst, pkt.dport, pkt.src, pkt.sport)
            else:
                self._orient(pkt.src, pkt.sport, pkt.dst, pkt.dport)
        elif pkt.sport >= pkt.dport:  # equal ports (NTP, mDNS): the first sender is the client
            self._orient(pkt.src, pkt.sport, pkt.dst, pkt.dport)
        else:
            self._orient(pkt.dst, pkt.dport, pkt.src, pkt.sport)

    def _orient(self, client, client_port, server, server_port):
        self.client, self.client_port = client, client_port
        self.server, self.server_port = server, server_port


def flow_key(pkt):
    """Return the canonical bidirectional key of `pkt`: the lower endpoint first."""
    if (pkt.src, pkt.sport) <= (pkt.dst, pkt.dport):
        return (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
    return (pkt.proto, pkt.dst, pkt.dport, pkt.src, pkt.sport)


class FlowTable:
    """The bounded flow table.

    Args:
        settings: the model's `Preprocessing`.
        on_window: called as `on_window(flow, ts, window)` for each complete window, where
            `window` is the concatenated vectors (window_packets * vector_bytes bytes) and
            `ts` the time stamp of the packet that completed it.
        on_end: called as `on_end(flow, reason)` when a flow leaves the table; `reason` is
            "expired", "evicted", "reused" or "flushed".
        max_flows: the table's capacity.
        idle_timeout_s: seconds of capture time without a packet before a flow expires.
        max_windows: windows made per flow; later packets are only counted.
    """

    def __init__(self, settings, on_window, on_end=None, max_flows=65536, idle_timeout_s=120.0,
                 max_windows=5):
        self.settings = settings
        self.on_window = on_window
        self.on_end = on_end
        self.max_flows = max_flows
        self.idle_timeout_s = idle_timeout_s
        self.max_windows = max_windows
        self.flows = collections.OrderedDict()
        self.now = None
        self.flows_created = 0
        self.evictions = 0
        self.expirations = 0
        self.time_jumps_back = 0
        self.time_jumps_forward = 0
        self._next_expiry = None
        # Idle flows are looked for at most this often, in capture time.
        self._expiry_interval_s = min(1.0, idle_timeout_s / 2)

    def __len__(self):
        return len(self.flows)

    def add(self, pkt):
        """Account `pkt` to its flow and emit a window when it completes one."""
        ts = pkt.ts
        now = self.now
        if now is None:
            self.now = now = ts
            self._next_expiry = ts + self._expiry_interval_s
        elif ts > now:
            if ts - now > _JUMP_LOG_FACTOR * self.idle_timeout_s:
                self.time_jumps_forward += 1
                # The first jump is news; the rest are counted in the summary.
                log.log(logging.INFO if self.time_jumps_forward == 1 else logging.DEBUG,
                        "time stamp jumped forward by %.0f s; expiring idle flows", ts - now)
            self.now = now = ts
            if now >= self._next_expiry:
                self.expire(now)
                self._next_expiry = now + self._expiry_interval_s
        elif ts < now - 1.0:
            self.time_jumps_back += 1

        key = flow_key(pkt)
        flows = self.flows
        flow = flows.get(key)
        if flow is None:
            flow = self._create(key, pkt)
        else:
            flags = pkt.tcp_flags
            if flow.closing and flags & SYN and not flags & ACK:
                # A new connection on a reused 5-tuple.
                del flows[key]
                self._end(flow, "reused")
                flow = self._create(key, pkt)
            else:
                flows.move_to_end(key)
        flow.packets += 1
        flow.last_seen = now
        gap_s = ts - flow.last_ts
        flow.last_ts = ts
        if pkt.tcp_flags & (FIN | RST):
            flow.closing = True

        settings = self.settings
        if flow.windows >= self.max_windows or not settings.takes(pkt):
            return
        # The kept vectors leave out the port block, because it encodes the flow's server
        # port and is the same for every packet. It is appended per window below.
        vec = vectorize(pkt, pkt.dst == flow.server and pkt.dport == flow.server_port, settings,
                        gap_s, port_block=False)
        recent = flow.recent
        if recent is None:
            recent = flow.recent = []
        if len(recent) + 1 >= settings.window_packets:
            recent.append(vec)
            if settings.port_buckets:
                block = port_block_of(flow.server_port, settings)
                window = b"".join(v + block for v in recent)
            else:
                window = b"".join(recent)
            del recent[0]
            flow.windows += 1
            if flow.windows >= self.max_windows:
                flow.recent = None  # no more windows: free the vectors
            self.on_window(flow, ts, window)
        else:
            recent.append(vec)

    def _create(self, key, pkt):
        flows = self.flows
        if len(flows) >= self.max_flows:
            _, old = flows.popitem(last=False)
            self.evictions += 1
            self._end(old, "evicted")
        self.flows_created += 1
        flow = flows[key] = Flow(pkt, self.flows_created)
        return flow

    def _end(self, flow, reason):
        flow.recent = None
        if self.on_end is not None:
            self.on_end(flow, reason)

    def expire(self, now):
        """End every flow idle for longer than the idle timeout at time `now`."""
        flows = self.flows
        limit = now - self.idle_timeout_s
        expired = []
        # `flows` is ordered by last packet, oldest first, so the scan stops at the first
        # flow that is still active.
        for key, flow in flows.items():
            if flow.last_seen > limit:
                break
            expired.append(key)
        for key in expired:
            flow = flows.pop(key)
            self.expirations += 1
            self._end(flow, "expired")

    def advance(self, now):
        """Move the clock to `now` (a live link's wall clock) and expire idle flows."""
        if self.now is None or now <= self.now:
            return
        self.now = now
        self._next_expiry = now + self._expiry_interval_s
        self.expire(now)

    def flush(self):
        """End every flow, oldest first (at the end of a capture)."""
        while self.flows:
            _, flow = self.flows.popitem(last=False)
            self._end(flow, "flushed")
