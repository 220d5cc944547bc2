"""The numpy backend (edge_etc.numpy_backend) against ai-edge-litert.

Each kernel family is compared with the ai-edge-litert configuration it follows: the
default "xnnpack" kernels with litert's default interpreter (XNNPACK delegate applied),
the "reference" kernels with litert's reference kernels (OpResolverType.BUILTIN_REF).
The acceptance criterion for corpus windows: at least 99.9% of int8 outputs identical,
none more than one quantization step apart, every window label and every flow label
equal. benchmarks/bench_backends.py measures agreement on all corpus windows.
"""

import logging
import os
import struct
import sys

import numpy as np
import pytest

from conftest import Scan, case
from edge_etc import numpy_backend
from edge_etc.errors import InterpreterError, ModelError
from edge_etc.infer import Classifier, average_networks, dequantize, find_interpreter, input_lut
from edge_etc.model import default_model_path, load_model_info
from edge_etc.numpy_backend import Interpreter, quantize_multiplier, rescale
from edge_etc.port_prior import window_server_ports
from edge_etc.tflite_file import TFLiteModel, _I8, _I32

BATCH = 64
MIN_IDENTICAL = 0.999
CAPTURE = "eth_tls_2flows.pcap"


@pytest.fixture(scope="module")
def model():
    return load_model_info(default_model_path())


def litert_interpreter(data, kernels="xnnpack", batch=BATCH):
    """Return the ai-edge-litert interpreter that numpy kernel family `kernels` follows."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    resolver = {"xnnpack": litert.OpResolverType.AUTO,
                "reference": litert.OpResolverType.BUILTIN_REF}[kernels]
    interpreter = litert.Interpreter(model_content=data, num_threads=1,
                                     experimental_op_resolver_type=resolver)
    return resized(interpreter, batch)


def numpy_interpreter(data, kernels="xnnpack", batch=BATCH):
    return resized(Interpreter(model_content=data, num_threads=1, kernels=kernels), batch)


def resized(interpreter, batch=BATCH):
    detail = interpreter.get_input_details()[0]
    shape = list(detail["shape"])
    shape[0] = batch
    interpreter.resize_tensor_input(detail["index"], shape, strict=False)
    interpreter.allocate_tensors()
    return interpreter


def run_batches(interpreter, x, batch=BATCH):
    """Return the model outputs for int8 inputs `x`, padding the last batch with zeros."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        padded = np.zeros((batch,) + x.shape[1:], x.dtype)
        padded[:len(chunk)] = chunk
        interpreter.set_tensor(inp["index"], padded)
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[:len(chunk)].copy())
    return np.concatenate(results)


def class_scores(outputs, networks):
    """Return scores proportional to the class probabilities the runner computes from raw
    int8 outputs. Each network's softmax has zero point -128, so q + 128 is proportional to
    its probability, and the runner takes the mean over the networks."""
    return average_networks(outputs.astype(np.int32) + 128, networks)


def assert_agreement(ours, theirs, networks):
    assert ours.shape == theirs.shape
    steps = np.abs(ours.astype(np.int32) - theirs.astype(np.int32)).max(axis=1)
    identical = float(np.mean(steps == 0))
    assert identical >= MIN_IDENTICAL, f"{identical:.4%} of windows identical"
    assert steps.max() <= 1, f"outputs differ by up to {steps.max()} quantization steps"
    labels_differ = int(np.sum(class_scores(ours, networks).argmax(axis=1)
                               != class_scores(theirs, networks).argmax(axis=1)))
    assert labels_differ == 0, f"{labels_differ} of {len(ours)} labels differ"


def flow_labels(outputs, flow, position, networks, max_windows=5):
    """Return {flow number: class} by the runner's rule: the argmax of the mean
    probabilities of the flow's first `max_windows` windows."""
    probabilities = class_scores(outputs, networks)
    labels = {}
    for number in np.unique(flow):
        chosen = (flow == number) & (position < max_windows)
        if chosen.any():
            labels[int(number)] = int(probabilities[chosen].mean(axis=0).argmax())
    return labels


def model_input(model, raw_windows):
    """Quantize uint8 windows (n, packets, bytes) as the runner does."""
    numpy_interpreter = Interpreter(model_content=model.data)
    scale, zero_point = numpy_interpreter.get_input_details()[0]["quantization"]
    return input_lut(scale, zero_point)[raw_windows]


