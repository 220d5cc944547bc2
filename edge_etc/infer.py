"""Batched int8 inference with a TFLite interpreter.

Backends, tried in this order unless one is asked for:
- `ai-edge-litert` (module `ai_edge_litert.interpreter`), which runs with numpy 2;
- `tflite-runtime` (module `tflite_runtime.interpreter`), whose last release (2.14) needs
  numpy < 2 and fails only when the interpreter is created. That failure is turned into an
  error that says so.
- `numpy` (`edge_etc.numpy_backend`), an int8 interpreter of edge-etc's own for machines
  where no TFLite wheel installs (OpenWrt on musl, MIPS, 32-bit ARM). With "auto" it is the
  last resort, and the start-up log names it. It computes what ai-edge-litert's default
  interpreter computes (XNNPACK's arithmetic); `numpy-reference` runs it with TFLite's
  reference kernels instead.

Quantization: model inputs are the packet bytes scaled to [0, 1] (byte / 255). The runner
quantizes them with the model's own input scale and zero point,
q = clip(round(byte / 255 / scale) + zero_point, -128, 127), through a 256-entry lookup
table, and dequantizes outputs as (q - zero_point) * scale after widening to int32. A model
of several averaged networks (`edge-etc train --members`) outputs each network's
probabilities, and their mean is taken after dequantizing, so it is not rounded to the
output's int8 steps. A model with a server port prior (edge_etc.port_prior) has it
multiplied into that mean.
"""

import contextlib
import functools
import logging
import os
import sys
import tempfile

import numpy as np

from .errors import InterpreterError, ModelError
from .port_prior import window_server_ports

log = logging.getLogger(__name__)

BACKENDS = ("auto", "litert", "tflite-runtime", "numpy", "numpy-reference")

# Start-up log description of each kernel family of the numpy backend.
_NUMPY_KERNELS = {
    "xnnpack": "XNNPACK's integer arithmetic, as ai-edge-litert's default interpreter runs it",
    "reference": "TFLite's reference kernels, as ai-edge-litert runs them with OpResolverType.BUILTIN_REF",
}


def _package_version(module_name, distribution):
    """Return a package's version: its module's __version__, else its installed metadata.

    importlib.metadata is imported only when needed: it added 1.2 MiB to the resident
    memory before the first packet (measured with ai-edge-litert 2.3.0 on x86-64).
    """
    version = getattr(sys.modules[module_name], "__version__", None)
    if version:
        return str(version)
    import importlib.metadata

    return importlib.metadata.version(distribution)


def _import_backend(name):
    if name == "litert":
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert", _package_version("ai_edge_litert", "ai-edge-litert")
    if name == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime", _package_version("tflite_runtime", "tflite-runtime")
    if name in ("numpy", "numpy-reference"):
        from . import __version__
        from .numpy_backend import Interpreter
        if name == "numpy-reference":
            return functools.partial(Interpreter, kernels="reference"), "edge-etc numpy", __version__
        return Interpreter, "edge-etc numpy", __version__
    raise InterpreterError(f"unknown interpreter backend {name!r}; expected one of {', '.join(BACKENDS)}")


def find_interpreter(backend="auto"):
    """Return (Interpreter class, package name, version) for `backend`.

    With "auto", the numpy backend (`edge_etc.numpy_backend`, TFLite's reference integer
    arithmetic in numpy) runs when no TFLite interpreter imports, after a warning.

    Raises:
        InterpreterError: the requested backend fails to import.
    """
    names = ("litert", "tflite-runtime") if backend == "auto" else (backend,)
    errors = []
    for name in names:
        try:
            return _import_backend(name)
        except ImportError as e:  # importlib.metadata.PackageNotFoundError is one too
            errors.append(f"{name}: {e}")
    if backend == "auto":
        log.warning("no TFLite interpreter could be imported (%s); using the numpy backend, "
                    "which is slower; install ai-edge-litert where a wheel exists",
                    "; ".join(errors))
        return _import_backend("numpy")
    package = {"tflite-runtime": "tflite-runtime", "numpy": "numpy",
               "numpy-reference": "numpy"}.get(backend, "ai-edge-litert")
    raise InterpreterError("no TFLite interpreter could be imported (" + "; ".join(errors) +
                           f"); install one with: pip install {package}")


