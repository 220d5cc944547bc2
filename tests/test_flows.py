"""Flow table: keys, orientation, capacity, eviction, expiry, reuse and the SYN flood."""

import collections
import json
import logging
import os
import sys

import pytest
from hypothesis import assume, given, settings, strategies as st

from conftest import ROOT, Scan, case, run_cli
from edge_etc.decode import Packet
from edge_etc.flows import FlowTable, flow_key
from edge_etc.preprocess import Preprocessing, vectorize
from edge_etc.runner import DecisionState

sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
import make_syn_flood  # noqa: E402

SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
PRE = Preprocessing()


def packet(ts, src, sport, dst, dport, flags=ACK, payload=100, proto=6):
    ip = bytes(20) + bytes(20) + bytes(payload)
    return Packet(ts, 4, proto, src, dst, sport, dport, ip, 20, 20 if proto == 6 else 8,
                  payload, flags if proto == 6 else 0, False)


A, B, C = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", b"\x0a\x00\x00\x03"

addresses = st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16)
ports = st.integers(0, 65535)


@given(addresses, ports, addresses, ports, st.sampled_from([6, 17]))
def test_key_symmetric(src, sport, dst, dport, proto):
    forward = packet(0.0, src, sport, dst, dport, proto=proto)
    backward = packet(0.0, dst, dport, src, sport, proto=proto)
    assert flow_key(forward) == flow_key(backward)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 5), st.floats(0, 1000)), max_size=300),
       st.integers(1, 20))
def test_table_never_above_cap(events, cap):
    table = FlowTable(PRE, lambda *a: None, max_flows=cap, idle_timeout_s=30.0)
    for host, port, ts in events:
        table.add(packet(ts, bytes([10, 0, 1, host]), 40000 + port, B, 443))
        assert len(table) <= cap
    assert table.flows_created - table.evictions - table.expirations == len(table)


def test_lru_evicts_least_recent():
    ended = []
    table = FlowTable(PRE, lambda *a: None, lambda f, r: ended.append((f.client_port, r)), max_flows=2)
    table.add(packet(0, A, 50001, B, 443))
    table.add(packet(1, A, 50002, B, 443))
    table.add(packet(2, A, 50001, B, 443))  # 50001 is now the most recent
    table.add(packet(3, A, 50003, B, 443))
    assert ended == [(50002, "evicted")]
    assert table.evictions == 1


def test_idle_flows_expire_once():
    ended = []
    table = FlowTable(PRE, lambda *a: None, lambda f, r: ended.append(r), idle_timeout_s=10.0)
    table.add(packet(0, A, 50001, B, 443))
    table.add(packet(5, A, 50002, B, 443))
    table.add(packet(12, A, 50003, B, 443))  # 50001 idle for 12 s
    assert ended == ["expired"]
    table.add(packet(2, A, 50004, B, 443))  # backwards: expires nothing
    assert ended == ["expired"]


def test_syn_ack_first_orients_client():
    table = FlowTable(PRE, lambda *a: None)
    table.add(packet(0, B, 443, A, 50001, flags=SYN | ACK, payload=0))
    (flow,) = table.flows.values()
    assert (flow.client, flow.client_port) == (A, 50001)


def test_midstream_server_is_lower_port():
    table = FlowTable(PRE, lambda *a: None)
    table.add(packet(0, B, 443, A, 50001))
    (flow,) = table.flows.values()
    assert flow.server_port == 443
    assert flow.client_port == 50001


def test_reused_tuple_after_fin_is_new_flow():
    ended = []
    table = FlowTable(PRE, lambda *a: None, lambda f, r: ended.append(r))
    table.add(packet(0, A, 50001, B, 443, flags=SYN, payload=0))
    table.add(packet(1, A, 50001, B, 443, flags=FIN | ACK, payload=0))
    table.add(packet(2, A, 50001, B, 443, flags=SYN, payload=0))
    assert ended == ["reused"]
    assert table.flows_created == 2


def test_no_buffer_before_payload():
    table = FlowTable(PRE, lambda *a: None)
    table.add(packet(0, A, 50001, B, 443, flags=SYN, payload=0))
    (flow,) = table.flows.values()
    assert flow.recent is None


