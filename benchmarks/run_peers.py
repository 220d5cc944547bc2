"""Measure throughput and peak memory of flow classifiers on pcap files.

Each contestant is one command line. For every capture, the contestants run in turn
(ndpiReader, nfstream, tcpdump, edge-etc, ndpiReader, ...) for --runs rounds, each under
`/usr/bin/time -v`, so slow drifts of the shared machine hit all contestants alike.

Figures per run:
- wall_s: wall time of the whole process, start-up included, from this script's
  monotonic clock around /usr/bin/time.
- packets_per_s: packets in the file / wall_s.
- max_rss_kb: "Maximum resident set size" from /usr/bin/time. For a command that starts
  several processes (NFStream starts meter processes) this is the largest single
  process, not their sum.
- tree_pss_kb, tree_rss_kb, tree_processes: peaks of the summed Pss and Rss (from
  /proc/PID/smaps_rollup) and of the process count of all processes under /usr/bin/time,
  sampled every --sample-interval seconds, so short peaks and runs shorter than one
  interval can be missed. The Pss sum counts each shared page once; the Rss sum counts
  it once per process that maps it.
- cpu_percent, user_s, sys_s: from /usr/bin/time, summed over the process tree.

The capture is read once to count its packets before the first run, so every run
starts with the file in the page cache.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pcapfile

HERE = os.path.dirname(os.path.abspath(__file__))
TIME_BINARY = "/usr/bin/time"
NFSTREAM_PYTHON = os.environ.get("NFSTREAM_PYTHON", "/work/venv-nfstream/bin/python")
EDGE_ETC = os.environ.get("EDGE_ETC", "/work/venv/bin/edge-etc")

# NFStream bundles its own nDPI and libpcap. Their versions come from the private module
# _lib_engine (checked with NFStream 6.6.0), so a failure there only drops that detail.
NFSTREAM_VERSION_SCRIPT = """
import nfstream
try:
    from _lib_engine import ffi, lib
    bundled = f" (nDPI {ffi.string(lib.engine_lib_ndpi_version()).decode()}, {ffi.string(lib.engine_lib_pcap_version()).decode()})"
except Exception:
    bundled = ""