@contextlib.contextmanager
def native_stderr_to_log():
    """Route what native code writes to file descriptor 2 into `logging`.

    The TFLite interpreters print lines such as "INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU." straight to the process's stderr, past `-q` and the log format.
    Lines starting with "INFO:" go to DEBUG, others to WARNING.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    failed = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        except BaseException:
            failed = True  # the caller reports the failure in one line; the rest is detail
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    quiet = failed or line.startswith("INFO:")
                    log.log(logging.DEBUG if quiet else logging.WARNING, "interpreter: %s", line)


def input_lut(scale, zero_point):
    """Return the 256-entry table mapping a packet byte to the model's int8 input."""
    if scale <= 0:
        raise ModelError(f"model input scale {scale} is invalid: expected > 0")
    values = np.rint(np.arange(256, dtype=np.float64) / 255.0 / scale) + zero_point
    return np.clip(values, -128, 127).astype(np.int8)


def dequantize(q, scale, zero_point):
    """Return float32 values of int8 tensor `q`, widened before subtracting."""
    return ((q.astype(np.int32) - zero_point) * scale).astype(np.float32)


def average_networks(values, networks):
    """Return the float32 mean over the network blocks of `values`, rows of `networks`
    blocks of one value per class each, side by side."""
    if networks == 1:
        return values
    return values.reshape(len(values), networks, -1).mean(axis=1, dtype=np.float32)