def test_windows_stop_at_max_and_free_buffer():
    windows = []
    table = FlowTable(PRE, lambda f, ts, w: windows.append(w), max_windows=2)
    for i in range(10):
        table.add(packet(i, A, 50001, B, 443))
    assert len(windows) == 2
    (flow,) = table.flows.values()
    assert flow.recent is None
    assert flow.packets == 10


def test_syn_flood_capped_and_tls_flows_classified(tmp_path):
    path = str(tmp_path / "flood.pcap")
    make_syn_flood.write(path)
    r = run_cli("run", "--pcap", path, "--max-flows", "10000", timeout=600)
    assert r.returncode == 0, r.stderr
    summary = r.stderr[r.stderr.index("summary:"):].split("\n")[0]
    fields = dict(kv.split("=") for kv in summary.split()[1:])
    assert int(fields["flows"]) == 200_002
    assert int(fields["evictions"]) >= 190_000
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert {(x["src_ip"], x["src_port"]) for x in records} == {("192.0.2.10", 51000), ("192.0.2.11", 51001)}


def test_window_is_vectors_with_port_block():
    windows = []
    table = FlowTable(PRE, lambda f, ts, w: windows.append(w), max_windows=2)
    packets = [packet(i, A, 50001, B, 443, payload=100 + i) if i % 2 == 0
               else packet(i, B, 443, A, 50001, payload=100 + i) for i in range(4)]
    for pkt in packets:
        table.add(pkt)
    expected = []
    for i, pkt in enumerate(packets):
        gap = 1.0 if i else 0.0
        expected.append(vectorize(pkt, pkt.dport == 443, PRE, gap))
    assert len(expected[0]) == PRE.vector_bytes
    assert windows == [b"".join(expected[0:3]), b"".join(expected[1:4])]


def test_window_without_port_buckets():
    pre = Preprocessing(port_buckets=0)
    windows = []
    table = FlowTable(pre, lambda f, ts, w: windows.append(w))
    packets = [packet(i, A, 50001, B, 443, payload=100 + i) for i in range(3)]
    for pkt in packets:
        table.add(pkt)
    expected = [vectorize(pkt, True, pre, 1.0 if i else 0.0) for i, pkt in enumerate(packets)]
    assert windows == [b"".join(expected)]


def test_one_packet_windows():
    pre = Preprocessing(window_packets=1)
    windows = []
    table = FlowTable(pre, lambda f, ts, w: windows.append(w), max_windows=3)
    for i in range(5):
        table.add(packet(i, A, 50001, B, 443))
    assert len(windows) == 3
    assert all(len(w) == pre.vector_bytes for w in windows)


@given(addresses, ports, addresses, ports, st.sampled_from([6, 17]))
def test_endpoints_read_back_from_key(src, sport, dst, dport, proto):
    assume(len(src) == len(dst))  # one IP version per packet
    table = FlowTable(PRE, lambda *a: None)
    table.add(packet(0.0, src, sport, dst, dport, proto=proto))
    (flow,) = table.flows.values()
    assert flow.proto == proto
    assert {(flow.client, flow.client_port), (flow.server, flow.server_port)} == {(src, sport), (dst, dport)}
    if sport != dport:
        assert flow.server_port == min(sport, dport)


def test_ipv6_flow_oriented_by_syn():
    c, s = bytes(15) + b"\x01", bytes(15) + b"\x02"
    table = FlowTable(PRE, lambda *a: None)
    table.add(packet(0, s, 40000, c, 50001, flags=SYN, payload=0))  # the SYN's sender is the client
    (flow,) = table.flows.values()
    assert (flow.client, flow.client_port) == (s, 40000)
    assert (flow.server, flow.server_port) == (c, 50001)


def test_same_endpoint_both_ways_client_to_server():
    directions = []
    table = FlowTable(PRE, lambda f, ts, w: directions.append(w[PRE.header_bytes]))
    for i in range(3):
        table.add(packet(i, A, 5353, A, 5353, flags=SYN | ACK if i == 0 else ACK))
    assert directions == [0]  # direction byte of the window's first vector: client to server


def test_serials_number_flows_or_stay_none():
    numbered = FlowTable(PRE, lambda *a: None)
    plain = FlowTable(PRE, lambda *a: None, serials=False)
    for table in (numbered, plain):
        table.add(packet(0, A, 50001, B, 443))
        table.add(packet(1, A, 50002, B, 443))
    assert [f.serial for f in numbered.flows.values()] == [1, 2]
    assert [f.serial for f in plain.flows.values()] == [None, None]