print(f"nfstream {nfstream.__version__}{bundled}")
"""


@dataclass
class Contestant:
    name: str
    argv: list[str]  # "{pcap}" is replaced by the capture path
    flows_pattern: str | None = None  # regex with one group: flow count in the output
    version_argv: list[str] | None = None
    version_pattern: str = r"(.+)"  # regex for the version output, whose groups are joined with ", "
    note: str = ""
    install_hint: str = ""
    extra_args: list[str] = field(default_factory=list)

    def command(self, pcap: str) -> list[str]:
        return [part.replace("{pcap}", pcap) for part in self.argv] + self.extra_args

    def missing_reason(self) -> str | None:
        """Return why the contestant cannot run here, or None if its executable exists."""
        executable = self.argv[0]
        if os.sep in executable:
            if not os.access(executable, os.X_OK):
                return f"{executable} not found or not executable"
        elif shutil.which(executable) is None:
            return f"{executable} not found in PATH"
        for part in self.argv[1:]:
            if part.endswith(".py") and not os.path.isfile(part):
                return f"script {part} not found"
        return None


def build_contestants(edge_etc_args: list[str]) -> list[Contestant]:
    return [
        Contestant(
            name="ndpiReader",
            argv=["ndpiReader", "-i", "{pcap}", "-q"],
            version_argv=["ndpiReader", "-h"],
            version_pattern=r"(nDPI [0-9][^\s]*)",
            note="nDPI's example reader: full DPI, one thread for a pcap file",
            install_hint="apt-get install libndpi-bin",
        ),
        Contestant(
            name="nfstream",
            argv=[NFSTREAM_PYTHON, os.path.join(HERE, "nfstream_count.py"), "{pcap}"],
            flows_pattern=r"flows=(\d+)",
            version_argv=[NFSTREAM_PYTHON, "-c", NFSTREAM_VERSION_SCRIPT],
            note="NFStreamer with n_dissections=20 (nDPI on), all other options at their defaults",
            install_hint="python3 -m venv /work/venv-nfstream && /work/venv-nfstream/bin/pip install nfstream, or set NFSTREAM_PYTHON",
        ),
        Contestant(
            name="tcpdump",
            argv=["tcpdump", "-r", "{pcap}", "-w", "/dev/null"],
            version_argv=["tcpdump", "--version"],
            version_pattern=r"(tcpdump version \S+)\s+(libpcap version \S+)",
            note="read and write only: the cost of libpcap I/O without any flow state",
            install_hint="apt-get install tcpdump",
        ),
        Contestant(
            name="edge-etc",
            argv=[EDGE_ETC, "run", "--pcap", "{pcap}", "-o", "/dev/null"],
            version_argv=[EDGE_ETC, "--version"],
            note="this project's classifier",
            install_hint="pip install the edge-etc package into /work/venv, or set EDGE_ETC",
            extra_args=edge_etc_args,
        ),
        Contestant(
            name="edge-etc-pure",
            # The same program with its compiled fast path switched off (edge_etc/fastpath.py).
            argv=["env", "EDGE_ETC_PURE_PYTHON=1", EDGE_ETC, "run", "--pcap", "{pcap}", "-o", "/dev/null"],
            version_argv=[EDGE_ETC, "--version"],
            note="this project's classifier, pure-Python packet path",
            install_hint="pip install the edge-etc package into /work/venv, or set EDGE_ETC",
            extra_args=edge_etc_args,
        ),
    ]


# --- measuring one run -----------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    children = []
    try:
        task_ids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task_id in task_ids:
        try:
            with open(f"/proc/{pid}/task/{task_id}/children") as stream:
                children.extend(int(value) for value in stream.read().split())
        except OSError:
            continue
    return children


def tree_memory_kb(root_pid: int) -> tuple[int, int, int]:
    """Return (summed Rss, summed Pss, process count) of all descendants of ROOT_PID, not ROOT_PID itself.

    Pss divides each shared page among the processes that map it, so the Pss sum is the
    tree's memory without counting shared pages (libraries, pages shared after fork) twice.
    """
    rss_total = pss_total = processes = 0
    pending = child_pids(root_pid)
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as stream:
                for line in stream:
                    if line.startswith("Rss:"):
                        rss_total += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss_total += int(line.split()[1])
                        break
        except OSError:
            continue  # the process ended between listing and reading
        processes += 1
        pending.extend(child_pids(pid))
    return rss_total, pss_total, processes


def parse_elapsed(text: str) -> float:
    """Convert /usr/bin/time's "h:mm:ss" or "m:ss.cc" elapsed time to seconds."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def parse_time_output(text: str) -> dict:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if not key:
            continue
        if key == "User time (seconds)":
            fields["user_s"] = float(value)
        elif key == "System time (seconds)":
            fields["sys_s"] = float(value)
        elif key == "Percent of CPU this job got":
            fields["cpu_percent"] = int(value.rstrip("%")) if value.rstrip("%").isdigit() else None
        elif key.startswith("Elapsed (wall clock) time"):
            fields["time_elapsed_s"] = parse_elapsed(value)
        elif key == "Maximum resident set size (kbytes)":
            fields["max_rss_kb"] = int(value)
        elif key == "Exit status":
            fields["exit_status"] = int(value)
    signal_match = re.search(r"Command terminated by signal (\d+)", text)
    if signal_match:
        fields["signal"] = int(signal_match.group(1))
    return fields


