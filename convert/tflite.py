"""`edge-etc convert`: Keras CNN-LSTM to full-integer int8 TFLite, with a parity report.

Steps:
1. Load the Keras model and check it: one input of shape (packets, bytes), one softmax
   output; layers without an int8 path in the TFLite converter (GRU, ConvLSTM, SimpleRNN
   that cannot unroll) are rejected by name.
2. Rebuild it with every LSTM unrolled and `recurrent_dropout` set to 0 (training-only),
   weights copied: the TFLite converter quantizes only the unrolled form. For the
   conversion, an LSTM that returns its last state is then written out with one dense
   layer per gate (`gate_lstm.GateLSTM`), which rounds less in int8. A model that
   averages several networks (its last layer an Average of softmaxes) is converted with
   the networks' probabilities side by side as its output (`member_outputs`); the runner
   averages them after dequantizing.
3. Calibrate and convert in a child process (`edge_etc.convert.convert_worker`), because
   the converter can die with a segmentation fault; a crash becomes a one-line error.
   Calibration windows come from the shared preprocessing on the training captures: raw
   or zero calibration data collapses an int8 model to one class.
4. Store labels and preprocessing settings as metadata inside the `.tflite`.
5. Parity: run held-out windows through the Keras model and, with the runner's own
   `edge_etc.infer.Classifier`, through the int8 model; report argmax agreement, the
   largest and mean probability difference, the size and the operator list. A model whose agreement
   is under `MIN_AGREEMENT` is not written unless forced.

Settings and labels come from `model.json` next to the `.h5` (written by `edge-etc
train`); a model trained elsewhere with an input of shape (3, N) gets the default
preprocessing for N bytes and the corpus's class list when it has as many outputs.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np

from edge_etc.errors import ConfigError, EdgeEtcError, ModelError
from edge_etc.preprocess import Preprocessing

from . import dataset, load_keras

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.95
CALIBRATION_WINDOWS = 2000
PARITY_WINDOWS = 5000

# Layers whose int8 conversion fails in the TFLite converter of TensorFlow 2.21.
_NO_INT8_PATH = {
    "GRU": "GRU has no int8 path in the TFLite converter; use LSTM",
    "ConvLSTM1D": "ConvLSTM has no int8 path in the TFLite converter",
    "ConvLSTM2D": "ConvLSTM has no int8 path in the TFLite converter",
    "ConvLSTM3D": "ConvLSTM has no int8 path in the TFLite converter",
    "Bidirectional": "Bidirectional wrappers are not supported; use a forward LSTM",
}


class ConversionError(EdgeEtcError):
    """The converter failed or crashed."""


def check_keras_path(path):
    """Raise ModelError unless `path` is a file that may hold a Keras model: a TFLite
    model or a file of neither HDF5 nor zip format (a .keras file is a zip) is named as such."""
    if not os.path.isfile(path):
        raise ModelError(f"{path}: model file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelError(f"{path}: cannot read model file: {e.strerror}") from None
    if head[4:8] == b"TFL3":
        raise ModelError(f"{path}: is a TFLite model already; convert takes the Keras model.h5 "
                         "that 'edge-etc train' writes")
    if not (head.startswith(b"\x89HDF\r\n\x1a\n") or head.startswith(b"PK\x03\x04")):
        raise ModelError(f"{path}: not a Keras model (neither an HDF5 .h5 nor a zipped .keras file)")


def load_keras_model(path):
    """Load a Keras .h5/.keras model without compiling it."""
    check_keras_path(path)
    keras = load_keras()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: cannot load with Keras {keras.__version__}: {first} "
                         "(a model saved by Keras 2 must be re-saved with Keras 3)") from None


def _walk_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def check_layers(model, path):
    """Reject layers with no int8 path, naming them."""
    for layer in _walk_layers(model):
        kind = type(layer).__name__
        if kind in _NO_INT8_PATH:
            raise ModelError(f"{path}: layer '{layer.name}' ({kind}): {_NO_INT8_PATH[kind]}")


def unrolled_copy(model):
    """Return a copy of `model` with every LSTM unrolled and without recurrent dropout."""
    keras = load_keras()

    changed = []

    def edit(cfg):
        if isinstance(cfg, dict):
            if cfg.get("class_name") in ("LSTM", "SimpleRNN") and isinstance(cfg.get("config"), dict):
                c = cfg["config"]
                if not c.get("unroll") or c.get("recurrent_dropout"):
                    changed.append(c.get("name"))
                c["unroll"] = True
                c["recurrent_dropout"] = 0.0
                c["stateful"] = False
            for v in cfg.values():
                edit(v)
        elif isinstance(cfg, list):
            for v in cfg:
                edit(v)

    config = model.get_config()
    edit(config)
    if not changed:
        return model
    log.info("unrolling for conversion: %s", ", ".join(str(n) for n in changed))
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def member_outputs(model):
    """Return (model, networks) for conversion. When `model` ends in an Average layer, the
    returned model outputs the probabilities of every averaged network side by side, and
    `networks` is their number. Otherwise it returns (`model`, 1).

    In int8, an in-graph mean is rounded to the output's steps of 1/256, so two classes
    within 1/256 of each other can tie, and then the first one wins whichever the float
    model ranks higher.
    The runner's mean of the separate outputs has steps about `networks` times finer.

    NOTE: the converter rounds each network's softmax (steps of 1/256) again to the
    joined output's scale, which calibration sets (0.9916/255 for the bundled model), and
    clips probabilities above the calibrated maximum. On the bundled model's parity windows
    that changed the mean probability error from 0.00107 to 0.00112.
    """
    keras = load_keras()
    last = model.layers[-1]
    if type(last).__name__ != "Average":
        return model, 1
    parts = last.input
    log.info("converting the %d averaged networks with one output each", len(parts))
    joined = keras.layers.Concatenate(name="network_classes")(parts)
    return keras.Model(model.inputs, joined, name=model.name), len(parts)


def check_io(model, path):
    """Return (window_packets, vector_bytes, n_classes) or raise naming what is wrong."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{path}: expected one input and one output, found "
                         f"{len(model.inputs)} and {len(model.outputs)}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 3 or shape[1] is None or shape[2] is None:
        raise ModelError(f"{path}: input shape {shape} is not (batch, packets, bytes)")
    n_out = model.outputs[0].shape[-1]
    return int(shape[1]), int(shape[2]), int(n_out)


