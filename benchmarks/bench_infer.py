"""Inference speed of the bundled int8 model: windows per second per interpreter and batch.

Windows are seeded random bytes (the interpreter's cost does not depend on the values).
Each configuration is warmed up for one call, then timed over at least `--seconds`.

Usage: python benchmarks/bench_infer.py [--model FILE] [--backends litert,numpy] [--json OUT]
"""

import argparse
import json
import os
import platform
import time

# As the CLI does: one BLAS thread, set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from edge_etc.errors import EdgeEtcError  # noqa: E402
from edge_etc.infer import Classifier  # noqa: E402
from edge_etc.model import default_model_path, load_model_info  # noqa: E402


def measure(model, backend, batch, seconds, seed=0):
    classifier = Classifier(model, batch_size=batch, backend=backend)
    pre = model.preprocessing
    rng = np.random.default_rng(seed)
    size = pre.window_packets * pre.vector_bytes
    windows = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(batch * 8)]
    classifier.predict(windows[:batch])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict(windows)
        done += len(windows)
    elapsed = time.perf_counter() - started
    return {"backend": classifier.backend_name, "version": classifier.backend_version,
            "batch": batch, "windows": done, "seconds": round(elapsed, 3),
            "windows_per_s": round(done / elapsed)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--backends", default="litert,tflite-runtime,numpy")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        model = load_model_info(args.model)
    except EdgeEtcError as e:
        raise SystemExit(f"bench_infer: {e}")
    rows = []
    for backend in args.backends.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                row = measure(model, backend, batch, args.seconds)
            except EdgeEtcError as e:
                print(f"{backend}: skipped: {e}")
                break
            rows.append(row)
            print(f"{row['backend']} {row['version']}: batch {batch}: {row['windows_per_s']} windows/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.machine(), "python": platform.python_version(),
                       "numpy": np.__version__, "model": args.model, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