def measure(contestant: Contestant, pcap: str, packets: int, log_path: str, timeout_s: float, sample_interval_s: float) -> dict:
    time_path = log_path + ".time"
    argv = [TIME_BINARY, "-v", "-o", time_path] + contestant.command(pcap)
    result = {"contestant": contestant.name, "pcap": pcap, "command": argv[4:], "log": log_path}
    # Other work on the machine shows up here: a 1-minute load average near or above the
    # core count before the run means the contestant shared the CPU.
    result["load_avg_1m_before"] = round(os.getloadavg()[0], 2)

    peak_rss_kb = peak_pss_kb = peak_processes = 0
    timed_out = False
    with open(log_path, "wb") as log:
        start = time.monotonic()
        # A new session makes the run its own process group, so a timeout can end the
        # whole tree it started and nothing else.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        while True:
            try:
                process.wait(timeout=sample_interval_s)
                break
            except subprocess.TimeoutExpired:
                rss_kb, pss_kb, processes = tree_memory_kb(process.pid)
                peak_rss_kb = max(peak_rss_kb, rss_kb)
                peak_pss_kb = max(peak_pss_kb, pss_kb)
                peak_processes = max(peak_processes, processes)
                if time.monotonic() - start > timeout_s:
                    timed_out = True
                    os.killpg(process.pid, signal.SIGKILL)
        wall_s = time.monotonic() - start

    # /usr/bin/time writes no report when it is killed itself, for example on timeout.
    if os.path.exists(time_path):
        with open(time_path) as stream:
            result.update(parse_time_output(stream.read()))
        os.remove(time_path)

    result["wall_s"] = round(wall_s, 4)
    result["packets_per_s"] = round(packets / wall_s, 1)
    # None when the run ended before the first sample.
    result["tree_rss_kb"] = peak_rss_kb or None
    result["tree_pss_kb"] = peak_pss_kb or None
    result["tree_processes"] = peak_processes or None
    result["timed_out"] = timed_out
    result["ok"] = not timed_out and result.get("exit_status") == 0 and "signal" not in result

    if contestant.flows_pattern:
        with open(log_path, errors="replace") as stream:
            match = re.search(contestant.flows_pattern, stream.read())
        result["flows"] = int(match.group(1)) if match else None
    return result


# --- machine and versions --------------------------------------------------------------