def compare_on(model, raw_windows, kernels):
    """Assert the acceptance criterion on these windows; return both outputs."""
    x = model_input(model, raw_windows)
    ours = run_batches(numpy_interpreter(model.data, kernels), x)
    theirs = run_batches(litert_interpreter(model.data, kernels), x)
    assert_agreement(ours, theirs, model.networks)
    return ours, theirs


@pytest.mark.parametrize("kernels", numpy_backend.KERNELS)
def test_random_windows_match_litert(model, kernels):
    pre = model.preprocessing
    rng = np.random.default_rng(20240607)
    raw = rng.integers(0, 256, (2000, pre.window_packets, pre.vector_bytes), dtype=np.uint8)
    compare_on(model, raw, kernels)


@pytest.mark.parametrize("kernels", numpy_backend.KERNELS)
def test_capture_windows_match_litert(model, kernels):
    path = case(CAPTURE)
    if not os.path.isfile(path):
        pytest.skip(f"{path} not present")
    scan = Scan(path, settings=model.preprocessing)
    windows = [w for flow in scan.windows.values() for w in flow]
    assert windows, f"{CAPTURE} produced no windows"
    pre = model.preprocessing
    raw = np.frombuffer(b"".join(windows), np.uint8).reshape(-1, pre.window_packets, pre.vector_bytes)
    compare_on(model, raw, kernels)


@pytest.mark.corpus
@pytest.mark.parametrize("kernels", numpy_backend.KERNELS)
def test_corpus_windows_match_litert(model, corpus, kernels):
    """A sample of the corpus: the first windows of every flow, which the runner decides
    on, and a few more from long flows."""
    from edge_etc.convert import dataset

    windows = dataset.build_windows(corpus, model.preprocessing, max_windows_per_flow=8)
    assert len(windows.x) > 0, "the corpus produced no windows"
    ours, theirs = compare_on(model, windows.x, kernels)
    ours_by_flow = flow_labels(ours, windows.flow, windows.position, model.networks)
    theirs_by_flow = flow_labels(theirs, windows.flow, windows.position, model.networks)
    differ = [f for f in ours_by_flow if ours_by_flow[f] != theirs_by_flow[f]]
    assert not differ, f"{len(differ)} of {len(ours_by_flow)} flow labels differ"


@pytest.mark.parametrize("backend, kernels", [("numpy", "xnnpack"), ("numpy-reference", "reference")])
def test_classifier_numpy_probabilities(model, backend, kernels):
    pre = model.preprocessing
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (150, pre.window_packets, pre.vector_bytes), dtype=np.uint8)
    classifier = Classifier(model, batch_size=BATCH, backend=backend)
    assert classifier.backend_name == "edge-etc numpy"
    assert classifier.interpreter.kernels == kernels
    probabilities = classifier.predict([bytes(w) for w in raw.reshape(len(raw), -1)])
    expected = run_batches(litert_interpreter(model.data, kernels), model_input(model, raw))
    out = Interpreter(model_content=model.data).get_output_details()[0]
    per_network = dequantize(expected, *out["quantization"])
    mean = average_networks(per_network, model.networks)
    # Random windows carry random server ports, some of them in the model's port prior.
    if model.port_prior is not None:
        mean = model.port_prior.apply(mean, window_server_ports(raw, pre))
    np.testing.assert_array_equal(probabilities, mean)


def test_classifier_logs_numpy_kernels(model, caplog):
    with caplog.at_level(logging.INFO, logger="edge_etc.infer"):
        Classifier(model, batch_size=8, backend="numpy-reference")
    assert "numpy backend kernels: reference" in caplog.text


def test_unknown_kernels_rejected(model):
    with pytest.raises(ValueError, match="unknown kernels 'fast'"):
        Interpreter(model_content=model.data, kernels="fast")


def test_auto_falls_back_to_numpy(monkeypatch, caplog):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with caplog.at_level(logging.WARNING, logger="edge_etc.infer"):
        interpreter_class, name, version = find_interpreter("auto")
    assert interpreter_class is Interpreter
    assert name == "edge-etc numpy"
    assert "using the numpy backend" in caplog.text


def test_explicit_backend_does_not_fall_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(InterpreterError, match="no TFLite interpreter"):
        find_interpreter("litert")


