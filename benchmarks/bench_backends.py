"""Throughput and agreement of the numpy backend against ai-edge-litert.

    python benchmarks/bench_backends.py [--model FILE] [--batches N] [--windows N]
    python benchmarks/bench_backends.py --rss [--windows 10000]

The first form prints windows per second at batch 64 for the numpy backend and for
ai-edge-litert, both its default interpreter (XNNPACK) and its reference kernels. It then
prints, for each pair, the share of random windows with identical int8 outputs, the
largest difference in quantization steps and the share of equal labels.

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
BATCH = 64


def resized(interpreter):
    detail = interpreter.get_input_details()[0]
    shape = list(detail["shape"])
    shape[0] = BATCH
    interpreter.resize_tensor_input(detail["index"], shape, strict=False)
    interpreter.allocate_tensors()
    return interpreter


def random_input(interpreter, windows, seed=0):
    """Return int8 model inputs for random window bytes, as the runner quantizes them."""
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    lut = np.clip(np.rint(np.arange(256) / 255.0 / scale) + zero_point, -128, 127).astype(np.int8)
    shape = (windows,) + tuple(int(d) for d in detail["shape"][1:])
    return lut[np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)]


def run(interpreter, x):
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    results = []
    for start in range(0, len(x) - BATCH + 1, BATCH):
        interpreter.set_tensor(inp, x[start:start + BATCH])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out))
    return np.concatenate(results)


def measure_rss(model, windows):
    """Run in a process that imports only numpy and the numpy backend."""
    from edge_etc.numpy_backend import Interpreter

    interpreter = resized(Interpreter(model_path=model))
    x = random_input(interpreter, windows)
    start = time.perf_counter()
    run(interpreter, x)
    elapsed = time.perf_counter() - start
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "ai_edge_litert", "tflite_runtime"))
    print(json.dumps({"windows": len(x) // BATCH * BATCH, "seconds": round(elapsed, 3),
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "other_interpreters_imported": heavy}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="int8 .tflite model")
    parser.add_argument("--batches", type=int, default=200, help="batches of 64 windows per timing")
    parser.add_argument("--windows", type=int, default=10000, help="windows for --rss and agreement")
    parser.add_argument("--rss", action="store_true", help="measure peak RSS in a child process")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.rss_child:
        measure_rss(args.model, args.windows)
        return
    if args.rss:
        subprocess.run([sys.executable, __file__, "--rss-child", "--model", args.model,
                        "--windows", str(args.windows)], check=True)
        return

    from ai_edge_litert.interpreter import Interpreter as LiteRT
    from ai_edge_litert.interpreter import OpResolverType

    from edge_etc.numpy_backend import Interpreter

    with open(args.model, "rb") as f:
        data = f.read()
    interpreters = {
        "numpy": resized(Interpreter(model_content=data)),
        "litert": resized(LiteRT(model_content=data, num_threads=1)),
        "litert-reference": resized(LiteRT(model_content=data, num_threads=1,
                                           experimental_op_resolver_type=OpResolverType.BUILTIN_REF)),
    }
    x = random_input(interpreters["numpy"], BATCH * args.batches, seed=1)
    for name, interpreter in interpreters.items():
        run(interpreter, x[:BATCH * 2])  # warm-up
        start = time.perf_counter()
        run(interpreter, x)
        elapsed = time.perf_counter() - start
        print(f"{name:17s} {len(x) / elapsed:10.0f} windows/s (batch {BATCH}, {len(x)} windows)")

    x = random_input(interpreters["numpy"], args.windows, seed=2)
    outputs = {name: run(interpreter, x).astype(np.int32) for name, interpreter in interpreters.items()}
    for a, b in (("numpy", "litert-reference"), ("numpy", "litert"), ("litert-reference", "litert")):
        steps = np.abs(outputs[a] - outputs[b]).max(axis=1)
        labels = np.mean(outputs[a].argmax(axis=1) == outputs[b].argmax(axis=1))
        print(f"{a} vs {b}: identical {np.mean(steps == 0):.4%}, max {steps.max()} steps, "
              f"labels equal {labels:.4%} ({len(steps)} random windows)")


if __name__ == "__main__":
    main()
