"""Throughput and agreement of the numpy backend against ai-edge-litert.

    python benchmarks/bench_backends.py [--model FILE] [--corpus DIR] [--batches N] [--windows N]
    python benchmarks/bench_backends.py --rss [--kernels xnnpack|reference] [--windows 10000]

The first form prints windows per second at batch 64 and batch 1 for the numpy backend
with each kernel family and for ai-edge-litert, both its default interpreter (XNNPACK
delegate) and its reference kernels (OpResolverType.BUILTIN_REF). It then prints, for
pairs of interpreters, the share of windows with identical int8 outputs, the largest
difference in quantization steps and the share of equal labels. Agreement is measured on
random windows and, when the corpus is present (`--corpus`, else $EDGE_ETC_CORPUS, else
../shared/corpus), on every window of every corpus flow, built with the model's own
preprocessing. For the corpus it also compares flow labels by the runner's decision
rule: the argmax of the mean probabilities of a flow's first 5 windows.

`--rss` runs in a child process that imports only numpy and edge_etc.numpy_backend, runs
the windows through the numpy backend and prints the peak resident set size (Linux
ru_maxrss). Windows are random bytes quantized with the model's input parameters.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "edge_etc", "models", "default.tflite")
DEFAULT_CORPUS = os.environ.get("EDGE_ETC_CORPUS") or os.path.join(ROOT, "..", "shared", "corpus")
BATCH = 64
FLOW_WINDOWS = 5  # windows per flow decision compared (the runner decides on 1 by default)
PAIRS = (("numpy", "litert"), ("numpy-reference", "litert-reference"),
         ("numpy-reference", "litert"), ("litert-reference", "litert"))


def resized(interpreter, batch=BATCH):
    detail = interpreter.get_input_details()[0]
    shape = list(detail["shape"])
    shape[0] = batch
    interpreter.resize_tensor_input(detail["index"], shape, strict=False)
    interpreter.allocate_tensors()
    return interpreter


def input_table(interpreter):
    """Return the byte-to-int8 table the runner quantizes inputs with."""
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    return np.clip(np.rint(np.arange(256) / 255.0 / scale) + zero_point, -128, 127).astype(np.int8)


def random_input(interpreter, windows, seed=0):
    """Return int8 model inputs for random window bytes, as the runner quantizes them."""
    detail = interpreter.get_input_details()[0]
    shape = (windows,) + tuple(int(d) for d in detail["shape"][1:])
    return input_table(interpreter)[np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)]


def run(interpreter, x, batch=BATCH):
    """Return the outputs for `x`; a last partial batch is padded with zeros."""
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + x.shape[1:], x.dtype)])
        interpreter.set_tensor(inp, chunk)
        interpreter.invoke()
        results.append(interpreter.get_tensor(out).copy())
    return np.concatenate(results)[:len(x)]


def measure_rss(model, windows, kernels):
    """Run in a process that imports only numpy and the numpy backend."""
    from edge_etc.numpy_backend import Interpreter

    interpreter = resized(Interpreter(model_path=model, kernels=kernels))
    x = random_input(interpreter, windows)
    start = time.perf_counter()
    run(interpreter, x)
    elapsed = time.perf_counter() - start
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "ai_edge_litert", "tflite_runtime"))
    print(json.dumps({"kernels": kernels, "windows": len(x), "seconds": round(elapsed, 3),
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "other_interpreters_imported": heavy}))


def create_interpreters(data, batch):
    from ai_edge_litert.interpreter import Interpreter as LiteRT
    from ai_edge_litert.interpreter import OpResolverType

    from edge_etc.numpy_backend import Interpreter

    return {
        "numpy": resized(Interpreter(model_content=data, kernels="xnnpack"), batch),
        "numpy-reference": resized(Interpreter(model_content=data, kernels="reference"), batch),
        "litert": resized(LiteRT(model_content=data, num_threads=1), batch),
        "litert-reference": resized(LiteRT(model_content=data, num_threads=1,
                                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF),
                                    batch),
    }


def measure_speed(data, batches):
    for batch in (BATCH, 1):
        interpreters = create_interpreters(data, batch)
        x = random_input(interpreters["numpy"], batch * batches if batch > 1 else batches * 16, seed=1)
        for name, interpreter in interpreters.items():
            run(interpreter, x[:batch * 2], batch)  # warm-up
            start = time.perf_counter()
            run(interpreter, x, batch)
            elapsed = time.perf_counter() - start
            print(f"{name:17s} {len(x) / elapsed:10.0f} windows/s (batch {batch}, {len(x)} windows)")


def corpus_windows(corpus, model_path):
    """Return (uint8 windows, flow numbers, positions) of every window of every corpus flow."""
    from edge_etc.convert import dataset
    from edge_etc.model import load_model_info

    settings = load_model_info(model_path).preprocessing
    windows = dataset.build_windows(corpus, settings, max_windows_per_flow=1 << 30)
    return windows.x, windows.flow, windows.position


def class_scores(outputs, networks):
    """Return scores proportional to the class probabilities the runner computes. Each
    network's softmax has zero point -128, and a model of several networks outputs one
    block per network, which the runner averages."""
    from edge_etc.infer import average_networks

    return average_networks(outputs.astype(np.int32) + 128, networks)


def flow_labels(outputs, flow, position, networks):
    """Return the class per flow: argmax of the mean of its first FLOW_WINDOWS outputs."""
    chosen = position < FLOW_WINDOWS
    flows, inverse = np.unique(flow[chosen], return_inverse=True)
    scores = class_scores(outputs[chosen], networks)
    sums = np.zeros((len(flows), scores.shape[1]))
    np.add.at(sums, inverse, scores)
    return sums.argmax(axis=1)


def print_agreement(outputs, window_set, networks, flow=None, position=None):
    for a, b in PAIRS:
        steps = np.abs(outputs[a] - outputs[b]).max(axis=1)
        labels = np.mean(class_scores(outputs[a], networks).argmax(axis=1)
                         == class_scores(outputs[b], networks).argmax(axis=1))
        line = (f"{a} vs {b}: identical {np.mean(steps == 0):.4%} ({int(np.sum(steps > 0))} differ), "
                f"max {steps.max()} steps, labels equal {labels:.4%} ({len(steps)} {window_set})")
        if flow is not None:
            flows_a = flow_labels(outputs[a], flow, position, networks)
            flows_b = flow_labels(outputs[b], flow, position, networks)
            line += f"; flow labels equal {int(np.sum(flows_a == flows_b))} of {len(flows_a)}"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="int8 .tflite model")
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="corpus folder (MANIFEST.tsv, FLOWS.tsv)")
    parser.add_argument("--batches", type=int, default=200, help="batches of 64 windows per timing")
    parser.add_argument("--windows", type=int, default=10000, help="windows for --rss and random agreement")
    parser.add_argument("--kernels", default="xnnpack", choices=("xnnpack", "reference"),
                        help="numpy backend kernels for --rss")
    parser.add_argument("--rss", action="store_true", help="measure peak RSS in a child process")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-speed", action="store_true", help="measure agreement only")
    args = parser.parse_args()

    if args.rss_child:
        measure_rss(args.model, args.windows, args.kernels)
        return
    if args.rss:
        subprocess.run([sys.executable, __file__, "--rss-child", "--model", args.model,
                        "--windows", str(args.windows), "--kernels", args.kernels], check=True)
        return

    with open(args.model, "rb") as f:
        data = f.read()
    if not args.no_speed:
        measure_speed(data, args.batches)

    interpreters = create_interpreters(data, BATCH)
    x = random_input(interpreters["numpy"], args.windows, seed=2)
    outputs = {name: run(i, x).astype(np.int32) for name, i in interpreters.items()}
    from edge_etc.model import load_model_info

    networks = load_model_info(args.model).networks
    print_agreement(outputs, "random windows", networks)

    if os.path.isfile(os.path.join(args.corpus, "FLOWS.tsv")):
        raw, flow, position = corpus_windows(args.corpus, args.model)
        x = input_table(interpreters["numpy"])[raw]
        outputs = {name: run(i, x).astype(np.int32) for name, i in interpreters.items()}
        print_agreement(outputs, "corpus windows", networks, flow, position)
    else:
        print(f"corpus not found at {args.corpus}: corpus agreement not measured")


if __name__ == "__main__":
    main()