def with_operator_code(data, old_name, new_code):
    """Return model bytes with every operator code `old_name` changed to builtin `new_code`."""
    patched = bytearray(data)
    model = TFLiteModel(data)
    names = model.operators()
    for code, name in zip(model.root.tables(1), names):
        if name != old_name:
            continue
        for field, fmt in ((0, _I8), (3, _I32)):
            position = code._field(field)
            assert position is not None, f"operator code {name} has no field {field}"
            struct.pack_into(fmt.format, patched, position, new_code)
    return bytes(patched)


def test_unsupported_operator_named_at_load(model):
    data = with_operator_code(model.data, "TANH", 101)  # ABS
    with pytest.raises(ModelError, match="does not support operator ABS"):
        Interpreter(model_content=data)


def test_unsupported_operator_named_by_classifier(model, tmp_path):
    path = tmp_path / "abs.tflite"
    path.write_bytes(with_operator_code(model.data, "TANH", 101))
    patched = load_model_info(str(path))
    # NOTE: Classifier wraps interpreter construction errors in InterpreterError; the
    # message still names the file and the operator.
    with pytest.raises((ModelError, InterpreterError)) as error:
        Classifier(patched, batch_size=8, backend="numpy")
    message = str(error.value)
    assert str(path) in message
    assert "ABS" in message
    assert "\n" not in message


def test_set_tensor_rejects_wrong_dtype(model):
    interpreter = resized(Interpreter(model_content=model.data), 4)
    detail = interpreter.get_input_details()[0]
    with pytest.raises(ValueError, match="type"):
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.float32))


def test_set_tensor_rejects_wrong_shape(model):
    interpreter = resized(Interpreter(model_content=model.data), 4)
    detail = interpreter.get_input_details()[0]
    shape = list(detail["shape"])
    shape[0] = 5
    with pytest.raises(ValueError, match="dimension"):
        interpreter.set_tensor(detail["index"], np.zeros(shape, np.int8))


def test_invoke_before_allocate_fails(model):
    interpreter = Interpreter(model_content=model.data)
    with pytest.raises(RuntimeError, match="allocate_tensors"):
        interpreter.invoke()


def test_output_details_follow_resize(model):
    interpreter = resized(Interpreter(model_content=model.data), 17)
    assert interpreter.get_input_details()[0]["shape"][0] == 17
    assert interpreter.get_output_details()[0]["shape"][0] == 17
    assert interpreter.get_output_details()[0]["shape"][1] == model.networks * len(model.labels)


def test_invalid_model_bytes_raise_model_error():
    with pytest.raises(ModelError):
        Interpreter(model_content=b"not a model at all")


# Arithmetic, against a plain transcription of TFLite's integer definitions.


def reference_rescale(x, multiplier, shift):
    """MultiplyByQuantizedMultiplier with double rounding, on Python ints."""
    left = max(shift, 0)
    right = max(-shift, 0)
    a = x * (1 << left)
    if a == multiplier == -(1 << 31):
        high = (1 << 31) - 1
    else:
        product = a * multiplier
        nudge = (1 << 30) if product >= 0 else 1 - (1 << 30)
        total = product + nudge
        high = abs(total) // (1 << 31) * (1 if total >= 0 else -1)  # C division truncates
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


def test_rescale_matches_reference_definition():
    rng = np.random.default_rng(3)
    values = list(rng.integers(-(1 << 24), 1 << 24, 3000))
    values += [0, 1, -1, 511, 512, -512, -513, 1 << 20, -(1 << 20)]
    for multiplier, shift in ((1 << 30, -1), (1518500250, -8), (1073741824, -10),
                              (2147483647, -3), (1342177280, 2), (1288490189, 0)):
        ours = rescale(np.array(values, np.int64), multiplier, shift)
        for value, result in zip(values, ours):
            assert result == reference_rescale(int(value), multiplier, shift), (value, multiplier, shift)


def test_rescale_rounds_ties_away_from_zero():
    # 2**30 / 2**31 = 0.5 exactly after the high multiply with shift 0: the first
    # rounding goes up; a right shift of an exact half goes away from zero.
    assert rescale(np.array([3, -3]), 1 << 30, -1).tolist() == [1, -1]


def test_quantize_multiplier_values():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(2.0 ** -40) == (0, 0)
    # A significand that rounds up to 2**31 moves into the exponent.
    assert quantize_multiplier(1.0 - 2.0 ** -40) == (1 << 30, 1)


