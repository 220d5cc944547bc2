"""Peak memory of `edge-etc run --pcap`: start-up, a SYN flood, and memory per open flow.

Each figure is the peak RSS of a whole `edge-etc run` process (`ru_maxrss` of the child),
with the bundled model, JSON lines written to /dev/null:

- empty: a capture with a header and no packets, which is everything before the first
  packet (interpreter, model, imports);
- SYN flood: 200,000 one-packet flows then two TLS flows (tests/data/make_syn_flood.py),
  with the default table of 65,536 flows and with `--max-flows 10000`;
- per flow: (peak at flows_100k.pcap - peak at flows_1k.pcap) / 99,000, with the table
  large enough to hold every flow (`--max-flows 200000`, `--idle-timeout 86400`), so the
  100,000 flows are open at once.

With --runs N every row runs N times, alternating, and the median is reported.

--breakdown shows where the bytes of the open flows go instead: it feeds flows_100k.pcap
through the runner's pipeline (the compiled flow engine where it is built, else `Pipeline`;
EDGE_ETC_PURE_PYTHON=1 picks the latter) in this process under tracemalloc and prints, per
source line, the bytes still allocated per open flow, then the engine's own account by
part. tracemalloc counts requested sizes, without the allocator's rounding and free space,
so its total is below the RSS figure.

Usage: python benchmarks/bench_memory.py [--data benchmarks/data] [--runs N] [--json OUT]
       python benchmarks/bench_memory.py --breakdown [--data benchmarks/data]
Pin it to one core for figures that can be compared (`taskset -c 1 python ...`).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))

import make_syn_flood  # noqa: E402

FLOWS_SMALL, FLOWS_BIG = "flows_1k, all open", "flows_100k, all open"
ALL_OPEN = ["--max-flows", "200000", "--idle-timeout", "86400"]

# Runs one `edge-etc run` in a fresh interpreter, so RUSAGE_CHILDREN covers that run only.
_CHILD = ("import json, resource, subprocess, sys\n"
          "p = subprocess.run([sys.executable, '-m', 'edge_etc', 'run', *sys.argv[1:], "
          "'-o', '/dev/null'], capture_output=True, text=True)\n"
          "s = next((l for l in p.stderr.splitlines() if 'summary:' in l), '')\n"
          "print(json.dumps({'rc': p.returncode, 'kib': resource.getrusage("
          "resource.RUSAGE_CHILDREN).ru_maxrss, 'summary': s}))\n")


def measure(name, run_args):
    """Run one case; return (peak RSS MiB, wall seconds, summary line)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, *run_args], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        sys.exit(f"{name}: edge-etc run failed with exit code {result['rc']}")
    return result["kib"] / 1024, elapsed, result["summary"].split("summary: ")[-1]


def plan_cases(data, flood):
    empty = os.path.join(ROOT, "tests", "data", "cases", "header_only_no_packets.pcap")
    small = os.path.join(data, "flows_1k.pcap")
    big = os.path.join(data, "flows_100k.pcap")
    plan = [("empty capture (start-up)", ["--pcap", empty])]
    if os.path.isfile(small):
        plan.append((FLOWS_SMALL, ["--pcap", small, *ALL_OPEN]))
    plan.append(("SYN flood, --max-flows 10000", ["--pcap", flood, "--max-flows", "10000"]))
    plan.append(("SYN flood, default table", ["--pcap", flood]))
    if os.path.isfile(big):
        plan.append((FLOWS_BIG, ["--pcap", big, *ALL_OPEN]))
    return plan