def test_flow_reuses_dict_key():
    table = FlowTable(PRE, lambda *a: None, max_windows=1)
    for i in range(4):
        table.add(packet(1000.5 + i, A, 50001, B, 443))
    (flow,) = table.flows.values()
    assert flow.recent is None
    assert flow.key is next(iter(table.flows))  # the dict key itself, not a copy
    assert len(flow.key) == 5 + 4 + 4


@pytest.mark.parametrize("sums, width", [
    ([0.5, 0.25, 0.0, 1.0], 2),  # multiples of 1/256: float16
    ([1 / 3, 0.0, 0.0, 0.0], 8),  # no narrower float gives 1/3 back: float64
    ([70000.0, 0.0, 0.0, 0.0], 4),  # beyond float16's range
])
def test_decision_state_round_trip(sums, width):
    state = DecisionState(4)
    packed = state.pack(3, 2, sums)
    assert len(packed) == 6 + 4 * width
    assert state.unpack(packed) == (3, 2, tuple(sums))


class OrderedDictTable:
    """The flow table's documented rules on an OrderedDict: a model for its linked order."""

    def __init__(self, cap, idle):
        self.cap, self.idle = cap, idle
        self.interval = min(1.0, idle / 2)
        self.flows = collections.OrderedDict()  # key -> [last_seen, closing, serial]
        self.now = self.next_expiry = None
        self.created = 0
        self.ended = []

    def add(self, ts, key, flags):
        if self.now is None:
            self.now, self.next_expiry = ts, ts + self.interval
        elif ts > self.now:
            self.now = ts
            if ts >= self.next_expiry:
                for k in [k for k, f in self.flows.items() if f[0] <= ts - self.idle]:
                    self.ended.append((self.flows.pop(k)[2], "expired"))
                self.next_expiry = ts + self.interval
        flow = self.flows.get(key)
        if flow is not None and flow[1] and flags & SYN and not flags & ACK:
            self.ended.append((self.flows.pop(key)[2], "reused"))
            flow = None
        if flow is None:
            if len(self.flows) >= self.cap:
                self.ended.append((self.flows.popitem(last=False)[1][2], "evicted"))
            self.created += 1
            flow = self.flows[key] = [self.now, False, self.created]
        self.flows.move_to_end(key)
        flow[0] = self.now
        flow[1] = flow[1] or bool(flags & (FIN | RST))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.floats(0, 40), st.sampled_from([ACK, SYN, FIN | ACK, RST])),
                max_size=200),
       st.integers(1, 5))
def test_order_matches_ordered_dict_model(events, cap):
    ended = []
    table = FlowTable(PRE, lambda *a: None, lambda f, r: ended.append((f.serial, r)), max_flows=cap,
                      idle_timeout_s=5.0)
    model = OrderedDictTable(cap, 5.0)
    for port, ts, flags in events:
        table.add(packet(ts, A, 50000 + port, B, 443, flags=flags))
        model.add(ts, port, flags)
        assert ended == model.ended
        assert [f.serial for f in table.in_order()] == [f[2] for f in model.flows.values()]
    table.flush()
    assert ended == model.ended + [(f[2], "flushed") for f in model.flows.values()]


def test_recent_full_size_from_first_vector():
    table = FlowTable(PRE, lambda *a: None)
    table.add(packet(0, A, 50001, B, 443))
    (flow,) = table.flows.values()
    size = PRE.vector_bytes - PRE.port_buckets
    assert len(flow.recent) == 2 * size
    assert flow.recent[:size] == bytes(size)  # padding until a second vector arrives


def test_time_jump_logged_by_runner_not_dataset(caplog):
    from edge_etc.convert.dataset import capture_windows

    path = case("out_of_order_timestamps.pcap")
    with caplog.at_level(logging.DEBUG, logger="edge_etc.flows"):
        capture_windows(path, PRE)
    jumps = [r for r in caplog.records if "time stamp jumped forward" in r.getMessage()]
    assert [r.levelno for r in jumps] == [logging.DEBUG]

    r = run_cli("run", "--pcap", path, "-o", "")
    assert r.returncode == 0, r.stderr
    assert "INFO: time stamp jumped forward by" in r.stderr