def test_round_half_away_from_zero():
    values = np.array([0.5, -0.5, 1.5, -1.5, 2.4999998, 0.49999997], np.float32)
    assert numpy_backend._round_half_away(values).tolist() == [1.0, -1.0, 2.0, -2.0, 2.0, 0.0]


# Operators beyond the bundled model, on small models converted with TensorFlow.


# Seed of the Keras weights of the converted test models. Each seed gives another model
# with other quantization scales, and so other rare ties for the kernels to round.
MODEL_SEED = 0


def convert_int8(build, seed=MODEL_SEED):
    """Return the int8 TFLite model of `build`, with weights drawn from `seed`."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    # clear_session resets Keras's global seed generator and layer names, so every call
    # with the same seed converts the same model, in one process or several.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(1)
    model = build(keras, keras.layers)

    def representative():
        for _ in range(100):
            yield [rng.integers(0, 256, (1, 3, 48)).astype(np.float32) / 255.0]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def elementwise_model(keras, layers):
    inp = keras.Input((3, 48))
    h = layers.Reshape((3, 48, 1))(inp)
    a = layers.Conv2D(8, (1, 3), padding="same", activation="relu6")(h)
    b = layers.ZeroPadding2D(((0, 0), (1, 1)))(layers.Conv2D(8, (1, 3), padding="valid")(h))
    c = layers.Multiply()([a, layers.Subtract()([a, b])])
    e = layers.AveragePooling2D((1, 2))(layers.Add()([c, b]))
    e = layers.LeakyReLU(0.2)(e)
    f = layers.DepthwiseConv2D((1, 3), padding="same", depth_multiplier=2)(e)
    g = layers.GlobalAveragePooling2D()(f)
    k = layers.GlobalAveragePooling1D()(layers.Reshape((3, 24 * 8))(e))
    m = layers.Dense(16, activation="tanh")(layers.Concatenate()([g, k]))
    m = layers.Dense(16, activation="sigmoid")(m)
    return keras.Model(inp, layers.Dense(5, activation="softmax")(m))


def pooling_model(keras, layers):
    inp = keras.Input((3, 48))
    h = layers.Reshape((3, 48, 1))(inp)
    a = layers.ReLU()(layers.Conv2D(8, (1, 5), strides=(1, 2), padding="same")(h))
    b = layers.Conv2D(8, (2, 3), padding="same", activation="relu")(h)
    b = layers.MaxPooling2D((2, 3), strides=(1, 2), padding="same")(b)
    c = layers.AveragePooling2D((2, 3), strides=(1, 2), padding="same")(layers.Concatenate()([a, b]))
    g = layers.Flatten()(layers.GlobalAveragePooling2D(keepdims=True)(c))
    d = layers.Flatten()(layers.Dense(10, activation="relu")(layers.Reshape((3, 12 * 16))(c)))
    m = layers.Activation("relu6")(layers.Dense(12)(layers.Concatenate()([g, d])))
    return keras.Model(inp, layers.Dense(4, activation="softmax")(m))


def recurrent_model(keras, layers):
    """The operators `edge-etc convert` produces: (1, k) convolutions, max pooling,
    dense layers and an unrolled LSTM (FULLY_CONNECTED, ADD, MUL, LOGISTIC, TANH), plus
    SUB and a depthwise convolution."""
    inp = keras.Input((3, 48))
    h = layers.Reshape((3, 48, 1))(inp)
    a = layers.Conv2D(8, (1, 5), padding="same", activation="relu")(h)
    b = layers.DepthwiseConv2D((1, 3), padding="same", activation="relu6")(a)
    c = layers.MaxPooling2D((1, 2))(layers.Subtract()([a, b]))
    c = layers.Conv2D(8, (1, 3), padding="same", activation="relu")(c)
    d = layers.Reshape((3, 12 * 8))(layers.MaxPooling2D((1, 2))(c))
    side = layers.Dense(16, activation="relu")(layers.Reshape((3, 48))(inp))
    e = layers.Concatenate()([layers.Dense(32, activation="relu")(d), side])
    f = layers.LSTM(24, unroll=True)(e)
    g = layers.Multiply()([layers.Dense(24, activation="sigmoid")(f), f])
    return keras.Model(inp, layers.Dense(6, activation="softmax")(layers.Add()([f, g])))


def gate_recurrent_model(keras, layers):
    """recurrent_model with its LSTM written out per gate, as `edge-etc convert` converts
    it: adds PAD, STRIDED_SLICE and an int8 to int8 QUANTIZE before each CONCATENATION."""
    from edge_etc.convert.gate_lstm import gate_lstm_copy

    return gate_lstm_copy(recurrent_model(keras, layers))


CONVERTED_MODELS = [elementwise_model, pooling_model, recurrent_model, gate_recurrent_model]


@pytest.mark.train
@pytest.mark.parametrize("build", CONVERTED_MODELS)
def test_converted_operators_match_litert_reference(build):
    data = convert_int8(build)
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (640, 3, 48), dtype=np.int8)
    ours = run_batches(numpy_interpreter(data, "reference"), x)
    theirs = run_batches(litert_interpreter(data, "reference"), x)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.train
@pytest.mark.parametrize("build", CONVERTED_MODELS)
def test_converted_operators_match_litert_default(build):
    data = convert_int8(build)
    rng = np.random.default_rng(12)
    x = rng.integers(-128, 128, (1280, 3, 48), dtype=np.int8)
    ours = run_batches(numpy_interpreter(data, "xnnpack"), x)
    theirs = run_batches(litert_interpreter(data, "xnnpack"), x)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.train
def test_recurrent_model_has_convert_operators():
    pytest.importorskip("tensorflow")
    names = {op.name for op in numpy_backend._read_graph(convert_int8(recurrent_model))[1]}
    expected = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SUB", "MUL", "ADD",
                "LOGISTIC", "TANH", "MAX_POOL_2D", "SOFTMAX", "CONCATENATION"}
    assert expected <= names, f"missing {sorted(expected - names)}"


@pytest.mark.train
def test_gate_lstm_model_has_int8_requantize():
    pytest.importorskip("tensorflow")
    tensors, operators = numpy_backend._read_graph(convert_int8(gate_recurrent_model))[:2]
    names = {op.name for op in operators}
    assert {"PAD", "STRIDED_SLICE", "CONCATENATION", "LOGISTIC", "TANH"} <= names
    requantize = [op for op in operators if op.name == "QUANTIZE"
                  and tensors[op.inputs[0]].dtype == np.int8]
    assert requantize, "no int8 to int8 QUANTIZE in the converted model"


@pytest.fixture(scope="module")
def gate_lstm_tflite():
    return convert_int8(gate_recurrent_model)


# (input, output) scales and zero points of an int8 to int8 QUANTIZE. XNNPACK takes scale
# ratios from 2**-8 to 2**7 and leaves the others to TFLite's kernel.
@pytest.mark.train
@pytest.mark.parametrize("scales", [
    ((0.011675, -47), (0.011189, -66)),
    ((0.0042, 12), (0.0168, -3)),  # ratio 0.25: every fourth input is a tie
    ((0.031, -128), (0.0083, 5)),
    ((0.5, 3), (0.002, -1)),  # ratio 250, above XNNPACK's limit
    ((0.00001, 0), (0.0052, 7)),  # ratio under 2**-8
])
def test_int8_requantize_scales_match_litert_default(gate_lstm_tflite, scales):
    data, inputs = single_operator(gate_lstm_tflite, "QUANTIZE", scales)
    shape = numpy_backend._read_graph(data)[0][inputs[0]].shape
    values = np.random.default_rng(6).integers(-128, 128, (256,) + tuple(shape[1:]), dtype=np.int8)
    values.reshape(-1)[:256] = np.arange(-128, 128)
    compare_single(data, inputs, [values])


# Single operators with chosen quantization: XNNPACK's arithmetic and the scale limits
# under which the XNNPACK delegate leaves an operator to TFLite's own kernels.


@pytest.fixture(scope="module")
def elementwise_tflite():
    return convert_int8(elementwise_model)


def single_operator(data, name, scales):
    """Return (model bytes, graph input indices) of the first `name` operator of `data`
    alone, with (scale, zero point) pairs for its int8 inputs and outputs, in order."""
    flatbuffer_utils = pytest.importorskip("tensorflow.lite.tools.flatbuffer_utils")
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    names = numpy_backend._read_graph(data)[1]
    index = next(i for i, op in enumerate(names) if op.name == name)
    op = graph.operators[index]
    inputs = [int(i) for i in op.inputs
              if i >= 0 and model.buffers[graph.tensors[i].buffer].data is None]
    int8 = [i for i in inputs + [int(o) for o in op.outputs] if graph.tensors[i].type == 9]
    assert len(int8) == len(scales), f"{name} has {len(int8)} int8 tensors"
    for i, (scale, zero_point) in zip(int8, scales):
        graph.tensors[i].quantization.scale = np.array([scale], np.float32)
        graph.tensors[i].quantization.zeroPoint = np.array([zero_point], np.int64)
    graph.operators = [op]
    graph.inputs = np.array(inputs, np.int32)
    graph.outputs = np.array([int(o) for o in op.outputs], np.int32)
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), inputs


def run_single(interpreter, feeds):
    for detail in interpreter.get_input_details():
        interpreter.resize_tensor_input(detail["index"], feeds[detail["index"]].shape)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feeds[detail["index"]])
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def compare_single(data, inputs, values):
    """Assert numpy's xnnpack kernels equal litert's default on int8 arrays `values`."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    feeds = dict(zip(inputs, values))
    theirs = run_single(litert.Interpreter(model_content=data, num_threads=1), feeds)
    ours = run_single(Interpreter(model_content=data, kernels="xnnpack"), feeds)
    differ = int(np.sum(ours != theirs))
    assert differ == 0, f"{differ} of {ours.size} outputs differ from ai-edge-litert's default"