def read_first(path: str, key: str) -> str | None:
    try:
        with open(path) as stream:
            for line in stream:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def describe_machine() -> dict:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": read_first("/proc/cpuinfo", "model name"),
        "mem_total": read_first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def contestant_version(contestant: Contestant) -> str | None:
    if contestant.version_argv is None:
        return None
    try:
        completed = subprocess.run(contestant.version_argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    match = re.search(contestant.version_pattern, completed.stdout + completed.stderr)
    return ", ".join(group.strip() for group in match.groups()) if match else None


# --- summary ---------------------------------------------------------------------------


def summarize(runs: list[dict], packets: int) -> dict:
    ok_runs = [run for run in runs if run["ok"]]
    summary = {"runs": len(runs), "ok_runs": len(ok_runs), "packets": packets}
    if not ok_runs:
        return summary

    def spread(key: str) -> dict | None:
        values = [run[key] for run in ok_runs if run.get(key) is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    for key in ("packets_per_s", "wall_s", "max_rss_kb", "tree_rss_kb", "tree_pss_kb", "tree_processes", "cpu_percent", "user_s", "sys_s"):
        summary[key] = spread(key)
    flows = sorted({run["flows"] for run in ok_runs if run.get("flows") is not None})
    if flows:
        summary["flows"] = flows
    return summary


def median_mib(summary: dict, key: str) -> str:
    if not summary.get(key):
        return "-"
    return f"{summary[key]['median'] / 1024:,.1f}"


def format_row(pcap: str, name: str, summary: dict) -> str:
    if not summary.get("ok_runs"):
        return f"| {pcap} | {name} | 0/{summary['runs']} | failed | | | | | |"
    pps = summary["packets_per_s"]
    processes = summary["tree_processes"]["max"] if summary.get("tree_processes") else "-"
    cpu = f"{summary['cpu_percent']['median']:.0f}" if summary.get("cpu_percent") else "-"
    return (
        f"| {pcap} | {name} | {summary['ok_runs']}/{summary['runs']} "
        f"| {pps['median']:,.0f} ({pps['min']:,.0f}-{pps['max']:,.0f}) "
        f"| {summary['wall_s']['median']:.2f} | {cpu} "
        f"| {median_mib(summary, 'max_rss_kb')} | {median_mib(summary, 'tree_pss_kb')} | {processes} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pcaps", nargs="+", metavar="FILE", help="classic pcap files to measure")
    parser.add_argument("--runs", type=int, default=3, help="runs per contestant and file (default 3)")
    parser.add_argument(
        "--contestants",
        default="ndpiReader,nfstream,tcpdump,edge-etc",
        help="comma-separated contestant names, in run order (default: all)",
    )
    parser.add_argument("--edge-etc-args", default="", help='extra arguments for edge-etc run, for example "--model m.tflite"')
    parser.add_argument("-o", "--out", default=os.path.join(HERE, "runs", "peers.json"), help="JSON results file")
    parser.add_argument("--log-dir", default=None, help="folder for each run's output (default: next to --out)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds after which one run is killed (default 1800)")
    parser.add_argument("--sample-interval", type=float, default=0.05, help="seconds between memory samples (default 0.05)")
    args = parser.parse_args()

    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if not os.access(TIME_BINARY, os.X_OK):
        print(f"error: {TIME_BINARY} not found. Install the Debian package time.", file=sys.stderr)
        return 1

    all_contestants = {c.name: c for c in build_contestants(args.edge_etc_args.split())}
    selected = []
    for name in args.contestants.split(","):
        if name not in all_contestants:
            parser.error(f"unknown contestant {name!r}; choose from {', '.join(all_contestants)}")
        contestant = all_contestants[name]
        reason = contestant.missing_reason()
        if reason:
            print(f"skipping {name}: {reason}. To include it: {contestant.install_hint}", flush=True)
            continue
        selected.append(contestant)
    if not selected:
        print("error: no contestant can run", file=sys.stderr)
        return 1

    log_dir = args.log_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), "logs")
    os.makedirs(log_dir, exist_ok=True)

    report = {
        "machine": describe_machine(),
        "versions": {c.name: contestant_version(c) for c in selected},
        "contestants": {c.name: {"command": c.command("FILE"), "note": c.note} for c in selected},
        "skipped": {name: c.missing_reason() for name, c in all_contestants.items() if c not in selected and c.missing_reason()},
        "runs_per_contestant": args.runs,
        "results": [],
        "summary": {},
    }

    rows = []
    for pcap in args.pcaps:
        packets = pcapfile.count_packets(pcap)
        stem = os.path.splitext(os.path.basename(pcap))[0]
        print(f"{pcap}: {packets} packets", flush=True)
        runs_by_name = {c.name: [] for c in selected}

        for run_index in range(args.runs):
            for contestant in selected:
                log_path = os.path.join(log_dir, f"{stem}.{contestant.name}.{run_index + 1}.log")
                result = measure(contestant, pcap, packets, log_path, args.timeout, args.sample_interval)
                result["run"] = run_index + 1
                runs_by_name[contestant.name].append(result)
                report["results"].append(result)

                if result["ok"]:
                    status = "ok"
                else:
                    status = (
                        f"FAILED (exit status {result.get('exit_status')}, signal {result.get('signal')}, "
                        f"timed out {result['timed_out']}, output in {log_path})"
                    )
                print(
                    f"  run {run_index + 1} {contestant.name}: {result['wall_s']:.2f} s, "
                    f"{result['packets_per_s']:,.0f} packets/s, max RSS {result.get('max_rss_kb', 0) / 1024:.1f} MiB, "
                    f"tree Pss {(result['tree_pss_kb'] or 0) / 1024:.1f} MiB, "
                    f"load before {result['load_avg_1m_before']}, {status}",
                    flush=True,
                )

        for name, runs in runs_by_name.items():
            summary = summarize(runs, packets)
            report["summary"].setdefault(pcap, {})[name] = summary
            rows.append(format_row(os.path.basename(pcap), name, summary))

        # Rewrite the results file after every capture, so a later failure keeps the earlier figures.
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as stream:
            json.dump(report, stream, indent=2)

    print()
    print(
        "| file | contestant | ok runs | packets/s median (min-max) | wall s median | CPU % median "
        "| max RSS MiB median | tree Pss MiB median | processes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
