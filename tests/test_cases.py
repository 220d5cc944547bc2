"""The hard inputs in tests/data/cases (see its README): link layers, file formats, IP
oddities, timestamps and broken files, each checked for what the product must do."""

import gzip
import json
import os

import pytest

from conftest import CASES, Scan, case, run_cli
from edge_etc.preprocess import Preprocessing

with open(os.path.join(CASES, "EXPECTED.json")) as f:
    EXPECTED = json.load(f)

BASELINE = "eth_tls_2flows.pcap"
SAME_AS_BASELINE = [
    "sll_tls_2flows.pcap", "sll2_tls_2flows.pcap", "rawip_lt101_tls_2flows.pcap",
    "rawip_lt12_tls_2flows.pcap", "null_loopback_tls_2flows.pcap", "vlan_8021q_tls_2flows.pcap",
    "pppoe_session_tls_2flows.pcap", "pcapng_tls_2flows.pcapng", "nanosecond_tls_2flows.pcap",
    "eth_tls_2flows.pcap.gz", "pcapng_two_linktypes.pcapng",
]
# Plain byte vectors of 128 bytes, every packet: the layout these tests check.
ALL = Preprocessing(window_rule="all", vector_bytes=128, context=False, port_buckets=0)
PAYLOAD = Preprocessing(vector_bytes=128, context=False, port_buckets=0)


def expected_flows(name):
    return EXPECTED[name]["flows"]


def test_baseline_counts():
    scan = Scan(case(BASELINE))
    scan_all = Scan(case(BASELINE), ALL)
    for key, exp in expected_flows(BASELINE).items():
        assert scan.packets[key] == exp["packets"], key
        assert len(scan.windows[key]) == exp["sliding3_windows_payload_only"], key
        assert len(scan_all.windows[key]) == exp["sliding3_windows_all"], key
    assert set(scan.packets) == set(expected_flows(BASELINE))


@pytest.mark.parametrize("name", SAME_AS_BASELINE)
def test_link_layer_same_flows_and_vectors(name):
    base = Scan(case(BASELINE), ALL)
    other = Scan(case(name), ALL)
    assert dict(other.packets) == dict(base.packets)
    assert other.windows.keys() == base.windows.keys()
    for key in base.windows:
        assert other.windows[key] == base.windows[key], key
    assert not other.skipped


def test_ipv6_extension_headers_walked():
    scan = Scan(case("ipv6_exthdrs_tls_2flows.pcap"), ALL)
    for key, exp in expected_flows("ipv6_exthdrs_tls_2flows.pcap").items():
        assert scan.packets[key] == exp["packets"], key
        assert len(scan.windows[key]) == exp["sliding3_windows_all"], key
    # Addresses are masked over all 128 bits: the two flows' first vectors differ only
    # where their packets differ, never in the address bytes 8..40.
    for windows in scan.windows.values():
        for w in windows:
            vec = w[:ALL.vector_bytes]
            assert vec[8:40] == bytes(32)


def test_ipv4_fragments_reassembled_no_phantom_flows():
    scan = Scan(case("ipv4_fragments_udp443.pcap"))
    assert list(scan.packets) == ["udp 192.0.2.12:52000 <-> 198.51.100.40:443"]
    assert scan.packets["udp 192.0.2.12:52000 <-> 198.51.100.40:443"] == 5
    assert not any(":53 " in k or k.endswith(":53") for k in scan.packets)


def test_snaplen64_vectors_zero_padded():
    short = Scan(case("snaplen64_tls_2flows.pcap"), ALL)
    base = Scan(case(BASELINE), ALL)
    assert dict(short.packets) == dict(base.packets)
    for key, windows in short.windows.items():
        for w_short, w_full in zip(windows, base.windows[key]):
            for i in range(ALL.window_packets):
                v = w_short[i * ALL.vector_bytes:(i + 1) * ALL.vector_bytes]
                full = w_full[i * ALL.vector_bytes:(i + 1) * ALL.vector_bytes]
                captured = 64 - 14  # snapshot length minus the Ethernet header
                assert v[:captured] == full[:captured]
                assert v[captured:] == bytes(ALL.vector_bytes - captured)


@pytest.mark.parametrize("name,snaplen", [("snaplen64_tls_2flows.pcap", 64), ("snaplen40_l4_cut.pcap", 40)])
def test_short_snaplen_warns_once(name, snaplen):
    from edge_etc.model import default_model_path, load_model_info
    header_bytes = load_model_info(default_model_path()).preprocessing.header_bytes
    r = run_cli("run", "--pcap", case(name))
    assert r.returncode == 0, r.stderr
    # Ethernet takes 14 of the captured bytes. The warning comes when the rest cannot fill
    # the header part of a vector: the context bytes are not copied from the packet.
    expected = 1 if snaplen - 14 < header_bytes else 0
    assert r.stderr.count(f"snapshot length {snaplen}") == expected


def test_snaplen40_keys_by_ports():
    scan = Scan(case("snaplen40_l4_cut.pcap"))
    assert set(scan.packets) == set(expected_flows(BASELINE))


def test_out_of_order_timestamps():
    scan = Scan(case("out_of_order_timestamps.pcap"), idle_timeout_s=120.0)
    flows = expected_flows("out_of_order_timestamps.pcap")
    for key, exp in flows.items():
        assert scan.packets[key] == exp["packets"], key
    # The SYN-ACK comes first in the file, yet the SYN's sender is the client.
    assert "tcp 192.0.2.10:51000 <-> 198.51.100.20:443" in scan.packets
    assert scan.table.time_jumps_forward == 1
    # The 10-year jump expired the open flows once; nothing expired on the way back.
    reasons = [r for _, r in scan.ended]
    assert reasons.count("expired") == 2