def all_pairs(shape):
    """Return two int8 arrays of `shape` (with a batch dimension that fits) holding every
    pair of int8 values."""
    values = np.arange(-128, 128, dtype=np.int8)
    per_item = int(np.prod(shape[1:]))
    batch = -(-65536 // per_item)
    first = np.resize(np.repeat(values, 256), batch * per_item).reshape((batch,) + tuple(shape[1:]))
    second = np.resize(np.tile(values, 256), first.shape)
    return first, second


# (input 1, input 2, output) scales and zero points. Ratios of input to output scale below
# 2**-10 (ADD, SUB) and products below 2**-16 (MUL) are left to TFLite's kernels.
BINARY_CASES = {
    "ADD": [((0.0188, -109), (0.00346, -124), (0.00121, -84)),
            ((0.00225, 58), (0.0533, -108), (0.0121, -52)),
            ((0.0112, 56), (1.24e-05, -110), (0.00937, 111)),
            ((0.007, 6), (1.65e-06, 37), (0.00177, -63))],
    "SUB": [((0.02, 96), (0.0238, -94), (0.006, 20)),
            ((0.0052, 56), (0.0139, 24), (0.0044, 1)),
            ((0.0669, 80), (2.19e-05, 15), (0.0288, 111))],
    "MUL": [((0.0188, -109), (0.00346, -124), (0.00121, -84)),
            ((0.00585, 29), (0.0987, -31), (0.0916, 47)),
            ((0.0112, 56), (3.24e-05, -110), (0.00937, 111)),
            ((0.0669, 80), (7.54e-06, 15), (0.0288, 111)),
            ((0.5, 3), (0.25, -5), (0.25, 1))],  # scale 0.5: ties, odd output zero point
}


@pytest.mark.train
@pytest.mark.parametrize("name, scales", [(name, scales) for name, cases in BINARY_CASES.items()
                                          for scales in cases])
def test_binary_operator_scales_match_litert_default(elementwise_tflite, name, scales):
    data, inputs = single_operator(elementwise_tflite, name, scales)
    shape = numpy_backend._read_graph(data)[0][inputs[0]].shape
    compare_single(data, inputs, all_pairs(shape))


@pytest.mark.train
@pytest.mark.parametrize("name, scales", [
    ("LEAKY_RELU", ((0.0157, 13), (0.0041, -80))),
    ("LEAKY_RELU", ((0.0021, -37), (0.0185, 91))),
    ("LOGISTIC", ((0.0423, -56), (1 / 256, -128))),
    # exp in double precision (input -42), and an exact tie rounded to even (input 48).
    ("LOGISTIC", ((0.0036540457513183355, 3), (1 / 256, -128))),
    ("TANH", ((0.0073, 1), (1 / 128, 0))),
    # glibc's tanhf differs from the correctly rounded tanh by one unit in the last
    # place (inputs -92 and 92).
    ("TANH", ((0.007899823598563671, 0), (1 / 128, 0))),
    # Exact ties, rounded to even (inputs -74 and 72).
    ("TANH", ((0.007886267267167568, -1), (1 / 128, 0))),
    ("MEAN", ((0.031, 17), (0.0067, -21))),
    ("MEAN", ((0.0052, -90), (0.0233, 64))),
    ("SOFTMAX", ((0.0706, -30), (1 / 256, -128))),
    ("SOFTMAX", ((0.31, 5), (1 / 256, -128))),
])
def test_unary_operator_scales_match_litert_default(elementwise_tflite, name, scales):
    data, inputs = single_operator(elementwise_tflite, name, scales)
    shape = numpy_backend._read_graph(data)[0][inputs[0]].shape
    values = np.random.default_rng(5).integers(-128, 128, (256,) + tuple(shape[1:]), dtype=np.int8)
    values.reshape(-1)[:256] = np.arange(-128, 128)
    compare_single(data, inputs, [values])


def inputs_with_every_sum(shape, axes):
    """Return int8 inputs of `shape` (with a batch dimension that fits) whose sums over
    `axes` take every value from -128 * count to 127 * count, count values per sum."""
    kept = [d for d in range(1, len(shape)) if d not in axes]
    count = int(np.prod([shape[a] for a in axes]))
    per_item = int(np.prod([shape[d] for d in kept]))
    sums = np.arange(-128 * count, 127 * count + 1)
    batch = -(-len(sums) // per_item)
    sums = np.resize(sums, batch * per_item)
    # Spread each sum evenly: (sum + 128 * count) = quotient * count + remainder.
    quotient, remainder = np.divmod(sums + 128 * count, count)
    values = quotient[:, None] + (np.arange(count)[None, :] < remainder[:, None]) - 128
    grouped = values.reshape([batch] + [shape[d] for d in kept] + [shape[a] for a in axes])
    return np.transpose(grouped, np.argsort([0] + kept + list(axes))).astype(np.int8)


# (input, output) scales and zero points of the first MEAN of elementwise_model, which
# averages 72 values. XNNPACK sums the raw inputs and folds the input zero point into a
# float32 bias. Each case fails by one step if the part of that arithmetic it names changes.
MEAN_CASES = [
    # The input zero point in the bias, not subtracted from the sum (raw sum 21).
    ((0.002806563163176179, 4), (0.0029736189171671867, -57)),
    # scale = float32(input_scale / output_scale) * float32(1 / 72) (raw sum -3603).
    ((0.0065517425537109375, -98), (0.005984966177493334, 33)),
    # scale 0.5 and an integer bias: every odd sum is a tie, rounded to even.
    ((0.0625, -23), (0.0625 / 36, 80)),
]


@pytest.mark.train
@pytest.mark.parametrize("scales", MEAN_CASES)
def test_mean_every_sum_matches_litert_default(elementwise_tflite, scales):
    data, inputs = single_operator(elementwise_tflite, "MEAN", scales)
    tensors, operators, _, _ = numpy_backend._read_graph(data)
    axes = tuple(int(a) for a in tensors[operators[0].inputs[1]].data.reshape(-1))
    values = inputs_with_every_sum(tensors[inputs[0]].shape, axes)
    count = int(np.prod([values.shape[a] for a in axes]))
    sums = np.unique(values.astype(np.int64).sum(axis=axes))
    np.testing.assert_array_equal(sums, np.arange(-128 * count, 127 * count + 1))
    compare_single(data, inputs, [values])


@pytest.mark.train
@pytest.mark.parametrize("name", ["FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"])
def test_weighted_operator_ties_match_litert_default(elementwise_tflite, name):
    """Requantization scale 0.5 on the first output channel and an odd output zero point:
    XNNPACK rounds ties to even before it adds the zero point."""
    tensors, operators, _, _ = numpy_backend._read_graph(elementwise_tflite)
    weights = tensors[next(op for op in operators if op.name == name).inputs[1]]
    data, inputs = single_operator(elementwise_tflite, name,
                                   ((1.0, 3), (2 * float(weights.scales[0]), 1)))
    shape = numpy_backend._read_graph(data)[0][inputs[0]].shape
    # Inputs within one step of the zero point keep the accumulators small and unclamped.
    values = np.random.default_rng(1).integers(2, 5, (64,) + tuple(shape[1:])).astype(np.int8)
    compare_single(data, inputs, [values])