def run_cases(data, runs):
    samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        flood = os.path.join(tmp, "flood.pcap")
        make_syn_flood.write(flood)
        plan = plan_cases(data, flood)
        for _ in range(runs):
            for name, run_args in plan:
                mib, seconds, summary = measure(name, run_args)
                samples.setdefault(name, []).append((mib, seconds, summary))
                print(f"{name}: {mib:.1f} MiB, {seconds:.2f} s")
    rows = []
    for name, _ in plan:
        mibs = [s[0] for s in samples[name]]
        rows.append({"case": name, "peak_rss_mib": round(statistics.median(mibs), 1),
                     "peak_rss_mib_runs": [round(m, 1) for m in mibs],
                     "seconds": round(statistics.median(s[1] for s in samples[name]), 2),
                     "rc": 0, "summary": samples[name][-1][2]})
    by_name = {r["case"]: r for r in rows}
    if FLOWS_SMALL in by_name and FLOWS_BIG in by_name:
        per_flow = ((by_name[FLOWS_BIG]["peak_rss_mib"] - by_name[FLOWS_SMALL]["peak_rss_mib"])
                    * 1024 * 1024 / 99_000)
        rows.append({"case": "per open flow (100k - 1k) / 99,000", "bytes": round(per_flow)})
    print()
    for row in rows:
        if "bytes" in row:
            print(f"memory per open flow: {row['bytes']} bytes")
        else:
            print(f"{row['case']}: median {row['peak_rss_mib']} MiB "
                  f"({row['peak_rss_mib'] * 1.048576:.1f} MB), runs {row['peak_rss_mib_runs']}")
    return rows


def breakdown(data):
    """Print the bytes per open flow of flows_100k.pcap by the source line that allocated them.

    tracemalloc counts the compiled flow engine's allocations at the lines of engine.py
    that call it, so the engine's own account of its memory by part follows.
    """
    import linecache
    import tracemalloc

    from edge_etc.capfile import CaptureFile
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info
    from edge_etc.runner import make_pipeline, run_file

    class Control:
        stop = False

        def tick(self):
            pass

    classifier = Classifier(load_model_info(default_model_path()))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    pipeline = make_pipeline(classifier, lambda record: None, max_flows=200_000,
                             idle_timeout_s=86400.0)
    with CaptureFile(os.path.join(data, "flows_100k.pcap")) as capture:
        run_file(pipeline, capture, Control())
    pipeline.infer()
    after = tracemalloc.take_snapshot()
    engine = getattr(pipeline, "engine", None)
    flows = len(engine) if engine is not None else len(pipeline.table)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"{type(pipeline).__name__}: {flows} open flows; tracemalloc: {total / flows:.0f} "
          "bytes per flow")
    for stat in after.compare_to(before, "lineno")[:12]:
        if stat.size_diff / flows >= 1:
            frame = stat.traceback[0]
            code = linecache.getline(frame.filename, frame.lineno).strip()
            print(f"{stat.size_diff / flows:7.1f} bytes/flow {stat.count_diff:8d} blocks  "
                  f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}  {code}")
    if engine is not None:
        memory = engine.memory()
        for part in ("flow_slots", "hash_buckets", "vector_buffers", "decision_states"):
            print(f"engine {part}: {memory[part] / flows:.1f} bytes/flow")
        print(f"flow slot: {memory['flow_slot_bytes']} bytes; vectors buffered: "
              f"{memory['vector_buffers_in_use']}; decision states: "
              f"{memory['decision_states_in_use']}")
        return
    states = {"vectors buffered": 0, "decision kept": 0}
    for flow in pipeline.table.flows.values():
        states["vectors buffered"] += flow.recent is not None
        states["decision kept"] += flow.decision is not None
    print(", ".join(f"{k}: {v}" for k, v in states.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "data"))
    parser.add_argument("--runs", type=int, default=1, help="runs per case (median reported)")
    parser.add_argument("--json", help="write the rows, machine and Python version to this file")
    parser.add_argument("--breakdown", action="store_true",
                        help="show bytes per open flow by source line (tracemalloc) instead")
    args = parser.parse_args()
    if args.breakdown:
        breakdown(args.data)
        return
    rows = run_cases(args.data, args.runs)
    if args.json:
        machine = {"python": platform.python_version(), "machine": platform.machine(),
                   "cpus_allowed": sorted(os.sched_getaffinity(0)), "runs": args.runs}
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
