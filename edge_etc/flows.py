"""Bidirectional flow table and windowing, shared by the runner and the dataset builder.

This is the reference implementation. Where the compiled extension is built, the runner
and the dataset builder use the compiled flow engine (edge_etc/_engine.c, edge_etc.engine)
instead, which follows the same rules. tests/test_engine.py checks that both give the same
windows, records and counters. A change of rule here must be made there too.

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

Memory: the table keeps tens of thousands of flows on a device with little RAM, so a flow
is kept small. Its key is one bytes object (protocol, ports, addresses) that is also the
dict key, and client and server are read back from it. The buffered vectors are one bytes
object, and the order of last packets is a linked list through the flows, not an
OrderedDict. benchmarks/RESULTS.md has the measured bytes per flow.
"""

import logging
import struct

from .decode import ACK, FIN, RST, SYN
from .preprocess import port_block_of, vectorize

log = logging.getLogger(__name__)

# A forward time stamp jump larger than this many idle timeouts is logged as a jump.
_JUMP_LOG_FACTOR = 10

# Head of a flow key: protocol, then the port of the lower endpoint, then the other port.
# The two addresses follow, lower endpoint first (4 or 16 bytes each).
_KEY_HEAD = struct.Struct("!BHH")
_pack_key_head = _KEY_HEAD.pack
_KEY_HEAD_BYTES = _KEY_HEAD.size


# Bits of `Flow.flags`.
_CLIENT_LOW = 1  # the client is the key's lower endpoint; must be 1 (compared with a bool)
_CLOSING = 2  # the flow has seen FIN or RST
_BUFFERED_ONE = 4  # the bits from 4 up count the vectors in `recent` (up to 15)


class Flow:
    """State of one flow.

    `key` is the flow's key in the table (see `flow_key`); `proto`, `client`,
    `client_port`, `server` and `server_port` are read from it. `recent` contains the
    last `window_packets - 1` vectors, without the port block, zero-padded in front until
    that many have arrived. It is None before the first usable packet and after the last
    window. `flags` contains the bits `_CLIENT_LOW` and `_CLOSING` and the count of vectors
    in `recent`. `decision` belongs to the runner, which keeps there what it combines over
    the flow's windows. `older` and `newer` link the table's flows in the order of their
    last packet. `serial` is None here and set in `NumberedFlow`.
    """

    __slots__ = ("key", "flags", "last_seen", "last_ts", "packets", "recent", "windows",
                 "decision", "older", "newer")
    serial = None  # see NumberedFlow

    def __init__(self, key, client_low, ts):
        self.key = key
        self.flags = _CLIENT_LOW if client_low else 0
        self.last_seen = ts
        self.last_ts = ts  # time stamp of the flow's latest packet, for the gap
        self.packets = 0
        self.recent = None
        self.windows = 0
        self.decision = None
        self.older = None
        self.newer = None

    @property
    def client_low(self):
        """True when the client is the key's lower endpoint."""
        return bool(self.flags & _CLIENT_LOW)

    @property
    def closing(self):
        """True once the flow has seen FIN or RST."""
        return bool(self.flags & _CLOSING)

    @property
    def proto(self):
        return self.key[0]

    def _endpoint(self, low):
        """Return (address, port) of the key's lower endpoint, or of the other one."""
        key = self.key
        size = (len(key) - _KEY_HEAD_BYTES) // 2
        if low:
            return key[_KEY_HEAD_BYTES:_KEY_HEAD_BYTES + size], (key[1] << 8) | key[2]
        return key[_KEY_HEAD_BYTES + size:], (key[3] << 8) | key[4]

    @property
    def client(self):
        return self._endpoint(self.client_low)[0]

    @property
    def client_port(self):
        return self._endpoint(self.client_low)[1]

    @property
    def server(self):
        return self._endpoint(not self.client_low)[0]

    @property
    def server_port(self):
        return self._endpoint(not self.client_low)[1]


class NumberedFlow(Flow):
    """A flow with `serial`: its number in the table, from 1 in creation order."""

    __slots__ = ("serial",)

    def __init__(self, key, client_low, ts, serial):
        super().__init__(key, client_low, ts)
        self.serial = serial