def test_short_flows_and_payload_rule():
    scan = Scan(case("short_flows_1_2_3_pkts.pcap"))
    scan_all = Scan(case("short_flows_1_2_3_pkts.pcap"), ALL)
    for key, exp in expected_flows("short_flows_1_2_3_pkts.pcap").items():
        assert scan.packets[key] == exp["packets"], key
        assert len(scan.windows[key]) == exp["sliding3_windows_payload_only"], key
        assert len(scan_all.windows[key]) == exp["sliding3_windows_all"], key


def test_short_flows_reported_too_short():
    r = run_cli("run", "--pcap", case("short_flows_1_2_3_pkts.pcap"))
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["src_port"], x["dst_port"]) for x in records] == [(52002, 443)]
    assert "too_short=3" in r.stderr


def test_zero_payload_acks_make_no_windows():
    name = "tcp_zero_payload_and_keepalive.pcap"
    scan = Scan(case(name))
    scan_all = Scan(case(name), ALL)
    for key, exp in expected_flows(name).items():
        assert len(scan.windows[key]) == exp["sliding3_windows_payload_only"]
        assert len(scan_all.windows[key]) == exp["sliding3_windows_all"]


def test_udp_header_padded_to_20_bytes():
    scan = Scan(case("udp443_quic_like.pcap"), PAYLOAD)
    (windows,) = scan.windows.values()
    size = scan.settings.vector_bytes
    for n, w in enumerate(windows):
        for i in range(3):
            vec = w[i * size:(i + 1) * size]
            assert vec[28:40] == bytes(12)
            assert vec[40] & 0xC0 == 0xC0  # first payload byte of the QUIC-like datagram


def test_oversize_and_tso_length_zero():
    name = "oversize_gro_and_tso_len0.pcap"
    scan = Scan(case(name))
    assert dict(scan.packets) == {k: v["packets"] for k, v in expected_flows(name).items()}
    assert not scan.skipped
    for windows in scan.windows.values():
        for w in windows:
            assert len(w) == 3 * scan.settings.vector_bytes


def test_malformed_records_skipped_by_reason():
    scan = Scan(case("malformed_headers_mix.pcap"))
    assert sum(scan.skipped.values()) == EXPECTED["malformed_headers_mix.pcap"]["skipped_packets"]
    assert dict(scan.packets) == {"tcp 192.0.2.60:51007 <-> 198.51.100.60:443": 1}
    assert len(scan.skipped) >= 6  # one counter per reason, not one lump


def test_non_ip_only_exits_zero_without_model_calls():
    r = run_cli("run", "--pcap", case("icmp_arp_igmp_only.pcap"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "flows=0" in r.stderr
    assert "windows=0" in r.stderr


def test_dns_noise_and_tls_flow_classified():
    r = run_cli("run", "--pcap", case("dns_ntp_mdns_noise_plus_1tls.pcap"))
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    endpoints = {(x["src_ip"], x["src_port"], x["dst_port"]) for x in records}
    assert ("192.0.2.90", 51012, 443) in endpoints


def test_long_flow_capped_windows():
    r = run_cli("run", "--pcap", case("long_flow_20k_packets.pcap.gz"), "--max-windows", "5")
    assert r.returncode == 0, r.stderr
    assert "windows=5 " in r.stderr
    assert "packets=20003" in r.stderr


@pytest.mark.parametrize("name,message", [
    ("empty_zero_bytes.pcap", "empty file"),
    ("not_a_capture.pcap", "not a pcap or pcapng file (magic 47455420)"),
    ("truncated_global_header.pcap", "truncated file header: 12 of 24 bytes"),
])
def test_bad_files_exit_2_one_line(name, message):
    r = run_cli("run", "--pcap", case(name))
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert name in lines[0]
    assert message in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("content, message", [
    (b"abc", "not a pcap or pcapng file (3 bytes, shorter than a file header)"),
    (gzip.compress(b""), "empty gzip stream, not a capture"),
    (gzip.compress(b"ab"), "not a pcap or pcapng file (2 bytes, shorter than a file header)"),
])
def test_file_shorter_than_header_named(tmp_path, content, message):
    path = tmp_path / "short.pcap"
    path.write_bytes(content)
    r = run_cli("run", "--pcap", str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"edge-etc: error: {path}: {message}"


def test_missing_file_not_treated_as_interface(tmp_path):
    r = run_cli("run", "--pcap", str(tmp_path / "nope.pcap"))
    assert r.returncode == 2
    assert "file not found" in r.stderr
    assert "No such device" not in r.stderr


def test_zstd_rejected_with_hint(tmp_path):
    path = tmp_path / "capture.pcap.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(32))
    r = run_cli("run", "--pcap", str(path))
    assert r.returncode == 2
    assert "zstd-compressed" in r.stderr


def test_header_only_zero_packets():
    r = run_cli("run", "--pcap", case("header_only_no_packets.pcap"))
    assert r.returncode == 0, r.stderr
    assert "records=0 filtered=0 packets=0 flows=0" in r.stderr


@pytest.mark.parametrize("name", ["truncated_mid_record.pcap", "truncated_mid_record_header.pcap"])
def test_truncated_keeps_records_and_says_where(name):
    scan = Scan(case(name))
    assert "record 11" in scan.stopped
    assert "byte offset" in scan.stopped
    r = run_cli("run", "--pcap", case(name))
    assert r.returncode == 0
    assert "records=10 " in r.stderr
    assert "record 11" in r.stderr
    strict = run_cli("run", "--pcap", case(name), "--strict")
    assert strict.returncode == 3