class Classifier:
    """Runs windows through an int8 TFLite model in batches.

    Args:
        model: a `ModelInfo`.
        batch_size: windows per interpreter call; shorter batches are padded.
        backend: "auto", "litert", "tflite-runtime", "numpy" or "numpy-reference". With
            "auto", an interpreter that imports but cannot be created hands over to the
            numpy backend.
        num_threads: interpreter threads.

    Raises:
        InterpreterError: no interpreter, or it cannot be created for this model.
        ModelError: the model's input or output is not what edge-etc expects.
    """

    def __init__(self, model, batch_size=64, backend="auto", num_threads=1):
        self.model = model
        pre = model.preprocessing
        self.window_shape = (pre.window_packets, pre.vector_bytes)
        try:
            self._create(backend, num_threads)
        except InterpreterError as e:
            if backend != "auto" or self.backend_name == "edge-etc numpy":
                raise
            # tflite-runtime 2.14 imports under numpy 2 and fails only here: fall back.
            log.warning("%s; using the numpy backend instead", e)
            self._create("numpy", num_threads)
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelError(f"{model.path}: expected one input and one output tensor, found "
                             f"{len(inp)} and {len(out)}")
        inp, out = inp[0], out[0]
        if inp["dtype"] != np.int8 or out["dtype"] != np.int8:
            raise ModelError(f"{model.path}: expected int8 input and output, found "
                             f"{np.dtype(inp['dtype']).name} and {np.dtype(out['dtype']).name}")
        if tuple(inp["shape"][1:]) != self.window_shape:
            raise ModelError(f"{model.path}: model input shape {tuple(inp['shape'])} does not match "
                             f"its preprocessing settings (expected (batch, {self.window_shape[0]}, "
                             f"{self.window_shape[1]}))")
        # A model of several averaged networks outputs each network's probabilities, one
        # block of len(labels) after the other, and their mean is taken here in float32.
        self.networks = model.networks
        if out["shape"][-1] != self.networks * len(model.labels):
            raise ModelError(f"{model.path}: model has {out['shape'][-1]} outputs but "
                             f"{len(model.labels)} labels and {self.networks} networks; convert it "
                             "again with 'edge-etc convert'")
        self._input_index = inp["index"]
        self._output_index = out["index"]
        in_scale, in_zero = inp["quantization"]
        self.out_scale, self.out_zero = out["quantization"]
        self.lut = input_lut(in_scale, in_zero)
        # With scale 1/255 (the bundled model's, from calibration inputs spanning [0, 1]) the
        # table is the byte plus a constant modulo 256, as int8 wraps. Then one vectorized
        # uint8 addition replaces the lookup. None when the table is anything else.
        offset = int(self.lut[0]) & 0xFF
        affine = (np.arange(256) + offset) & 0xFF
        self._lut_offset = np.uint8(offset) if np.array_equal(self.lut.view(np.uint8), affine) else None
        self.batch_size = batch_size
        try:
            if inp["shape"][0] != batch_size:
                self.interpreter.resize_tensor_input(self._input_index,
                                                     [batch_size, *self.window_shape], strict=False)
            with native_stderr_to_log():
                self.interpreter.allocate_tensors()
        except Exception as e:
            raise InterpreterError(f"{model.path}: cannot allocate tensors for batch size "
                                   f"{batch_size}: {e}") from None
        self._batch = np.zeros((batch_size, *self.window_shape), dtype=np.int8)
        log.info("interpreter: %s %s; model %s: input int8 %s scale=%.6g zero_point=%d, "
                 "%d classes%s, batch %d", self.backend_name, self.backend_version, model.path,
                 self.window_shape, in_scale, in_zero, len(model.labels),
                 f" (mean of {self.networks} networks)" if self.networks > 1 else "", batch_size)
        kernels = getattr(self.interpreter, "kernels", None)
        if kernels in _NUMPY_KERNELS:
            log.info("numpy backend kernels: %s (%s)", kernels, _NUMPY_KERNELS[kernels])

    def _create(self, backend, num_threads):
        Interpreter, self.backend_name, self.backend_version = find_interpreter(backend)
        model = self.model
        try:
            with native_stderr_to_log():
                self.interpreter = Interpreter(model_content=model.data, num_threads=num_threads)
        except ModelError as e:  # the numpy backend names an unsupported operator
            raise ModelError(f"{model.path}: {e}") from None
        except Exception as e:  # the interpreters raise ValueError or RuntimeError, or numpy's ImportError
            if self.backend_name == "tflite-runtime" and np.__version__.startswith("2"):
                raise InterpreterError(
                    f"tflite-runtime {self.backend_version} cannot run with numpy {np.__version__}: "
                    "it needs numpy<2; install 'numpy<2', or ai-edge-litert instead") from None
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InterpreterError(f"{model.path}: {self.backend_name} could not load the model: "
                                   f"{detail}") from None

    def predict(self, windows, port_prior=True):
        """Return class probabilities, shape (len(windows), classes), for raw windows.

        Args:
            windows: a sequence of byte strings of window_packets * vector_bytes bytes, or
                a 2-D uint8 array with one window per row.
            port_prior: apply the model's server port prior, if it has one. False returns
                the networks' mean alone, as `edge-etc convert` compares it with the float
                model.
        """
        prior = self.model.port_prior if port_prior else None
        n = len(windows)
        out = np.empty((n, len(self.model.labels)), dtype=np.float32)
        size = self.batch_size
        flat = self._batch.reshape(size, -1)
        flat_bytes = flat.view(np.uint8)
        rows = windows if isinstance(windows, np.ndarray) else None
        if rows is not None and (rows.dtype != np.uint8 or rows.ndim != 2 or
                                 rows.shape[1] != flat.shape[1]):
            raise ValueError(f"expected uint8 windows of shape (n, {flat.shape[1]}), got "
                             f"{rows.dtype} {rows.shape}")
        for start in range(0, n, size):
            if rows is not None:
                raw = rows[start:start + size]
            else:
                chunk = windows[start:start + size]
                raw = np.frombuffer(b"".join(chunk), dtype=np.uint8).reshape(len(chunk), -1)
            count = len(raw)
            if self._lut_offset is not None:
                np.add(raw, self._lut_offset, out=flat_bytes[:count])
            else:
                flat[:count] = self.lut[raw]
            if count < size:
                flat[count:] = 0
            self.interpreter.set_tensor(self._input_index, self._batch)
            self.interpreter.invoke()
            q = self.interpreter.get_tensor(self._output_index)
            probabilities = dequantize(q[:count], self.out_scale, self.out_zero)
            probabilities = average_networks(probabilities, self.networks)
            if prior is not None:
                ports = window_server_ports(raw, self.model.preprocessing)
                probabilities = prior.apply(probabilities, ports)
            out[start:start + count] = probabilities
        return out
