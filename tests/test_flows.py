"""Flow table: keys, orientation, capacity, eviction, expiry, reuse and the SYN flood."""

import json
import os
import sys

from hypothesis import given, settings, strategies as st

from conftest import ROOT, Scan, case, run_cli
from edge_etc.decode import Packet
from edge_etc.flows import FlowTable, flow_key
from edge_etc.preprocess import Preprocessing

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
