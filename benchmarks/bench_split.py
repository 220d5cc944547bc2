"""Split the CPU time of `edge-etc run` on a capture into the steps of its per-packet path.

Each stage runs the capture from the start and adds one step to the one before, so the
cost of a step is the difference between its stage and the previous one:

    read         CaptureFile iteration alone
    decode       + Decoder.decode
    table        + FlowTable.add, with vectorize replaced by a constant vector
    vectorize    + the real vectorize
    infer        + Pipeline.process and batched inference, records dropped unformatted
    json         + JSON lines written to /dev/null (the whole runner)

`interpreter` is measured apart: the windows of one table pass run through
Classifier.predict alone (quantizing, set_tensor, invoke, dequantizing).

Figures are CPU seconds of this process (time.process_time), which sharing the core with
other jobs inflates less than wall time. Run it pinned, e.g.:

    taskset -c 1 python benchmarks/bench_split.py benchmarks/data/mix_1m.pcap
    EDGE_ETC_PURE_PYTHON=1 taskset -c 1 python benchmarks/bench_split.py ...   # pure Python

The bundled model and the runner's default settings are used (65,536 flows, 5 windows
per flow, batches of 64).
"""

import argparse
import json
import sys
import time

from edge_etc import fastpath
from edge_etc import flows as flows_module
from edge_etc.capfile import CaptureFile
from edge_etc.decode import Decoder
from edge_etc.errors import PacketError
from edge_etc.flows import FlowTable
from edge_etc.infer import Classifier
from edge_etc.model import default_model_path, load_model_info
from edge_etc.runner import JsonLines, Pipeline, run_file

BATCH = 64


class _Control:
    stop = False

    def tick(self):
        pass


def stage_read(path, model):
    count = 0
    for _record in CaptureFile(path):
        count += 1
    return count


def stage_decode(path, model):
    decode = Decoder().decode
    count = 0
    for record in CaptureFile(path):
        try:
            decode(*record)
        except PacketError:
            pass
        count += 1
    return count


def _table_pass(path, model, on_window):
    decode = Decoder().decode
    table = FlowTable(model.preprocessing, on_window)
    add = table.add
    for record in CaptureFile(path):
        try:
            pkt = decode(*record)
        except PacketError:
            continue
        if pkt is not None:
            add(pkt)


def stage_table(path, model):
    settings = model.preprocessing
    constant = bytes(settings.vector_bytes - settings.port_buckets)
    real = flows_module.vectorize
    flows_module.vectorize = lambda *args, **kwargs: constant
    windows = []
    try:
        _table_pass(path, model, lambda flow, ts, window: windows.append(None))
    finally:
        flows_module.vectorize = real
    return len(windows)


def stage_vectorize(path, model):
    windows = []
    _table_pass(path, model, lambda flow, ts, window: windows.append(None))
    return len(windows)


def _pipeline_pass(path, model, write):
    pipeline = Pipeline(Classifier(model, batch_size=BATCH), write, batch_size=BATCH)
    with CaptureFile(path) as capture:
        run_file(pipeline, capture, _Control())
    pipeline.finish()
    return pipeline.stats.windows


def stage_infer(path, model):
    return _pipeline_pass(path, model, lambda record: None)


def stage_json(path, model):
    out = JsonLines(path="/dev/null")
    try:
        return _pipeline_pass(path, model, out)
    finally:
        out.close()


STAGES = [("read", stage_read), ("decode", stage_decode), ("table", stage_table),
          ("vectorize", stage_vectorize), ("infer", stage_infer), ("json", stage_json)]


def interpreter_seconds(path, model):
    """Return (windows, CPU seconds of Classifier.predict over them in batches)."""
    windows = []
    _table_pass(path, model, lambda flow, ts, window: windows.append(window))
    classifier = Classifier(model, batch_size=BATCH)
    start = time.process_time()
    for i in range(0, len(windows), BATCH):
        classifier.predict(windows[i:i + BATCH])
    return len(windows), time.process_time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pcap", help="classic pcap or pcapng file")
    parser.add_argument("--json", help="append the figures as one JSON line to this file")
    args = parser.parse_args()

    model = load_model_info(default_model_path())
    print(f"packet path: {fastpath.describe()}", flush=True)
    result = {"pcap": args.pcap, "packet_path": fastpath.describe(), "stages": {}}
    previous = 0.0
    for name, stage in STAGES:
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        count = stage(args.pcap, model)
        cpu = time.process_time() - cpu_start
        wall = time.perf_counter() - wall_start
        result["stages"][name] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "count": count}
        print(f"{name:10s} cpu {cpu:6.2f} s (step {cpu - previous:+6.2f} s)  wall {wall:6.2f} s  "
              f"count {count}", flush=True)
        previous = cpu
    windows, seconds = interpreter_seconds(args.pcap, model)
    result["interpreter"] = {"windows": windows, "cpu_s": round(seconds, 3)}
    print(f"interpreter: {windows} windows in {seconds:.2f} CPU s "
          f"({seconds / max(windows, 1) * 1e6:.1f} us per window)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