def flow_key(pkt):
    """Return the canonical bidirectional key of `pkt`: the lower endpoint first.

    The key is bytes: protocol (1 byte), the ports (2 bytes each, big-endian), then the
    addresses, in the order of (address, port) pairs compared as bytes and int.
    `FlowTable.add` builds the same key inline.
    """
    src = pkt.src
    dst = pkt.dst
    if src < dst or (src == dst and pkt.sport <= pkt.dport):
        return _pack_key_head(pkt.proto, pkt.sport, pkt.dport) + src + dst
    return _pack_key_head(pkt.proto, pkt.dport, pkt.sport) + dst + src


def _client_is_sender(pkt):
    """Return True when the first packet seen of a flow was sent by its client."""
    flags = pkt.tcp_flags
    if pkt.proto == 6 and flags & SYN:
        return not flags & ACK  # a SYN+ACK is sent by the server
    # Otherwise the higher port is the client's, and with equal ports (NTP, mDNS) the sender
    # is the client.
    return pkt.sport >= pkt.dport


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
        serials: make `NumberedFlow`s, which number the flows in `serial`. Without it, the
            flows are `Flow`s with `serial` None, 48 bytes smaller each.
        jump_log_level: level of the log message on the first forward time stamp jump
            (later jumps are logged at DEBUG). The dataset builder, which reads hundreds of
            captures with one table each, passes DEBUG.
    """

    def __init__(self, settings, on_window, on_end=None, max_flows=65536, idle_timeout_s=120.0,
                 max_windows=5, serials=True, jump_log_level=logging.INFO):
        self.settings = settings
        self.jump_log_level = jump_log_level
        self.on_window = on_window
        self.on_end = on_end
        self.max_flows = max_flows
        self.idle_timeout_s = idle_timeout_s
        self.max_windows = max_windows
        self.serials = serials
        # Key -> flow. The order of last packets is kept by the flows themselves, in a
        # doubly linked list from `_oldest` to `_newest`: an OrderedDict costs about 50
        # bytes more per flow (CPython 3.11), the links 16.
        self.flows = {}
        self._oldest = None
        self._newest = None
        self.now = None
        self.flows_created = 0
        self.evictions = 0
        self.expirations = 0
        self.time_jumps_back = 0
        self.time_jumps_forward = 0
        self._next_expiry = None
        # Idle flows are looked for at most this often, in capture time.
        self._expiry_interval_s = min(1.0, idle_timeout_s / 2)
        # Buffered vectors leave out the port block (the same for every packet of a flow),
        # which is put back after each vector when a window is assembled.
        self._vector_bytes = settings.vector_bytes - settings.port_buckets
        window_bytes = settings.window_packets * self._vector_bytes
        self._vector_starts = tuple(range(0, window_bytes, self._vector_bytes))
        # `recent` always has its full size, so the buffers of all flows share one size
        # of allocation: a freed one is reused by any flow. Buffers of one and of two
        # vectors left a quarter of the memory of 100,000 open flows in half-empty
        # allocator pools.
        self._empty_recent = bytes(window_bytes - self._vector_bytes)
        self._full_flags = (settings.window_packets - 1) * _BUFFERED_ONE

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
                log.log(self.jump_log_level if self.time_jumps_forward == 1 else logging.DEBUG,
                        "time stamp jumped forward by %.0f s; expiring idle flows", ts - now)
            self.now = now = ts
            if now >= self._next_expiry:
                self.expire(now)
                self._next_expiry = now + self._expiry_interval_s
        elif ts < now - 1.0:
            self.time_jumps_back += 1

        # `flow_key`, inlined because it runs for every packet, and which side sent it.
        src = pkt.src
        dst = pkt.dst
        sport = pkt.sport
        dport = pkt.dport
        if src < dst or (src == dst and sport <= dport):
            key = _pack_key_head(pkt.proto, sport, dport) + src + dst
            src_low = True
        else:
            key = _pack_key_head(pkt.proto, dport, sport) + dst + src
            src_low = False
        flow = self.flows.get(key)
        flags = pkt.tcp_flags
        if flow is None:
            flow = self._create(key, src_low, pkt)
        elif flow.flags & _CLOSING and flags & SYN and not flags & ACK:
            # A new connection on a reused 5-tuple.
            self._remove(flow)
            self._end(flow, "reused")
            flow = self._create(key, src_low, pkt)
        elif flow is not self._newest:
            # Move the flow to the newest end of the order (inlined: once per packet).
            older = flow.older
            newer = flow.newer
            if older is None:
                self._oldest = newer
            else:
                older.newer = newer
            newer.older = older
            newest = self._newest
            newest.newer = flow
            flow.older = newest
            flow.newer = None
            self._newest = flow
        flow.packets += 1
        flow.last_seen = now
        gap_s = ts - flow.last_ts
        flow.last_ts = ts
        if flags & (FIN | RST):
            flow.flags |= _CLOSING

        settings = self.settings
        if flow.windows >= self.max_windows or not settings.takes(pkt):
            return
        # The packet goes from client to server when its sender is the client's endpoint
        # (True == 1, the value of the bit).
        from_client = (flow.flags & _CLIENT_LOW) == src_low
        vec = vectorize(pkt, from_client, settings, gap_s, port_block=False)
        recent = flow.recent
        if recent is None:
            recent = self._empty_recent
        buffered = recent + vec
        if flow.flags < self._full_flags:  # fewer than window_packets - 1 vectors before
            flow.flags += _BUFFERED_ONE
            flow.recent = buffered[self._vector_bytes:]
            return
        flow.windows += 1
        if flow.windows >= self.max_windows:
            flow.recent = None  # no more windows: free the vectors
        else:
            flow.recent = buffered[self._vector_bytes:]
        if settings.port_buckets:
            size = self._vector_bytes
            parts = [buffered[i:i + size] for i in self._vector_starts]
            parts.append(b"")  # so the block also follows the last vector
            window = port_block_of(flow.server_port, settings).join(parts)
        else:
            window = buffered
        self.on_window(flow, ts, window)

    def _create(self, key, src_low, pkt):
        if len(self.flows) >= self.max_flows:
            old = self._oldest
            self._remove(old)
            self.evictions += 1
            self._end(old, "evicted")
        self.flows_created += 1
        if pkt.src == pkt.dst and pkt.sport == pkt.dport:
            # Both endpoints are the same: every packet counts as client to server.
            client_low = src_low
        else:
            client_low = src_low == _client_is_sender(pkt)
        if self.serials:
            flow = NumberedFlow(key, client_low, pkt.ts, self.flows_created)
        else:
            flow = Flow(key, client_low, pkt.ts)
        self.flows[key] = flow
        newest = self._newest
        if newest is None:
            self._oldest = flow
        else:
            newest.newer = flow
            flow.older = newest
        self._newest = flow
        return flow

    def _remove(self, flow):
        """Take `flow` out of the dict and the order."""
        del self.flows[flow.key]
        older = flow.older
        newer = flow.newer
        if older is None:
            self._oldest = newer
        else:
            older.newer = newer
        if newer is None:
            self._newest = older
        else:
            newer.older = older
        flow.older = flow.newer = None

    def _end(self, flow, reason):
        flow.recent = None
        if self.on_end is not None:
            self.on_end(flow, reason)

    def expire(self, now):
        """End every flow idle for longer than the idle timeout at time `now`."""
        limit = now - self.idle_timeout_s
        # The order is by last packet, oldest first, so the scan stops at the first flow
        # that is still active.
        flow = self._oldest
        while flow is not None and flow.last_seen <= limit:
            self._remove(flow)
            self.expirations += 1
            self._end(flow, "expired")
            flow = self._oldest

    def in_order(self):
        """Return the flows, oldest last packet first."""
        flows = []
        flow = self._oldest
        while flow is not None:
            flows.append(flow)
            flow = flow.newer
        return flows

    def advance(self, now):
        """Move the clock to `now` (a live link's wall clock) and expire idle flows."""
        if self.now is None or now <= self.now:
            return
        self.now = now
        self._next_expiry = now + self._expiry_interval_s
        self.expire(now)

    def flush(self):
        """End every flow, oldest first (at the end of a capture)."""
        while self._oldest is not None:
            flow = self._oldest
            self._remove(flow)
            self._end(flow, "flushed")
