"""Live capture on a veth pair between two network namespaces that the test creates:
replay a real capture with tcpreplay and compare with the `--pcap` run of the same file.
Needs root, iproute2 and tcpreplay."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import CORPUS, case, default_signals, run_cli

pytestmark = pytest.mark.live

needs = [shutil.which("ip"), shutil.which("tcpreplay")]
if os.geteuid() != 0 or not all(needs):
    pytest.skip("live tests need root, ip (iproute2) and tcpreplay", allow_module_level=True)


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def veth():
    """Namespaces <tag>-tx and <tag>-rx joined by a veth pair; yields (tx ns, rx ns)."""
    tag = f"eetc{os.getpid() % 100000}"
    tx, rx = f"{tag}-tx", f"{tag}-rx"
    sh("ip", "netns", "add", tx)
    sh("ip", "netns", "add", rx)
    try:
        sh("ip", "link", "add", "veth-tx", "netns", tx, "type", "veth", "peer", "name", "veth-rx", "netns", rx)
        sh("ip", "-n", tx, "link", "set", "veth-tx", "up")
        sh("ip", "-n", rx, "link", "set", "veth-rx", "up")
        yield tx, rx
    finally:
        subprocess.run(["ip", "netns", "del", tx], capture_output=True)
        subprocess.run(["ip", "netns", "del", rx], capture_output=True)


def start_runner(rx, *extra):
    proc = subprocess.Popen(["ip", "netns", "exec", rx, sys.executable, "-m", "edge_etc", "run",
                             "--iface", "veth-rx", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    # Wait until the capture is open.
    deadline = time.time() + 30
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "capturing on" in line:
            return proc, lines
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("runner did not start capturing:\n" + "".join(lines))


def stop(proc, lines):
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    return out, "".join(lines) + err, time.time() - started


def replay_source():
    """An Ethernet corpus capture when the corpus is present, else the baseline case."""
    path = os.path.join(CORPUS, "Web", "ndpi", "google_ssl.pcap")
    return path if os.path.isfile(path) else case("eth_tls_2flows.pcap")


def by_flow(stdout):
    """Return {(proto, src, sport, dst, dport, nth record of the flow): record}."""
    out, seen = {}, {}
    for line in stdout.splitlines():
        r = json.loads(line)
        flow = (r["proto"], r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"])
        seen[flow] = seen.get(flow, 0) + 1
        out[flow + (seen[flow],)] = r
    return out


def test_live_matches_pcap_run(veth):
    tx, rx = veth
    source = replay_source()
    offline = run_cli("run", "--pcap", source)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip()

    proc, lines = start_runner(rx)
    sh("ip", "netns", "exec", tx, "tcpreplay", "-q", "-i", "veth-tx", "--pps", "2000", source)
    time.sleep(1.0)
    out, err, took = stop(proc, lines)
    assert proc.returncode == 0, err
    assert took < 2.0
    live, files = by_flow(out), by_flow(offline.stdout)
    assert live.keys() == files.keys()
    for key in files:
        assert live[key]["packets"] == files[key]["packets"], key
        assert live[key]["windows"] == files[key]["windows"], key
    # The replay rate changes the gaps between packets, one of the model's context bytes,
    # so confidences may move a little and a close call may flip.
    same_label = sum(live[k]["label"] == files[k]["label"] for k in files)
    assert same_label >= 0.9 * len(files)
    assert all(abs(live[k]["confidence"] - files[k]["confidence"]) < 0.2 for k in files)
    assert "capture_drops=0" in err


def test_sigint_on_silent_link_stops_fast(veth):
    _, rx = veth
    proc, lines = start_runner(rx)
    time.sleep(0.5)
    started = time.time()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert time.time() - started < 1.5
    assert proc.returncode == 0


def test_missing_interface_one_line_error():
    r = run_cli("run", "--iface", "no-such-if0")
    assert r.returncode == 1
    assert "no-such-if0" in r.stderr
    assert "Traceback" not in r.stderr
