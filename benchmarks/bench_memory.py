"""Peak memory of `edge-etc run --pcap`: start-up, a SYN flood, and memory per open flow.

Each figure is the peak RSS of a whole `edge-etc run` process (`ru_maxrss` of the child),
with the bundled model, JSON lines written to a file:

- empty: a capture with a header and no packets, which is everything before the first
  packet (interpreter, model, imports);
- SYN flood: 200,000 one-packet flows then two TLS flows (tests/data/make_syn_flood.py),
  with the default table of 65,536 flows and with `--max-flows 10000`;
- per flow: (peak at flows_100k.pcap - peak at flows_1k.pcap) / 99,000, with the table
  large enough to hold every flow (`--max-flows 200000`, `--idle-timeout 86400`), so the
  100,000 flows are open at once.

Usage: python benchmarks/bench_memory.py [--data benchmarks/data] [--json OUT]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))

import make_syn_flood  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "data"))
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(ROOT, "tests", "data", "cases", "header_only_no_packets.pcap")
        flood = os.path.join(tmp, "flood.pcap")
        make_syn_flood.write(flood)
        plan = [("empty capture (start-up)", ["--pcap", empty])]
        small = os.path.join(args.data, "flows_1k.pcap")
        big = os.path.join(args.data, "flows_100k.pcap")
        if os.path.isfile(small):
            plan.append(("flows_1k, all open", ["--pcap", small, "--max-flows", "200000",
                                                 "--idle-timeout", "86400"]))
        plan.append(("SYN flood, --max-flows 10000", ["--pcap", flood, "--max-flows", "10000"]))
        plan.append(("SYN flood, default table", ["--pcap", flood]))
        if os.path.isfile(big):
            plan.append(("flows_100k, all open", ["--pcap", big, "--max-flows", "200000",
                                                   "--idle-timeout", "86400"]))
        for name, run_args in plan:
            # Each measurement in a fresh interpreter, so RUSAGE_CHILDREN covers one run only.
            code = ("import json, resource, subprocess, sys\n"
                    "p = subprocess.run([sys.executable, '-m', 'edge_etc', 'run', *sys.argv[1:], "
                    "'-o', '/dev/null'], capture_output=True, text=True)\n"
                    "s = next((l for l in p.stderr.splitlines() if 'summary:' in l), '')\n"
                    "print(json.dumps({'rc': p.returncode, 'kib': resource.getrusage("
                    "resource.RUSAGE_CHILDREN).ru_maxrss, 'summary': s}))\n")
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, *run_args], capture_output=True, text=True)
            elapsed = time.perf_counter() - started
            result = json.loads(out.stdout)
            if result["rc"] != 0:
                sys.exit(f"{name}: edge-etc run failed with exit code {result['rc']}")
            row = {"case": name, "peak_rss_mib": round(result["kib"] / 1024, 1),
                   "seconds": round(elapsed, 2), "rc": result["rc"],
                   "summary": result["summary"].split("summary: ")[-1]}
            rows.append(row)
            print(f"{name}: {row['peak_rss_mib']} MiB, {row['seconds']} s")
    by_name = {r["case"]: r for r in rows}
    if "flows_1k, all open" in by_name and "flows_100k, all open" in by_name:
        per_flow = ((by_name["flows_100k, all open"]["peak_rss_mib"] - by_name["flows_1k, all open"]["peak_rss_mib"])
                    * 1024 * 1024 / 99_000)
        print(f"memory per open flow: {per_flow:.0f} bytes")
        rows.append({"case": "per open flow (100k - 1k) / 99,000", "bytes": round(per_flow)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