def sidecar(path):
    """Return the `model.json` written by `edge-etc train` next to `path`, or None."""
    for candidate in (os.path.splitext(path)[0] + ".json", os.path.join(os.path.dirname(path), "model.json")):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
    return None


def add_metadata(tflite_bytes, name, payload):
    """Return the model with a metadata entry `name` holding `payload` bytes."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    buf = schema.BufferT()
    buf.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers.append(buf)
    meta = schema.MetadataT()
    meta.name = name
    meta.buffer = len(model.buffers) - 1
    if model.metadata is None:
        model.metadata = []
    model.metadata = [m for m in model.metadata if m.name != name.encode() and m.name != name]
    model.metadata.append(meta)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def run_converter(model, calibration, workdir):
    """Convert `model` to int8 in a child process; return the .tflite bytes."""
    model_path = os.path.join(workdir, "unrolled.keras")
    calib_path = os.path.join(workdir, "calibration.npy")
    out_path = os.path.join(workdir, "model.tflite")
    model.save(model_path)
    np.save(calib_path, calibration)
    cmd = [sys.executable, "-m", "edge_etc.convert.convert_worker", model_path, calib_path, out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        if proc.returncode < 0:
            what = f"crashed with {signal.Signals(-proc.returncode).name}"
        else:
            what = f"failed (exit code {proc.returncode})"
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else "no message"
        log.debug("converter output:\n%s", proc.stderr)
        raise ConversionError(f"the TFLite converter {what} while quantizing the model to int8: {detail}")
    with open(out_path, "rb") as f:
        return f.read()


def to_int8(model, settings, labels, calibration, info=None, unknown_threshold=0.0,
            port_prior=None):
    """Quantize an (unrolled) Keras model; return (tflite bytes, runner `Classifier`).

    Args:
        calibration: uint8 windows (n, packets, bytes) built by the shared preprocessing.
        port_prior: the metadata form of the model's server port prior, or None.
    """
    from edge_etc.infer import Classifier
    from edge_etc.model import METADATA_NAME, encode_metadata, load_model_info

    from .gate_lstm import gate_lstm_copy

    calibration = calibration.copy()
    # Make sure the calibration range covers every byte value, so the input scale is 1/255.
    calibration[0, 0, 0], calibration[0, 0, 1] = 0, 255
    with tempfile.TemporaryDirectory(prefix="edge-etc-convert-") as workdir:
        converted, networks = member_outputs(gate_lstm_copy(model))
        tflite = run_converter(converted, calibration.astype(np.float32) / 255.0, workdir)
        tflite = add_metadata(tflite, METADATA_NAME,
                              encode_metadata(labels, settings, unknown_threshold, info=info,
                                              networks=networks, port_prior=port_prior))
        tmp_path = os.path.join(workdir, "with_metadata.tflite")
        with open(tmp_path, "wb") as f:
            f.write(tflite)
        classifier = Classifier(load_model_info(tmp_path), batch_size=256)
    return tflite, classifier


def convert_command(keras_path, output, corpus, force, seed):
    from edge_etc.tflite_file import TFLiteModel

    check_keras_path(keras_path)  # a wrong file is named before a missing corpus
    corpus = corpus or dataset.default_corpus()
    output = output or os.path.splitext(keras_path)[0] + ".tflite"
    captures = dataset.read_manifest(corpus)  # before the model: loading TensorFlow takes seconds
    model = load_keras_model(keras_path)
    check_layers(model, keras_path)
    packets, vector_bytes, n_out = check_io(model, keras_path)

    meta = sidecar(keras_path)
    if meta is not None:
        settings = Preprocessing.from_dict(meta["preprocessing"], source=f"{keras_path} settings")
        labels = list(meta["labels"])
        test_paths = set(meta.get("split", {}).get("test", []))
        info = {"trained_on": os.path.basename(meta.get("corpus", "")), "seed": meta.get("seed"),
                "results": meta.get("results")}
    else:
        # Plain byte vectors, because a foreign model was not trained with context bytes.
        settings = Preprocessing(vector_bytes=vector_bytes, window_packets=packets, context=False,
                                 port_buckets=0)
        labels = list(dataset.CLASSES) if n_out == len(dataset.CLASSES) else [f"class{i}" for i in range(n_out)]
        test_paths = set()
        info = {"trained_on": "unknown (no model.json next to the .h5)"}
        log.info("%s: no model.json found; using default preprocessing for %d bytes and labels %s",
                 keras_path, vector_bytes, ",".join(labels))
    if (settings.window_packets, settings.vector_bytes) != (packets, vector_bytes):
        raise ModelError(f"{keras_path}: input shape ({packets}, {vector_bytes}) does not match its "
                         f"settings ({settings.window_packets}, {settings.vector_bytes})")
    if len(labels) != n_out:
        raise ModelError(f"{keras_path}: {n_out} outputs but {len(labels)} labels")

    if test_paths:
        test_idx = [i for i, c in enumerate(captures) if c.path in test_paths]
        train_idx = [i for i, c in enumerate(captures) if c.path not in test_paths]
    else:
        train_idx, test_idx = dataset.split_captures(captures, seed=seed)
    data = dataset.build_windows(corpus, settings, captures, seed=seed)
    rng = np.random.default_rng(seed)
    train_windows = np.flatnonzero(data.select(train_idx))
    test_windows = np.flatnonzero(data.select(test_idx))
    if len(train_windows) == 0 or len(test_windows) == 0:
        raise ConfigError(f"{corpus}: no windows to calibrate with or to check parity on")
    calib = data.x[rng.choice(train_windows, min(CALIBRATION_WINDOWS, len(train_windows)), replace=False)]
    parity_idx = rng.choice(test_windows, min(PARITY_WINDOWS, len(test_windows)), replace=False)

    model = unrolled_copy(model)
    threshold = float(meta.get("unknown_threshold", 0.0)) if meta else 0.0
    port_prior = meta.get("port_prior") if meta else None
    tflite, int8 = to_int8(model, settings, labels, calib, info=info, unknown_threshold=threshold,
                           port_prior=port_prior)
    # Parity compares the networks alone: the prior multiplies both sides alike.
    p_int8 = int8.predict([data.x[i].tobytes() for i in parity_idx], port_prior=False)
    p_float = model.predict(data.x[parity_idx].astype(np.float32) / 255.0, batch_size=512, verbose=0)
    agreement = float((p_int8.argmax(1) == p_float.argmax(1)).mean())
    max_diff = float(np.abs(p_int8 - p_float).max())
    mean_diff = float(np.abs(p_int8 - p_float).mean())
    labelled = data.y[parity_idx] >= 0
    report = {
        "keras_model": keras_path,
        "output": output,
        "windows": int(len(parity_idx)),
        "argmax_agreement": round(agreement, 4),
        "max_probability_difference": round(max_diff, 4),
        "mean_probability_difference": round(mean_diff, 5),
        "float_accuracy": round(float((p_float.argmax(1) == data.y[parity_idx])[labelled].mean()), 4),
        "int8_accuracy": round(float((p_int8.argmax(1) == data.y[parity_idx])[labelled].mean()), 4),
        "size_bytes": len(tflite),
        "operators": sorted(set(TFLiteModel(tflite).operators())),
        "preprocessing": settings.to_dict(),
        "labels": labels,
    }
    text = (f"parity on {report['windows']} held-out windows (labelled and unlabelled flows): argmax agreement "
            f"{agreement:.4f}, probability difference largest {max_diff:.4f}, mean {mean_diff:.5f}; "
            f"accuracy float "
            f"{report['float_accuracy']:.4f}, int8 {report['int8_accuracy']:.4f}; size "
            f"{len(tflite)} bytes; operators {', '.join(report['operators'])}")
    print(text)
    report_path = output + ".parity.json"
    if agreement < MIN_AGREEMENT and not force:
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1)
        raise ConversionError(f"{keras_path}: int8 agreement {agreement:.4f} < {MIN_AGREEMENT}; "
                              f"model not written (report in {report_path}); use --force to write it anyway")
    if agreement < MIN_AGREEMENT:
        log.warning("%s: int8 agreement %.4f < %s, writing it anyway (--force). Its int8 labels "
                    "differ from the float model's on %.1f%% of held-out windows", keras_path,
                    agreement, MIN_AGREEMENT, 100 * (1 - agreement))
    with open(output, "wb") as f:
        f.write(tflite)
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    log.info("wrote %s and %s", output, report_path)
    return report
