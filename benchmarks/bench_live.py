"""Live capture: the highest replay rate without capture drops, and the decision delay.

Creates two network namespaces joined by a veth pair (names start with `eebench`),
runs `edge-etc run --iface` in one and `tcpreplay --pps RATE` in the other, for each rate.
For every JSON line the runner writes, the delay is the wall-clock time when the line
arrives minus the record's `ts` (the capture time stamp of the deciding packet). Drops come
from the runner's summary (`capture_drops`, from libpcap's statistics).

Needs root, iproute2 and tcpreplay. Traffic stays on the veth pair inside the namespaces.

Usage: python benchmarks/bench_live.py CAPTURE [--rates 10000,50000,100000] [--json OUT]
           [--runner-cpu N] [--replay-cpu M]

--runner-cpu and --replay-cpu pin the runner and tcpreplay to one CPU each (taskset), so
that "on one core" means the runner had one core to itself. On a veth pair the kernel
delivers each packet to the capture socket on the sender's CPU, in tcpreplay's time.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def pinned(cpu):
    """Return the command prefix that runs a command on CPU `cpu` (nothing when None)."""
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def run_rate(tx, rx, capture, rate, loops, runner_cpu=None, replay_cpu=None):
    proc = subprocess.Popen(["ip", "netns", "exec", rx, *pinned(runner_cpu), sys.executable, "-m",
                             "edge_etc", "run", "--iface", "veth-rx", "--max-flows", "200000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    stderr_lines = []
    while True:
        line = proc.stderr.readline()
        stderr_lines.append(line)
        if "capturing on" in line or not line:
            break
    delays = []

    def read_stdout():
        for line in proc.stdout:
            arrived = time.time()
            delays.append(arrived - json.loads(line)["ts"])

    reader = threading.Thread(target=read_stdout)
    reader.start()
    started = time.time()
    replay = subprocess.run(["ip", "netns", "exec", tx, *pinned(replay_cpu), "tcpreplay", "-i",
                             "veth-tx", "--pps", str(rate), "--loop", str(loops), capture],
                            capture_output=True, text=True)
    replay_s = time.time() - started
    time.sleep(1.0)
    proc.terminate()
    stderr_lines.append(proc.stderr.read())
    proc.wait()
    reader.join()
    err = "".join(stderr_lines)
    summary = re.search(r"summary: (.*)", err)
    fields = dict(kv.split("=") for kv in summary.group(1).split()) if summary else {}
    sent = re.search(r"Actual: (\d+) packets", replay.stdout)
    return {
        "rate_pps": rate,
        "sent": int(sent.group(1)) if sent else None,
        "replay_seconds": round(replay_s, 2),
        "records": int(fields.get("records", 0)),
        "capture_drops": int(fields.get("capture_drops", -1)),
        "classified": int(fields.get("classified", 0)),
        "delay_p50_ms": round(1000 * percentile(delays, 50), 2) if delays else None,
        "delay_p99_ms": round(1000 * percentile(delays, 99), 2) if delays else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture", help="Ethernet pcap to replay")
    parser.add_argument("--rates", default="10000,50000,100000,200000")
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--json")
    parser.add_argument("--runner-cpu", type=int, help="CPU to pin the runner to")
    parser.add_argument("--replay-cpu", type=int, help="CPU to pin tcpreplay to")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_live.py needs root (network namespaces)")
    tag = f"eebench{os.getpid() % 10000}"
    tx, rx = f"{tag}-tx", f"{tag}-rx"
    sh("ip", "netns", "add", tx)
    sh("ip", "netns", "add", rx)
    rows = []
    try:
        sh("ip", "link", "add", "veth-tx", "netns", tx, "type", "veth", "peer", "name", "veth-rx", "netns", rx)
        sh("ip", "-n", tx, "link", "set", "veth-tx", "up")
        sh("ip", "-n", rx, "link", "set", "veth-rx", "up")
        for rate in (int(r) for r in args.rates.split(",")):
            row = run_rate(tx, rx, args.capture, rate, args.loops, args.runner_cpu, args.replay_cpu)
            row["runner_cpu"], row["replay_cpu"] = args.runner_cpu, args.replay_cpu
            rows.append(row)
            print(json.dumps(row))
    finally:
        subprocess.run(["ip", "netns", "del", tx], capture_output=True)
        subprocess.run(["ip", "netns", "del", rx], capture_output=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
