"""An int8 TFLite interpreter written with numpy alone, for devices with no TFLite wheel.

Most home routers run OpenWrt on musl (MIPS, 32-bit ARM), where neither ai-edge-litert nor
tflite-runtime installs but Python and numpy do. `Interpreter` reads the `.tflite`
FlatBuffer itself and offers the subset of the `tf.lite.Interpreter` API that
`edge_etc.infer.Classifier` uses.

Two kernel families (`Interpreter(kernels=...)`), each checked bit for bit against
ai-edge-litert 2.3 on x86-64 by tests/test_numpy_backend.py:

- "xnnpack" (the default) computes what ai-edge-litert's default interpreter computes.
  That interpreter hands the arithmetic operators CONV_2D, DEPTHWISE_CONV_2D,
  FULLY_CONNECTED, ADD, SUB, MUL, LEAKY_RELU, MEAN, LOGISTIC and TANH to the XNNPACK
  delegate. It requantizes in float32: float32(acc) * scale, with scale = input_scale *
  weight_scale / output_scale in float32, rounded to nearest even. ADD and SUB use
  XNNPACK's 21-bit integer multipliers and one rounding shift. Int8 SOFTMAX stays with
  TFLite's optimized kernel, which works with a float32 exp table. Operators XNNPACK
  leaves alone, or rejects for their scales, use the reference arithmetic below.
- "reference" follows TFLite's reference integer kernels, which ai-edge-litert runs with
  OpResolverType.BUILTIN_REF.

Reference arithmetic:

- Rescaling: a real multiplier becomes a Q31 integer and a power-of-two exponent
  (QuantizeMultiplier: frexp, then round half away from zero). An int32 accumulator is
  rescaled by a doubling high multiply that rounds half up, then by a right shift that
  rounds half away from zero (MultiplyByQuantizedMultiplier with double rounding).
  FULLY_CONNECTED rounds once instead: (acc * M + 2**(30 - shift)) >> (31 - shift).
- CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED take per-channel or per-tensor weight
  scales with multiplier input_scale * weight_scale / output_scale in double precision.
- ADD and SUB rescale both inputs after a left shift of 20 bits. MUL rescales the product
  of the offset inputs. Both run as 64 KiB tables over every pair of int8 inputs, built
  with that arithmetic.
- LOGISTIC, TANH, RELU*, LEAKY_RELU and int8 QUANTIZE are 256-entry tables. LOGISTIC and
  TANH tables are computed in float32 as TFLite's LUTPopulate does.
- SOFTMAX is gemmlowp fixed point: exp() of Q5.26 input differences, a Q12.19 sum and a
  Newton-Raphson reciprocal.

The two families differ by a quantization step in a small share of rescaled values, and
an LSTM amplifies that: on the corpus, 25% of the bundled model's outputs differ
between them, by up to 12 steps.

With "xnnpack", LEAKY_RELU (8-bit multipliers) and int8 MEAN (an int32 sum rescaled in
float32, with the input zero point folded into a float32 bias) follow XNNPACK too.
XNNPACK computes the LOGISTIC table with a double-precision exp and the TANH table with
glibc's tanhf, and rounds both to nearest even after adding the output zero point. These
tables differ from TFLite's only on entries within float32 rounding of a tie.

NOTE: XNNPACK's operator coverage and the delegate's scale limits change between
releases. The "xnnpack" family reproduces ai-edge-litert 2.3.0 on x86-64 and was not
compared with other releases. tflite-runtime 2.14 did not apply XNNPACK to any int8 model
tried, and its kernels match neither family.

Matrix products run in floating point (BLAS) where that is exact: every partial sum of
int8 products is an integer, and it is exact while its magnitude stays below 2**24
(float32) or 2**53 (float64). The bound is checked per layer from the weights.

Set EDGE_ETC_NUMPY_MATMUL=int to multiply in int64 instead, for CPUs without a floating
point unit, where numpy's float arithmetic is emulated in software.

Unsupported operators, tensor types and options raise `ModelError` when the model is
loaded, naming the operator.
"""

import os
import struct

import numpy as np

from ._glibc_float32 import tanhf
from .errors import ModelError
from .tflite_file import BUILTIN_OPS, TFLiteFileError, TFLiteModel, _I8, _I32, _U8, _U32

_F32 = struct.Struct("<f")
_I64 = struct.Struct("<q")

# TensorType values of TFLite's schema.fbs that this interpreter can hold.
_TENSOR_DTYPES = {
    0: np.dtype("<f4"), 2: np.dtype("<i4"), 3: np.dtype("u1"), 4: np.dtype("<i8"),
    6: np.dtype("?"), 7: np.dtype("<i2"), 9: np.dtype("i1"), 10: np.dtype("<f8"),
}

# ActivationFunctionType and Padding values of schema.fbs.
_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6 = 0, 1, 2, 3
_PADDING_SAME, _PADDING_VALID = 0, 1

_MATMUL_MODE = os.environ.get("EDGE_ETC_NUMPY_MATMUL", "float")

# Kernel families of `Interpreter`: XNNPACK's arithmetic (ai-edge-litert's default
# interpreter) or TFLite's reference kernels (OpResolverType.BUILTIN_REF).
KERNELS = ("xnnpack", "reference")


class _Tensor:
    """One tensor of the model: type, shape, quantization and constant data, if any."""

    __slots__ = ("index", "name", "dtype", "shape", "signature", "data", "scales",
                 "zero_points", "quantized_dimension")

    @property
    def scale(self):
        return float(self.scales[0]) if len(self.scales) else 0.0

    @property
    def zero_point(self):
        return int(self.zero_points[0]) if len(self.zero_points) else 0

    @property
    def quantized(self):
        return len(self.scales) > 0


class _Operator:
    """One operator: its position, builtin name, tensor indices and options table."""

    __slots__ = ("index", "name", "inputs", "outputs", "options")

    def option(self, field, fmt, default=0):
        if self.options is None:
            return default
        return self.options.scalar(field, fmt, default)

    def option_vector(self, field, fmt):
        return [] if self.options is None else self.options.vector(field, fmt)


def _read_tensor(model, table, index):
    t = _Tensor()
    t.index = index
    t.name = table.string(3) or f"tensor {index}"

    type_code = table.scalar(1, _I8, 0)
    if type_code not in _TENSOR_DTYPES:
        raise ModelError(f"tensor {t.name!r} has TFLite type {type_code}, which the numpy "
                         "backend does not support")
    t.dtype = _TENSOR_DTYPES[type_code]
    t.shape = tuple(table.vector(0, _I32))
    t.signature = tuple(table.vector(7, _I32)) or t.shape
    if table.table(6) is not None:
        raise ModelError(f"tensor {t.name!r} is sparse, which the numpy backend does not support")
    if table.scalar(5, _U8, 0):
        raise ModelError(f"tensor {t.name!r} is a variable, which the numpy backend does not support")

    quant = table.table(4)
    if quant is None:
        t.scales = np.zeros(0, np.float32)
        t.zero_points = np.zeros(0, np.int64)
        t.quantized_dimension = 0
    else:
        t.scales = np.asarray(quant.vector(2, _F32), np.float32)
        t.zero_points = np.asarray(quant.vector(3, _I64), np.int64)
        t.quantized_dimension = quant.scalar(6, _I32, 0)
        if len(t.zero_points) == 0:
            t.zero_points = np.zeros(len(t.scales), np.int64)

    raw = model.buffer_data(table.scalar(2, _U32, 0))
    if raw:
        data = np.frombuffer(raw, dtype=t.dtype)
        if data.size != int(np.prod(t.shape, dtype=np.int64)):
            raise ModelError(f"tensor {t.name!r}: constant data has {data.size} values for "
                             f"shape {t.shape}")
        t.data = data.reshape(t.shape)
    else:
        t.data = None
    return t


def _read_graph(data):
    """Return (tensors, operators, input indices, output indices) of the main subgraph."""
    try:
        model = TFLiteModel(data)
        subgraphs = model.root.tables(2)
        if not subgraphs:
            raise ModelError("the model has no subgraph")
        graph = subgraphs[0]
        tensors = [_read_tensor(model, table, i) for i, table in enumerate(graph.tables(0))]
        codes = model.operators()
        operators = []
        for i, table in enumerate(graph.tables(3)):
            op = _Operator()
            op.index = i
            code = table.scalar(0, _U32, 0)
            if code >= len(codes):
                raise ModelError(f"operator {i} refers to operator code {code}, which does not exist")
            op.name = codes[code]
            op.inputs = table.vector(1, _I32)
            op.outputs = table.vector(2, _I32)
            op.options = table.table(4)
            operators.append(op)
        inputs = graph.vector(1, _I32)
        outputs = graph.vector(2, _I32)
    except (TFLiteFileError, struct.error) as e:
        raise ModelError(f"invalid TFLite model: {e}") from None
    return tensors, operators, inputs, outputs


# ---------------------------------------------------------------------------------------
# Fixed-point arithmetic of TFLite's integer kernels.


def _round_half_away(x):
    """Round float values to the nearest integer, halves away from zero (C's round())."""
    x = np.asarray(x)
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    # magnitude - whole is exact (Sterbenz), unlike magnitude + 0.5, which rounds
    # 0.49999997 up to 1.0 in float32.
    whole += magnitude - whole >= 0.5
    return np.copysign(whole, x)


def quantize_multiplier(real):
    """Return (Q31 multiplier, exponent) for a real multiplier, as TFLite's
    QuantizeMultiplier does: real == multiplier * 2**(exponent - 31)."""
    real = float(real)
    if real == 0.0:
        return 0, 0
    if real < 0:
        raise ModelError(f"negative rescaling multiplier {real}")
    fraction, exponent = _frexp(real)
    q = int(_round_half_away(np.float64(fraction * (1 << 31))))
    if q == 1 << 31:
        q //= 2
        exponent += 1
    if exponent < -31:
        return 0, 0
    return q, exponent


def _frexp(x):
    fraction, exponent = np.frexp(np.float64(x))
    return float(fraction), int(exponent)


def rescale(acc, multiplier, shift):
    """Return MultiplyByQuantizedMultiplier(acc, multiplier, shift) element-wise.

    `acc` is an int64 array of int32-range values. `multiplier` and `shift` are scalars or
    arrays that broadcast against `acc` (per-channel values along the last axis).

    The doubling high multiply rounds half up: (x * m + 2**30) >> 31 equals TFLite's
    nudged, truncating division by 2**31 for every sign of x * m. The following right
    shift by `r` bits rounds half away from zero.
    """
    multiplier = np.asarray(multiplier, np.int64)
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    x = np.asarray(acc, np.int64)
    if np.any(left):
        x = x << left
    y = x * multiplier
    y += 1 << 30
    y >>= 31
    if np.any(right):
        half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
        negative = y < 0
        y += half
        if np.all(right > 0):
            y -= negative
        else:
            y -= negative & (right > 0)
        y >>= right
    return y


def rescale_single(acc, multiplier, shift):
    """Return the single-rounding MultiplyByQuantizedMultiplier(acc, multiplier, shift):
    (acc * multiplier + 2**(30 - shift)) >> (31 - shift), rounding halves up."""
    total = 31 - np.asarray(shift, np.int64)
    y = np.asarray(acc, np.int64) * np.asarray(multiplier, np.int64)
    y += np.left_shift(1, total - 1)
    y >>= total
    return y


class _Requantizer:
    """Rescales int32 accumulators to int8 outputs with fixed constants per layer.

    `single` selects the single-rounding rescale, which TFLite's reference
    FULLY_CONNECTED kernel uses; the other kernels round twice.
    """

    def __init__(self, multipliers, shifts, zero_point, low, high, single=False):
        self.multiplier = np.asarray(multipliers, np.int64)
        self.shift = np.asarray(shifts, np.int64)
        self.zero_point = np.int32(zero_point)
        self.low = int(low)
        self.high = int(high)
        self.single = single
        right = np.maximum(-self.shift, 0)
        # The fast double-rounding path needs a right shift on every channel.
        self.fast = bool(np.all(self.shift < 0))
        self.right = right.astype(np.int32)
        self.half = np.left_shift(1, np.maximum(right - 1, 0)).astype(np.int32)
        total = 31 - self.shift
        self.total = total
        self.round = np.left_shift(np.int64(1), total - 1)

    def __call__(self, acc):
        """Return int8 outputs; `acc` (int64 or exact float values) may be overwritten."""
        y = acc.astype(np.int64, copy=False) if acc.dtype == np.int64 else acc.astype(np.int64)
        if self.single:
            y *= self.multiplier
            y += self.round
            y >>= self.total
            z = y.astype(np.int32)
        elif self.fast:
            y *= self.multiplier
            y += 1 << 30
            y >>= 31
            # Rounding right shift, halves away from zero: y < 0 exactly when
            # y + half < half, so the int32 pass needs no separate sign array.
            z = y.astype(np.int32)
            z += self.half
            z -= z < self.half
            z >>= self.right
        else:
            z = rescale(y, self.multiplier, self.shift).astype(np.int32)
        z += self.zero_point
        np.clip(z, self.low, self.high, out=z)
        return z.astype(np.int8)


def _activation_range(activation, tensor, op):
    """Return the int8 output clamp of a fused activation (CalculateActivationRangeQuantized)."""
    scale = np.float32(tensor.scale)
    zero_point = tensor.zero_point

    def quantize(value):
        return zero_point + int(_round_half_away(np.float32(value) / scale))

    if activation == _ACT_NONE:
        return -128, 127
    if activation == _ACT_RELU:
        return max(-128, quantize(0.0)), 127
    if activation == _ACT_RELU6:
        return max(-128, quantize(0.0)), min(127, quantize(6.0))
    if activation == _ACT_RELU_N1_TO_1:
        return max(-128, quantize(-1.0)), min(127, quantize(1.0))
    raise _unsupported(op, f"fused activation {activation}")


# ---------------------------------------------------------------------------------------
# XNNPACK's arithmetic, as the XNNPACK delegate of ai-edge-litert 2.3 runs it on x86-64.
# Each helper returns None where the delegate leaves the operator to TFLite's own kernels.


def _xnnpack_channel_scales(ctx, x, w, out, channels):
    """Return the float32 requantization scale per output channel, or None.

    XNNPACK computes input_scale * weight_scale / output_scale in float32, left to right,
    and rejects a layer with a scale of 256 or more.
    """
    scales = w.scales
    if len(scales) not in (1, channels):
        raise ctx.fail(f"{len(scales)} weight scales for {channels} output channels")
    if len(scales) == 1:
        scales = np.repeat(scales, channels)
    if np.any(w.zero_points != 0):
        raise ctx.fail("weights with non-zero zero points")
    result = np.float32(x.scale) * scales.astype(np.float32) / np.float32(out.scale)
    if not np.all(result < 256):
        return None
    return result.astype(np.float32)


class _FloatRequantizer:
    """Rescales int32 accumulators as XNNPACK's fp32 requantization does.

    output = clamp(rint(float32(acc) * scale) + zero_point, low, high): the accumulator is
    rounded to float32, multiplied in float32, and rounded to the nearest integer with ties
    to even (cvtps2dq under the default rounding mode).
    """

    def __init__(self, scales, zero_point, low, high):
        self.scale = np.asarray(scales, np.float32)
        self.zero_point = np.float32(zero_point)
        self.low = np.float32(low)
        self.high = np.float32(high)

    def __call__(self, acc):
        """Return int8 outputs; `acc` (int64 or exact float values) may be overwritten."""
        y = acc if acc.dtype == np.float32 else acc.astype(np.float32)
        y *= self.scale
        np.rint(y, out=y)
        y += self.zero_point
        np.clip(y, self.low, self.high, out=y)
        return y.astype(np.int8)


def _xnnpack_activation_range(activation, tensor, op):
    """Return the int8 output clamp XNNPACK derives from a fused activation.

    The float bound is quantized as round-to-nearest-even(bound / scale + zero_point) in
    float32. It differs from `_activation_range` only when bound / scale is a tie.
    """
    bounds = {_ACT_NONE: (None, None), _ACT_RELU: (0.0, None), _ACT_RELU6: (0.0, 6.0),
              _ACT_RELU_N1_TO_1: (-1.0, 1.0)}
    if activation not in bounds:
        raise _unsupported(op, f"fused activation {activation}")

    def quantize(bound, default):
        if bound is None:
            return default
        value = np.float32(bound) / np.float32(tensor.scale) + np.float32(tensor.zero_point)
        return int(np.clip(np.rint(value), -128, 127))

    low, high = bounds[activation]
    return quantize(low, -128), quantize(high, 127)


def _xnnpack_binary(kind, a, b, out, x1, x2):
    """Return XNNPACK's int8 ADD, SUB or MUL of int8 arrays x1, x2 before the clamp, or None.

    ADD and SUB (XNNPACK's qs8 vadd with the second scale negated for SUB) rescale both
    inputs with integer multipliers of 21 bits at most and one arithmetic right shift,
    rounding halves up. The delegate takes them when both input-to-output scale ratios
    are in [2**-10, 2**8). MUL multiplies the offset inputs in int32 and rescales in
    float32 like `_FloatRequantizer`. The delegate takes it when
    input1_scale * input2_scale / output_scale is in [2**-16, 2**8).
    """
    f32 = np.float32
    if kind == "MUL":
        scale = f32(f32(a.scale) * f32(b.scale)) / f32(out.scale)
        if not 2.0 ** -16 <= scale < 256:
            return None
        product = (x1 - a.zero_point) * (x2 - b.zero_point)
        return np.rint(product.astype(f32) * scale).astype(np.int64) + out.zero_point

    a_ratio = f32(a.scale) / f32(out.scale)
    b_ratio = f32(b.scale) / f32(out.scale)
    if not (2.0 ** -10 <= a_ratio < 256 and 2.0 ** -10 <= b_ratio < 256):
        return None
    # The larger ratio gets a multiplier in [2**20, 2**21).
    _, exponent = np.frexp(max(a_ratio, b_ratio))
    shift = 21 - int(exponent)
    a_multiplier = int(np.rint(a_ratio * f32(2.0 ** shift)))
    b_multiplier = int(np.rint(b_ratio * f32(2.0 ** shift)))
    if kind == "SUB":
        b_multiplier = -b_multiplier
    bias = (1 << (shift - 1)) - a_multiplier * a.zero_point - b_multiplier * b.zero_point
    total = bias + x1 * a_multiplier + x2 * b_multiplier
    return (total >> shift) + out.zero_point


def _xnnpack_float_table(in_tensor, out_tensor, function):
    """Return XNNPACK's 256-entry int8 table of a float function (LOGISTIC, TANH).

    XNNPACK evaluates its reference kernel on every int8 input: x = (q - zero_point) *
    scale in float32, y = function(x) as float32, and the output
    rint(y * (1 / output_scale) + output_zero_point) in float32, rounded to nearest even.
    TFLite's LUTPopulate rounds y / output_scale half away from zero and adds the zero
    point afterwards, so the two tables differ where a value lies within float32 rounding
    of a tie.
    """
    f32 = np.float32
    values = np.arange(-128, 128, dtype=np.int64)
    dequantized = (values.astype(f32) - f32(in_tensor.zero_point)) * f32(in_tensor.scale)
    transformed = function(dequantized).astype(f32)
    inverse_scale = f32(1.0) / f32(out_tensor.scale)
    quantized = np.rint(transformed * inverse_scale + f32(out_tensor.zero_point))
    return _byte_table(values, np.clip(quantized, -128, 127))


def _xnnpack_logistic(x):
    """Return XNNPACK's sigmoid of float32 `x`: e / (1 + e) with e = exp(x) in double
    precision, rounded to float32, and exactly 1 above x = 100 and 0 below -100."""
    e = np.exp(np.clip(x, -100, 100).astype(np.float64))
    y = np.where(x > 100, 1.0, np.where(x < -100, 0.0, e / (1.0 + e)))
    return y.astype(np.float32)


def _unsupported(op, what):
    return ModelError(f"operator {op.index} ({op.name}): {what} is not supported by the numpy backend")


def _float_table(in_tensor, out_tensor, function):
    """Return the 256-entry int8 table of a float function, as TFLite's LUTPopulate
    computes it in float32; the table is indexed by the input byte read as uint8."""
    f32 = np.float32
    values = np.arange(-128, 128, dtype=np.int64)
    dequantized = f32(in_tensor.scale) * (values - in_tensor.zero_point).astype(f32)
    transformed = function(dequantized).astype(f32)
    inverse_scale = f32(1.0) / f32(out_tensor.scale)
    rescaled = _round_half_away(transformed * inverse_scale)
    quantized = rescaled.astype(np.int64) + out_tensor.zero_point
    return _byte_table(values, np.clip(quantized, -128, 127))


def _byte_table(values, results):
    table = np.zeros(256, np.int8)
    table[values.astype(np.int8).view(np.uint8)] = results
    return table


def _logistic_f32(x):
    # 1.0f / (1.0f + expf(-x)) with expf rounded from double precision.
    e = np.exp(-x.astype(np.float64)).astype(np.float32)
    return np.float32(1.0) / (np.float32(1.0) + e)


def _tanh_f32(x):
    return np.tanh(x.astype(np.float64)).astype(np.float32)


def _lookup(table, x):
    return table[x.view(np.uint8)]


def _pair_lookup(table, a, b):
    """Look up a 65536-entry table indexed by (a, b) int8 pairs, with broadcasting."""
    index = a.view(np.uint8).astype(np.uint16) << 8
    index = index | b.view(np.uint8)
    return table[index]


def _pair_grid():
    values = np.arange(-128, 128, dtype=np.int64)
    a = np.repeat(values, 256)
    b = np.tile(values, 256)
    return a, b


def _pair_table(a, b, results):
    table = np.zeros(65536, np.int8)
    index = (a.astype(np.int8).view(np.uint8).astype(np.int64) << 8) | b.astype(np.int8).view(np.uint8)
    table[index] = results
    return table


# ---------------------------------------------------------------------------------------
# Kernels. Each `_prepare_<op>` reads options and quantization, checks what it supports,
# precomputes its constants and returns a function from input arrays to output arrays.
# Preparation runs when tensors are allocated, with the inputs of a dry run, so shapes
# are known. Kernels never modify their inputs.


class _Context:
    def __init__(self, tensors, op, inputs, kernels="xnnpack"):
        self.tensors = tensors
        self.op = op
        self.inputs = inputs
        self.kernels = kernels

    def tin(self, i):
        index = self.op.inputs[i] if i < len(self.op.inputs) else -1
        return None if index < 0 else self.tensors[index]

    def tout(self, i=0):
        return self.tensors[self.op.outputs[i]]

    def fail(self, what):
        return _unsupported(self.op, what)

    def require_int8(self, *tensors):
        for t in tensors:
            if t.dtype != np.int8:
                raise self.fail(f"tensor {t.name!r} of type {t.dtype.name} (int8 expected)")
            if not t.quantized:
                raise self.fail(f"int8 tensor {t.name!r} without quantization parameters")

    def constant(self, i, what):
        value = self.inputs[i]
        t = self.tin(i)
        if t is None or value is None:
            raise self.fail(f"missing {what}")
        return value


def _channel_multipliers(ctx, x, w, out, axis_size):
    """Per-channel (multiplier, shift) arrays for a weighted layer."""
    scales = w.scales
    if len(scales) not in (1, axis_size):
        raise ctx.fail(f"{len(scales)} weight scales for {axis_size} output channels")
    if len(scales) == 1:
        scales = np.repeat(scales, axis_size)
    if np.any(w.zero_points != 0):
        raise ctx.fail("weights with non-zero zero points")
    input_scale = float(np.float32(x.scale))
    output_scale = float(np.float32(out.scale))
    pairs = [quantize_multiplier(input_scale * float(s) / output_scale) for s in scales]
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))


def _requantizer(ctx, x, w, out, channels, activation, single=False):
    """Return the requantizer of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED layer.

    With XNNPACK kernels, a layer whose per-channel scales XNNPACK accepts gets its float32
    requantization; otherwise it keeps TFLite's fixed-point rescaling.
    """
    if ctx.kernels == "xnnpack":
        scales = _xnnpack_channel_scales(ctx, x, w, out, channels)
        if scales is not None:
            return _FloatRequantizer(scales, out.zero_point,
                                     *_xnnpack_activation_range(activation, out, ctx.op))
    multipliers, shifts = _channel_multipliers(ctx, x, w, out, channels)
    return _Requantizer(multipliers, shifts, out.zero_point,
                        *_activation_range(activation, out, ctx.op), single=single)


class _MatMul:
    """Exact int8 x int8 products with an int32 bias, through BLAS when exact."""

    def __init__(self, weights, input_zero_point):
        # weights: int array (K, N) of the right-hand side.
        weights = np.asarray(weights, np.int64)
        max_input = max(abs(-128 - input_zero_point), abs(127 - input_zero_point))
        bound = max_input * int(np.abs(weights).sum(axis=0).max(initial=0))
        if _MATMUL_MODE == "int":
            self.dtype = np.int64
        elif bound < 1 << 24:
            self.dtype = np.float32
        elif bound < 1 << 53:
            self.dtype = np.float64
        else:
            self.dtype = np.int64
        self.weights = np.ascontiguousarray(weights.astype(self.dtype))
        self.input_zero_point = input_zero_point
        self.bound = bound

    def offset_input(self, x):
        """Return x - input_zero_point in the product's type."""
        a = x.astype(self.dtype)
        a -= self.dtype(self.input_zero_point)
        return a

    def __call__(self, a):
        acc = a @ self.weights
        return acc if self.dtype is np.int64 else acc.astype(np.int64)

    def raw(self, a):
        """Return the products in the product's type (exact integers either way)."""
        return a @ self.weights


def _conv_padding(padding, size, kernel, stride, dilation):
    """Return (output size, padding before, padding after) of one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    if padding == _PADDING_SAME:
        out = (size + stride - 1) // stride
    elif padding == _PADDING_VALID:
        out = (size - effective + stride) // stride
    else:
        raise ValueError(padding)
    total = max(0, (out - 1) * stride + effective - size)
    return out, total // 2, total - total // 2


def _patches(a, kh, kw, sh, sw, dh, dw, pads, out_hw):
    """Return the (N, OH, OW, KH*KW*C) patches of an NHWC array padded with zeros."""
    n, h, w, c = a.shape
    (top, bottom), (left, right) = pads
    oh, ow = out_hw
    if top or bottom or left or right:
        padded = np.zeros((n, h + top + bottom, w + left + right, c), a.dtype)
        padded[:, top:top + h, left:left + w] = a
    else:
        padded = a
    if kh == 1 and kw == 1:
        return padded[:, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw]
    slices = []
    for y in range(kh):
        for x in range(kw):
            y0, x0 = y * dh, x * dw
            slices.append(padded[:, y0:y0 + (oh - 1) * sh + 1:sh, x0:x0 + (ow - 1) * sw + 1:sw])
    return np.concatenate(slices, axis=-1)


def _prepare_conv_2d(ctx):
    x, w, b, out = ctx.tin(0), ctx.tin(1), ctx.tin(2), ctx.tout()
    ctx.require_int8(x, w, out)
    weights = ctx.constant(1, "constant weights")
    stride_w, stride_h = ctx.op.option(1, _I32, 1), ctx.op.option(2, _I32, 1)
    dilation_w, dilation_h = ctx.op.option(4, _I32, 1), ctx.op.option(5, _I32, 1)
    padding = ctx.op.option(0, _I8, _PADDING_SAME)
    activation = ctx.op.option(3, _I8, _ACT_NONE)
    oc, kh, kw, ic = weights.shape
    n, h, wd, c = ctx.inputs[0].shape
    if c != ic:
        raise ctx.fail(f"grouped convolution ({c} input channels, filter depth {ic})")
    oh, top, bottom = _conv_padding(padding, h, kh, stride_h, dilation_h)
    ow, left, right = _conv_padding(padding, wd, kw, stride_w, dilation_w)
    requantize = _requantizer(ctx, x, w, out, oc, activation)
    matmul = _MatMul(weights.reshape(oc, -1).T, x.zero_point)
    bias = None if b is None else ctx.inputs[2].astype(np.int64)
    pads = ((top, bottom), (left, right))

    # The bias joins a float product while the sum stays inside the float's exact
    # integer range; otherwise the product is converted to int64 first.
    bias_dtype = np.int64
    if bias is not None and matmul.dtype is not np.int64:
        limit = 1 << (24 if matmul.dtype is np.float32 else 53)
        if matmul.bound + int(np.abs(bias).max(initial=0)) < limit:
            bias_dtype = matmul.dtype
    bias_values = None if bias is None else bias.astype(bias_dtype)

    def accumulate(inputs):
        """Return the exact int32 accumulators, NHWC, as int64 or float values."""
        a = matmul.offset_input(inputs[0])
        patches = _patches(a, kh, kw, stride_h, stride_w, dilation_h, dilation_w, pads, (oh, ow))
        acc = matmul.raw(patches.reshape(-1, kh * kw * ic))
        if bias_values is not None:
            if acc.dtype != bias_dtype:
                acc = acc.astype(np.int64)
            acc += bias_values
        return acc.reshape(a.shape[0], oh, ow, oc)

    def run(inputs):
        return [requantize(accumulate(inputs))]

    run.accumulate = accumulate
    run.requantize = requantize
    return run


def _prepare_depthwise_conv_2d(ctx):
    x, w, b, out = ctx.tin(0), ctx.tin(1), ctx.tin(2), ctx.tout()
    ctx.require_int8(x, w, out)
    weights = ctx.constant(1, "constant weights")
    stride_w, stride_h = ctx.op.option(1, _I32, 1), ctx.op.option(2, _I32, 1)
    dilation_w, dilation_h = ctx.op.option(5, _I32, 1), ctx.op.option(6, _I32, 1)
    padding = ctx.op.option(0, _I8, _PADDING_SAME)
    activation = ctx.op.option(4, _I8, _ACT_NONE)
    _, kh, kw, oc = weights.shape
    n, h, wd, c = ctx.inputs[0].shape
    if oc % c:
        raise ctx.fail(f"{oc} output channels for {c} input channels")
    depth_multiplier = oc // c
    oh, top, bottom = _conv_padding(padding, h, kh, stride_h, dilation_h)
    ow, left, right = _conv_padding(padding, wd, kw, stride_w, dilation_w)
    requantize = _requantizer(ctx, x, w, out, oc, activation)
    kernel = weights.reshape(kh, kw, oc).astype(np.int64)
    bias = None if b is None else ctx.inputs[2].astype(np.int64)
    pads = ((top, bottom), (left, right))

    def run(inputs):
        a = inputs[0].astype(np.int64) - x.zero_point
        if depth_multiplier > 1:
            a = np.repeat(a, depth_multiplier, axis=-1)
        acc = np.zeros((a.shape[0], oh, ow, oc), np.int64)
        patches = _patches(a, kh, kw, stride_h, stride_w, dilation_h, dilation_w, pads, (oh, ow))
        for i in range(kh * kw):
            acc += patches[..., i * oc:(i + 1) * oc] * kernel.reshape(-1, oc)[i]
        if bias is not None:
            acc += bias
        return [requantize(acc)]

    return run


def _prepare_fully_connected(ctx):
    x, w, b, out = ctx.tin(0), ctx.tin(1), ctx.tin(2), ctx.tout()
    ctx.require_int8(x, w, out)
    weights = ctx.constant(1, "constant weights")
    activation = ctx.op.option(0, _I8, _ACT_NONE)
    if ctx.op.option(1, _I8, 0) != 0:
        raise ctx.fail("a shuffled weights format")
    keep_dims = bool(ctx.op.option(2, _U8, 0))
    units, depth = weights.shape
    requantize = _requantizer(ctx, x, w, out, units, activation, single=True)
    matmul = _MatMul(weights.T, x.zero_point)
    bias = None if b is None else ctx.inputs[2].astype(np.int64)

    def run(inputs):
        value = inputs[0]
        if value.size % depth:
            raise ValueError(f"{ctx.op.name}: input of {value.size} values is not a multiple of {depth}")
        acc = matmul(matmul.offset_input(value.reshape(-1, depth)))
        if bias is not None:
            acc += bias
        result = requantize(acc)
        if keep_dims:
            result = result.reshape(value.shape[:-1] + (units,))
        return [result]

    return run


def _pool_geometry(ctx):
    padding = ctx.op.option(0, _I8, _PADDING_SAME)
    stride_w, stride_h = ctx.op.option(1, _I32, 1), ctx.op.option(2, _I32, 1)
    filter_w, filter_h = ctx.op.option(3, _I32, 1), ctx.op.option(4, _I32, 1)
    activation = ctx.op.option(5, _I8, _ACT_NONE)
    n, h, w, c = ctx.inputs[0].shape
    oh, top, bottom = _conv_padding(padding, h, filter_h, stride_h, 1)
    ow, left, right = _conv_padding(padding, w, filter_w, stride_w, 1)
    return (filter_h, filter_w, stride_h, stride_w, ((top, bottom), (left, right)),
            (oh, ow), activation)


def _check_same_quantization(ctx, a, b):
    if a.scale != b.scale or a.zero_point != b.zero_point:
        raise ctx.fail(f"different quantization of {a.name!r} and {b.name!r}")


def _prepare_max_pool_2d(ctx):
    x, out = ctx.tin(0), ctx.tout()
    ctx.require_int8(x, out)
    _check_same_quantization(ctx, x, out)
    kh, kw, sh, sw, pads, (oh, ow), activation = _pool_geometry(ctx)
    low, high = _activation_range(activation, out, ctx.op)
    n, h, w, c = ctx.inputs[0].shape
    no_padding = not any(pads[0]) and not any(pads[1])
    tiled = no_padding and (kh, kw) == (sh, sw) and h == oh * kh and w == ow * kw

    def pool(value):
        """Return the window maxima of an NHWC array of any real type."""
        if tiled:
            if kh == 1 and kw == 2:
                pairs = value.reshape(value.shape[0], oh, ow, 2, c)
                return np.maximum(pairs[:, :, :, 0], pairs[:, :, :, 1])
            return value.reshape(value.shape[0], oh, kh, ow, kw, c).max(axis=(2, 4))
        (top, bottom), (left, right) = pads
        lowest = -np.inf if value.dtype.kind == "f" else np.iinfo(value.dtype).min
        padded = np.full((value.shape[0], h + top + bottom, w + left + right, c), lowest, value.dtype)
        padded[:, top:top + h, left:left + w] = value
        result = None
        for y in range(kh):
            for x in range(kw):
                window = padded[:, y:y + (oh - 1) * sh + 1:sh, x:x + (ow - 1) * sw + 1:sw]
                result = window.copy() if result is None else np.maximum(result, window)
        return result

    def clamp(result):
        if low > -128 or high < 127:
            result = np.clip(result, low, high).astype(np.int8)
        return result

    def run(inputs):
        return [clamp(pool(inputs[0]))]

    run.pool = pool
    run.clamp = clamp
    return run


def _prepare_average_pool_2d(ctx):
    x, out = ctx.tin(0), ctx.tout()
    ctx.require_int8(x, out)
    _check_same_quantization(ctx, x, out)
    kh, kw, sh, sw, pads, (oh, ow), activation = _pool_geometry(ctx)
    low, high = _activation_range(activation, out, ctx.op)
    n, h, w, c = ctx.inputs[0].shape
    (top, bottom), (left, right) = pads
    # Count of in-image positions per output position (padding does not count).
    inside = np.zeros((h + top + bottom, w + left + right), np.int64)
    inside[top:top + h, left:left + w] = 1
    counts = np.zeros((oh, ow), np.int64)
    for y in range(kh):
        for x in range(kw):
            counts += inside[y:y + (oh - 1) * sh + 1:sh, x:x + (ow - 1) * sw + 1:sw]
    counts = counts[None, :, :, None]

    def run(inputs):
        value = inputs[0].astype(np.int64)
        padded = np.zeros((value.shape[0], h + top + bottom, w + left + right, c), np.int64)
        padded[:, top:top + h, left:left + w] = value
        total = np.zeros((value.shape[0], oh, ow, c), np.int64)
        for y in range(kh):
            for x in range(kw):
                total += padded[:, y:y + (oh - 1) * sh + 1:sh, x:x + (ow - 1) * sw + 1:sw]
        # (sum +/- count / 2) / count with C's truncating division: halves away from zero.
        half = counts // 2
        numerator = np.where(total > 0, total + half, total - half)
        result = np.sign(numerator) * (np.abs(numerator) // counts)
        return [np.clip(result, low, high).astype(np.int8)]

    return run


def _binary_quantized_table(ctx, a, b, out, kind):
    """Return the 65536-entry table of int8 ADD, SUB or MUL for these quantizations."""
    activation = ctx.op.option(0, _I8, _ACT_NONE)
    x1, x2 = _pair_grid()
    if ctx.kernels == "xnnpack":
        result = _xnnpack_binary(kind, a, b, out, x1, x2)
        if result is not None:
            low, high = _xnnpack_activation_range(activation, out, ctx.op)
            return _pair_table(x1, x2, np.clip(result, low, high))
    low, high = _activation_range(activation, out, ctx.op)
    if kind == "MUL":
        # real multiplier = s1 * s2 / s_out, computed in float32 as TFLite's Prepare does.
        real = float(np.float32(np.float32(a.scale) * np.float32(b.scale)) / np.float32(out.scale))
        multiplier, shift = quantize_multiplier(real)
        product = (x1 - a.zero_point) * (x2 - b.zero_point)
        result = rescale(product, multiplier, shift) + out.zero_point
    else:
        left_shift = 20
        twice_max = 2.0 * max(float(np.float32(a.scale)), float(np.float32(b.scale)))
        m1, s1 = quantize_multiplier(float(np.float32(a.scale)) / twice_max)
        m2, s2 = quantize_multiplier(float(np.float32(b.scale)) / twice_max)
        mo, so = quantize_multiplier(twice_max / ((1 << left_shift) * float(np.float32(out.scale))))
        scaled1 = rescale((x1 - a.zero_point) << left_shift, m1, s1)
        scaled2 = rescale((x2 - b.zero_point) << left_shift, m2, s2)
        raw = scaled1 + scaled2 if kind == "ADD" else scaled1 - scaled2
        result = rescale(raw, mo, so) + out.zero_point
    return _pair_table(x1, x2, np.clip(result, low, high))


def _prepare_binary(kind):
    def prepare(ctx):
        a, b, out = ctx.tin(0), ctx.tin(1), ctx.tout()
        if a.dtype == np.int8:
            ctx.require_int8(a, b, out)
            table = _binary_quantized_table(ctx, a, b, out, kind)
            return lambda inputs: [_pair_lookup(table, inputs[0], inputs[1])]
        if a.dtype != b.dtype or a.dtype not in (np.int32, np.int64, np.float32):
            raise ctx.fail(f"{a.dtype.name} and {b.dtype.name} inputs")
        activation = ctx.op.option(0, _I8, _ACT_NONE)
        function = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply}[kind]
        ranges = {_ACT_NONE: (None, None), _ACT_RELU: (0, None), _ACT_RELU6: (0, 6),
                  _ACT_RELU_N1_TO_1: (-1, 1)}
        if activation not in ranges:
            raise ctx.fail(f"fused activation {activation}")
        low, high = ranges[activation]

        def run(inputs):
            result = function(inputs[0], inputs[1]).astype(out.dtype)
            if low is not None or high is not None:
                result = np.clip(result, low, high).astype(out.dtype)
            return [result]

        return run

    return prepare


def _prepare_unary_table(make_table):
    def prepare(ctx):
        x, out = ctx.tin(0), ctx.tout()
        ctx.require_int8(x, out)
        table = make_table(ctx, x, out)
        return lambda inputs: [_lookup(table, inputs[0])]

    return prepare


def _logistic_table(ctx, x, out):
    if ctx.kernels == "xnnpack":
        return _xnnpack_float_table(x, out, _xnnpack_logistic)
    return _float_table(x, out, _logistic_f32)


def _tanh_table(ctx, x, out):
    if ctx.kernels == "xnnpack":
        # XNNPACK calls the C library's tanhf, which glibc 2.36 does not always round
        # correctly.
        return _xnnpack_float_table(x, out, tanhf)
    return _float_table(x, out, _tanh_f32)


def _relu_table(act_min, act_max):
    """Table of TFLite's QuantizedReluX: rescale to the output, then clamp to the
    quantized [act_min, act_max]."""

    def make(ctx, x, out):
        values = np.arange(-128, 128, dtype=np.int64)
        real = float(np.float32(np.float32(x.scale) / np.float32(out.scale)))
        multiplier, shift = quantize_multiplier(real)
        scale = np.float32(out.scale)
        low = max(-128, out.zero_point + int(_round_half_away(np.float32(act_min) / scale)))
        high = 127 if act_max is None else min(
            127, out.zero_point + int(_round_half_away(np.float32(act_max) / scale)))
        result = out.zero_point + rescale(values - x.zero_point, multiplier, shift)
        return _byte_table(values, np.clip(result, low, high))

    return make


def _leaky_relu_table(ctx, x, out):
    alpha = np.float32(ctx.op.option(0, _F32, 0.0))
    values = np.arange(-128, 128, dtype=np.int64)
    if ctx.kernels == "xnnpack":
        table = _xnnpack_leaky_relu_table(x, out, alpha, values)
        if table is not None:
            return table
    in_scale, out_scale = np.float32(x.scale), np.float32(out.scale)
    m_alpha, s_alpha = quantize_multiplier(float(np.float32(np.float32(in_scale * alpha) / out_scale)))
    m_identity, s_identity = quantize_multiplier(float(np.float32(in_scale / out_scale)))
    centered = values - x.zero_point
    result = np.where(centered >= 0, rescale(centered, m_identity, s_identity),
                      rescale(centered, m_alpha, s_alpha)) + out.zero_point
    return _byte_table(values, np.clip(result, -128, 127))


def _xnnpack_leaky_relu_table(x, out, alpha, values):
    """Return XNNPACK's qs8 LEAKY_RELU table, or None where XNNPACK rejects the scales.

    Both slopes become multipliers of 8 fractional bits, rint(256 * scale) in float32,
    and the product of the offset input is shifted right by 8 bits, rounding halves up.
    """
    positive_scale = np.float32(x.scale) / np.float32(out.scale)
    negative_scale = positive_scale * alpha
    if not (2.0 ** -8 <= positive_scale <= 2.0 ** 7
            and 2.0 ** -8 <= abs(negative_scale)
            and float.fromhex("-0x1.fffcp+6") <= negative_scale <= 2.0 ** 7):
        return None
    positive = int(np.rint(np.float32(256) * positive_scale))
    negative = int(np.rint(np.float32(256) * negative_scale))
    centered = values - x.zero_point
    product = centered * np.where(centered >= 0, positive, negative)
    result = ((product + 128) >> 8) + out.zero_point
    return _byte_table(values, np.clip(result, -128, 127))


def _prepare_quantize(ctx):
    x, out = ctx.tin(0), ctx.tout()
    if out.dtype != np.int8 or not out.quantized:
        raise ctx.fail(f"QUANTIZE to {out.dtype.name}")
    if x.dtype == np.float32:
        scale = np.float32(out.scale)

        def run(inputs):
            q = _round_half_away(inputs[0] / scale) + out.zero_point
            return [np.clip(q, -128, 127).astype(np.int8)]

        return run
    if x.dtype not in (np.int8, np.uint8) or not x.quantized:
        raise ctx.fail(f"QUANTIZE from {x.dtype.name}")
    ratio = np.float32(x.scale) / np.float32(out.scale)
    if ctx.kernels == "xnnpack" and x.dtype == np.int8 and 2.0 ** -8 <= ratio <= 2.0 ** 7:
        # XNNPACK's int8 to int8 convert: the scale ratio as a Q8 integer (lrintf of
        # 256 * ratio in float32), and the product rounded half up by a shift of 8 bits.
        multiplier = int(np.rint(np.float32(256.0) * ratio))
        values = np.arange(-128, 128, dtype=np.int64)
        result = np.clip((((values - x.zero_point) * multiplier + 128) >> 8) + out.zero_point, -128, 127)
        table = _byte_table(values, result)
        return lambda inputs: [_lookup(table, inputs[0])]
    multiplier, shift = quantize_multiplier(float(np.float32(x.scale)) / float(np.float32(out.scale)))
    low = -128 if x.dtype == np.int8 else 0
    values = np.arange(low, low + 256, dtype=np.int64)
    result = np.clip(rescale(values - x.zero_point, multiplier, shift) + out.zero_point, -128, 127)
    if x.dtype == np.int8:
        table = _byte_table(values, result)
        return lambda inputs: [_lookup(table, inputs[0])]
    table = result.astype(np.int8)
    return lambda inputs: [table[inputs[0]]]


def _prepare_dequantize(ctx):
    x, out = ctx.tin(0), ctx.tout()
    if x.dtype not in (np.int8, np.uint8, np.int16) or out.dtype != np.float32:
        raise ctx.fail(f"DEQUANTIZE from {x.dtype.name} to {out.dtype.name}")
    if len(x.scales) != 1:
        raise ctx.fail("per-channel DEQUANTIZE")
    scale = np.float32(x.scale)
    return lambda inputs: [(inputs[0].astype(np.int32) - x.zero_point).astype(np.float32) * scale]


# gemmlowp fixed-point helpers on int64 arrays holding int32 values. A FixedPoint<int32,
# I> value x stands for raw(x) / 2**(31 - I).
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


def _doubling_high_mul(a, b):
    """SaturatingRoundingDoublingHighMul: round(a * b / 2**31), halves up."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    result = (a * b + (1 << 30)) >> 31
    return np.where((a == _INT32_MIN) & (b == _INT32_MIN), _INT32_MAX, result)


def _divide_by_pot(x, exponent):
    """RoundingDivideByPOT: x / 2**exponent rounded half away from zero."""
    x = np.asarray(x, np.int64)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def _saturating_shift_left(x, exponent):
    """SaturatingRoundingMultiplyByPOT for a positive exponent."""
    threshold = (1 << (31 - exponent)) - 1
    result = x << exponent
    result = np.where(x > threshold, _INT32_MAX, result)
    return np.where(x < -threshold, _INT32_MIN, result)


def _exp_on_interval(a):
    """exp(a) for a Q0.31 value a in [-1/4, 0), by a Taylor expansion around -1/8."""
    x = a + (1 << 28)
    x2 = _doubling_high_mul(x, x)
    x3 = _doubling_high_mul(x2, x)
    x4 = _doubling_high_mul(x2, x2)
    x4_over_4 = _divide_by_pot(x4, 2)
    poly = _divide_by_pot(_doubling_high_mul(x4_over_4 + x3, 715827883) + x2, 1)  # 1/3 in Q0.31
    exp_minus_one_eighth = 1895147668
    return exp_minus_one_eighth + _doubling_high_mul(exp_minus_one_eighth, x + poly)


def _exp_on_negative_values(a):
    """exp(a) in Q0.31 for a Q5.26 value a <= 0 (gemmlowp's exp_on_negative_values)."""
    fractional_bits = 26
    quarter = 1 << 24
    a_mod_quarter_minus_quarter = (a & (quarter - 1)) - quarter
    result = _exp_on_interval(_saturating_shift_left(a_mod_quarter_minus_quarter, 5))
    remainder = a_mod_quarter_minus_quarter - a
    # exp(-2**k) in Q0.31 for each bit of the whole quarters of -a.
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084),
                                 (1, 290630308), (2, 39332535), (3, 720401), (4, 242)):
        bit = (remainder & (1 << (fractional_bits + exponent))) != 0
        result = np.where(bit, _doubling_high_mul(result, multiplier), result)
    return np.where(a == 0, _INT32_MAX, result)


def _one_over_one_plus_x(a):
    """1 / (1 + a) in Q0.31 for a Q0.31 value a in [0, 1), by Newton-Raphson."""
    # RoundingHalfSum(a, 1): (a + 1) / 2 rounded half up, as a + INT32_MAX >= 0 here.
    half_denominator = (a + _INT32_MAX + 1) >> 1
    x = 1515870810 + _doubling_high_mul(half_denominator, -1010580540)  # Q2.29: 48/17 - 32/17 d
    for _ in range(3):
        product = _doubling_high_mul(half_denominator, x)
        x = x + _saturating_shift_left(_doubling_high_mul(x, (1 << 29) - product), 2)
    return _saturating_shift_left(x, 1)


def _prepare_softmax(ctx):
    x, out = ctx.tin(0), ctx.tout()
    ctx.require_int8(x, out)
    if out.zero_point != -128 or abs(out.scale - 1 / 256) > 0.001 / 256:
        raise ctx.fail(f"int8 output quantization (scale {out.scale}, zero point "
                       f"{out.zero_point}; 1/256 and -128 expected)")
    if ctx.kernels == "xnnpack":
        return _prepare_softmax_float_table(ctx, x, out)
    return _prepare_softmax_fixed_point(ctx, x, out)


def _prepare_softmax_float_table(ctx, x, out):
    """TFLite's optimized int8 softmax on x86-64 (optimized_ops::Softmax with a float table).

    The XNNPACK delegate does not take int8 SOFTMAX, so ai-edge-litert's default interpreter
    runs this kernel: exp(-input_scale * beta * d) for each difference d = max - x in a
    float32 table, a float32 sum in element order, probabilities scaled by
    1 / (sum * output_scale) and rounded half away from zero.
    """
    f32 = np.float32
    beta = f32(ctx.op.option(0, _F32, 0.0))
    exponent_scale = f32(-f32(x.scale) * beta)
    differences = np.arange(256, dtype=np.float32)
    # NOTE: TFLite calls the C library's expf. This rounds the double-precision exp to
    # float32, which can differ from expf by one unit in the last place in rare cases.
    # On aarch64, TFLite's optimized kernel uses a 16-bit integer exp table instead, and
    # litert 2.3 there differed from this kernel by one step on 1% of corpus windows.
    table = np.exp((exponent_scale * differences).astype(np.float64)).astype(f32)
    output_scale = f32(out.scale)

    def run(inputs):
        value = inputs[0].astype(np.int64)
        exps = table[value.max(axis=-1, keepdims=True) - value]
        # cumsum adds in element order, as the C loop does; np.sum would add pairwise.
        total = np.cumsum(exps, axis=-1, dtype=f32)[..., -1:]
        inverse = f32(1.0) / (total * output_scale)
        result = _round_half_away(exps * inverse).astype(np.int64) + out.zero_point
        return [np.clip(result, -128, 127).astype(np.int8)]

    return run


def _prepare_softmax_fixed_point(ctx, x, out):
    """TFLite's reference int8 softmax (reference_ops::Softmax in gemmlowp fixed point)."""
    beta = float(np.float32(ctx.op.option(0, _F32, 0.0)))
    scaled_diff_integer_bits = 5
    real = min(beta * float(np.float32(x.scale)) * (1 << (31 - scaled_diff_integer_bits)),
               float((1 << 31) - 1))
    multiplier, left_shift = quantize_multiplier(real)
    if left_shift < 0:
        raise ctx.fail(f"input scale {x.scale} with beta {beta}")
    radius = int(np.floor(((1 << scaled_diff_integer_bits) - 1)
                          * float(1 << (31 - scaled_diff_integer_bits)) / float(1 << left_shift)))
    # Per difference d = max - x in 0..255: exp(-d) in Q0.31 and its Q12.19 share of the sum.
    differences = -np.arange(256, dtype=np.int64)
    scaled = _doubling_high_mul(differences << left_shift, multiplier)
    exps = np.where(differences >= -radius, _exp_on_negative_values(scaled), 0)
    shares = _divide_by_pot(exps, 12)

    def run(inputs):
        value = inputs[0].astype(np.int64)
        d = value.max(axis=-1, keepdims=True) - value
        total = shares[d].sum(axis=-1, keepdims=True)
        # GetReciprocal: normalize the Q12.19 sum to [1, 2) and invert it.
        headroom_plus_one = 32 - np.frexp(total.astype(np.float64))[1].astype(np.int64)
        bits_over_unit = 12 - headroom_plus_one
        normalized = (total << headroom_plus_one) - (1 << 31)
        reciprocal = _one_over_one_plus_x(normalized)
        exponent = bits_over_unit + 31 - 8
        result = _divide_by_pot(_doubling_high_mul(reciprocal, exps[d]), exponent) - 128
        result = np.where(d <= radius, result, -128)
        return [np.clip(result, -128, 127).astype(np.int8)]

    return run


def _prepare_concatenation(ctx):
    out = ctx.tout()
    axis = ctx.op.option(0, _I32, 0)
    activation = ctx.op.option(1, _I8, _ACT_NONE)
    tensors = [ctx.tin(i) for i in range(len(ctx.op.inputs))]
    low, high = -128, 127
    if out.dtype == np.int8:
        ctx.require_int8(out, *tensors)
        for t in tensors:
            _check_same_quantization(ctx, t, out)
        low, high = _activation_range(activation, out, ctx.op)
    elif activation != _ACT_NONE:
        raise ctx.fail(f"fused activation on {out.dtype.name} CONCATENATION")

    def run(inputs):
        result = np.concatenate(inputs, axis=axis)
        if low > -128 or high < 127:
            result = np.clip(result, low, high).astype(np.int8)
        return [result]

    return run


def _prepare_reshape(ctx):
    out = ctx.tout()
    has_shape_input = len(ctx.op.inputs) > 1 and ctx.op.inputs[1] >= 0
    option_shape = ctx.op.option_vector(0, _I32)

    def run(inputs):
        if has_shape_input and inputs[1] is not None and inputs[1].ndim == 1:
            shape = [int(v) for v in inputs[1]]
        elif option_shape:
            shape = list(option_shape)
        else:
            shape = list(out.shape)
        return [inputs[0].reshape(shape)]

    return run


def _prepare_shape(ctx):
    dtype = ctx.tout().dtype
    return lambda inputs: [np.array(inputs[0].shape, dtype)]


def _prepare_strided_slice(ctx):
    begin_mask, end_mask = ctx.op.option(0, _I32, 0), ctx.op.option(1, _I32, 0)
    ellipsis_mask, new_axis_mask = ctx.op.option(2, _I32, 0), ctx.op.option(3, _I32, 0)
    shrink_mask = ctx.op.option(4, _I32, 0)
    offset = bool(ctx.op.option(5, _U8, 0))
    if ellipsis_mask or new_axis_mask:
        raise ctx.fail("ellipsis_mask or new_axis_mask")

    def run(inputs):
        value, begin, end, strides = inputs[0], inputs[1], inputs[2], inputs[3]
        index = []
        squeeze = []
        for i in range(len(begin)):
            b, e, s = int(begin[i]), int(end[i]), int(strides[i])
            if offset:
                e += b
            if shrink_mask & (1 << i):
                b = b + value.shape[i] if b < 0 else b
                index.append(slice(b, b + 1))
                squeeze.append(i)
                continue
            index.append(slice(None if begin_mask & (1 << i) else b,
                               None if end_mask & (1 << i) else e, s))
        result = value[tuple(index)]
        if squeeze:
            result = result.reshape([d for i, d in enumerate(result.shape) if i not in squeeze])
        return [result.copy()]

    return run


def _prepare_pack(ctx):
    axis = ctx.op.option(1, _I32, 0)
    return lambda inputs: [np.stack(inputs, axis=axis)]


def _prepare_unpack(ctx):
    axis = ctx.op.option(1, _I32, 0)
    return lambda inputs: list(np.moveaxis(inputs[0], axis, 0))


def _prepare_split(ctx):
    count = ctx.op.option(0, _I32, len(ctx.op.outputs))

    def run(inputs):
        return np.split(inputs[1], count, axis=int(inputs[0].reshape(-1)[0]))

    return run


def _prepare_split_v(ctx):
    def run(inputs):
        value, sizes, axis = inputs[0], [int(s) for s in inputs[1]], int(inputs[2].reshape(-1)[0])
        if -1 in sizes:
            sizes[sizes.index(-1)] = value.shape[axis] - (sum(sizes) + 1)
        return np.split(value, np.cumsum(sizes)[:-1], axis=axis)

    return run


def _prepare_gather(ctx):
    axis = ctx.op.option(0, _I32, 0)
    if ctx.op.option(1, _I32, 0) != 0:
        raise ctx.fail("batch_dims")
    return lambda inputs: [np.take(inputs[0], inputs[1], axis=axis)]


def _reduce_axes(inputs):
    return tuple(int(a) for a in np.asarray(inputs[1]).reshape(-1))


def _prepare_reduce(function):
    def prepare(ctx):
        x = ctx.tin(0)
        if x.dtype not in (np.int32, np.int64, np.float32) or x.quantized:
            raise ctx.fail(f"{x.dtype.name} input")
        keep_dims = bool(ctx.op.option(0, _U8, 0))
        dtype = ctx.tout().dtype
        return lambda inputs: [function(inputs[0], axis=_reduce_axes(inputs),
                                        keepdims=keep_dims).astype(dtype)]

    return prepare


def _xnnpack_mean(x, out, axes, count, keep_dims):
    """Return XNNPACK's qs8 MEAN: an int32 sum, then one float32 rescale with a bias.

    XNNPACK sums the raw int8 inputs, without their zero point, and converts the sum as
    rint(float32(sum) * scale + bias) in float32, rounded to nearest even, with
    scale = float32(input_scale / output_scale) * float32(1 / count) and
    bias = output_zero_point - float32(input_zero_point * count * scale).
    Folding the input zero point into the bias rounds differently from rescaling the
    zero-point-corrected sum. The two differed by one step on about 1 in 10**6 sums of
    random scales and inputs.
    """
    f32 = np.float32
    scale = (f32(x.scale) / f32(out.scale)) * (f32(1.0) / f32(count))
    bias = f32(out.zero_point) - f32(x.zero_point * count) * scale

    def run(inputs):
        total = inputs[0].astype(np.int64).sum(axis=axes, keepdims=keep_dims)
        value = total.astype(f32) * scale + bias
        return [np.clip(np.rint(value), -128, 127).astype(np.int8)]

    return run


def _prepare_mean(ctx):
    x, out = ctx.tin(0), ctx.tout()
    keep_dims = bool(ctx.op.option(0, _U8, 0))
    if x.dtype == np.float32:
        return lambda inputs: [np.mean(inputs[0], axis=_reduce_axes(inputs), keepdims=keep_dims,
                                       dtype=np.float32)]
    ctx.require_int8(x, out)
    axes = _reduce_axes(ctx.inputs)
    rank = ctx.inputs[0].ndim
    axes = tuple(sorted({a + rank if a < 0 else a for a in axes}))
    count = int(np.prod([ctx.inputs[0].shape[a] for a in axes], dtype=np.int64))
    if count == 0:
        raise ctx.fail("MEAN over an empty axis")
    if ctx.kernels == "xnnpack":
        return _xnnpack_mean(x, out, axes, count, keep_dims)
    multiplier, shift = quantize_multiplier(float(np.float32(x.scale)) / float(np.float32(out.scale)))
    # TFLite's reference MEAN (QuantizedMeanOrSum) for every axis set: fold 1 / count into
    # the multiplier, then rescale the zero-point-corrected sum.
    extra = min(count.bit_length() - 1, 32, 31 + shift)
    multiplier = (multiplier << extra) // count
    shift -= extra

    def run(inputs):
        total = inputs[0].astype(np.int64).sum(axis=axes, keepdims=keep_dims)
        result = rescale(total - x.zero_point * count, multiplier, shift) + out.zero_point
        return [np.clip(result, -128, 127).astype(np.int8)]

    return run


def _prepare_fill(ctx):
    return lambda inputs: [np.full([int(d) for d in inputs[0]], inputs[1].reshape(-1)[0],
                                   dtype=ctx.tout().dtype)]


def _prepare_transpose(ctx):
    return lambda inputs: [np.transpose(inputs[0], [int(p) for p in inputs[1]])]


def _prepare_squeeze(ctx):
    dims = ctx.op.option_vector(0, _I32)

    def run(inputs):
        value = inputs[0]
        if dims:
            return [np.squeeze(value, axis=tuple(d % value.ndim for d in dims))]
        return [np.squeeze(value)]

    return run


def _prepare_expand_dims(ctx):
    return lambda inputs: [np.expand_dims(inputs[0], int(inputs[1].reshape(-1)[0]))]


def _prepare_pad(ctx):
    x, out = ctx.tin(0), ctx.tout()
    if x.quantized and out.quantized:
        _check_same_quantization(ctx, x, out)
    has_constant = ctx.op.name == "PADV2" and len(ctx.op.inputs) > 2 and ctx.op.inputs[2] >= 0

    def run(inputs):
        pads = [(int(a), int(b)) for a, b in np.asarray(inputs[1]).reshape(-1, 2)]
        if has_constant:
            fill = inputs[2].reshape(-1)[0]
        else:
            fill = out.zero_point if out.quantized else 0
        return [np.pad(inputs[0], pads, constant_values=fill)]

    return run


def _prepare_cast(ctx):
    dtype = ctx.tout().dtype
    return lambda inputs: [inputs[0].astype(dtype)]


def _prepare_min_max(function):
    def prepare(ctx):
        a, b, out = ctx.tin(0), ctx.tin(1), ctx.tout()
        if a.quantized:
            _check_same_quantization(ctx, a, out)
            _check_same_quantization(ctx, b, out)
        return lambda inputs: [function(inputs[0], inputs[1])]

    return prepare


# NOTE: these kernels were compared bit for bit with ai-edge-litert's reference kernels and
# its default interpreter on converted models. No test model contains the following ones,
# which follow the TFLite sources untested: RELU, RELU6, RELU_N1_TO_1 and RELU_0_TO_1 as
# separate operators, int8-to-int8 QUANTIZE, MAXIMUM, MINIMUM, SPLIT_V, SQUEEZE,
# EXPAND_DIMS, PADV2, CAST, SUM, REDUCE_MAX and REDUCE_MIN. With kernels="xnnpack" they keep
# the reference arithmetic, although XNNPACK may take int8 QUANTIZE and RELU* with its own
# rounding.
_KERNELS = {
    "ADD": _prepare_binary("ADD"),
    "AVERAGE_POOL_2D": _prepare_average_pool_2d,
    "CAST": _prepare_cast,
    "CONCATENATION": _prepare_concatenation,
    "CONV_2D": _prepare_conv_2d,
    "DEPTHWISE_CONV_2D": _prepare_depthwise_conv_2d,
    "DEQUANTIZE": _prepare_dequantize,
    "EXPAND_DIMS": _prepare_expand_dims,
    "FILL": _prepare_fill,
    "FULLY_CONNECTED": _prepare_fully_connected,
    "GATHER": _prepare_gather,
    "LEAKY_RELU": _prepare_unary_table(_leaky_relu_table),
    "LOGISTIC": _prepare_unary_table(_logistic_table),
    "MAX_POOL_2D": _prepare_max_pool_2d,
    "MAXIMUM": _prepare_min_max(np.maximum),
    "MEAN": _prepare_mean,
    "MINIMUM": _prepare_min_max(np.minimum),
    "MUL": _prepare_binary("MUL"),
    "PACK": _prepare_pack,
    "PAD": _prepare_pad,
    "PADV2": _prepare_pad,
    "QUANTIZE": _prepare_quantize,
    "REDUCE_MAX": _prepare_reduce(np.max),
    "REDUCE_MIN": _prepare_reduce(np.min),
    "REDUCE_PROD": _prepare_reduce(np.prod),
    "RELU": _prepare_unary_table(_relu_table(0.0, None)),
    "RELU6": _prepare_unary_table(_relu_table(0.0, 6.0)),
    "RELU_0_TO_1": _prepare_unary_table(_relu_table(0.0, 1.0)),
    "RELU_N1_TO_1": _prepare_unary_table(_relu_table(-1.0, 1.0)),
    "RESHAPE": _prepare_reshape,
    "SHAPE": _prepare_shape,
    "SOFTMAX": _prepare_softmax,
    "SPLIT": _prepare_split,
    "SPLIT_V": _prepare_split_v,
    "SQUEEZE": _prepare_squeeze,
    "STRIDED_SLICE": _prepare_strided_slice,
    "SUB": _prepare_binary("SUB"),
    "SUM": _prepare_reduce(np.sum),
    "TANH": _prepare_unary_table(_tanh_table),
    "TRANSPOSE": _prepare_transpose,
    "UNPACK": _prepare_unpack,
}

SUPPORTED_OPS = tuple(sorted(_KERNELS))


def unsupported_operators(data):
    """Return the names of the operators in model bytes `data` that this backend cannot run."""
    _, operators, _, _ = _read_graph(data)
    return sorted({op.name for op in operators if op.name not in _KERNELS})


# ---------------------------------------------------------------------------------------
# The interpreter.


def _fuse_conv_pool(conv_run, pool_run):
    """Return a step that max-pools a convolution's accumulators before rescaling them.

    Rescaling and clamping are monotonic, so the maximum of rescaled values equals the
    rescaled maximum, and half (or fewer) of the values need rescaling.
    """

    def run(inputs):
        return [pool_run.clamp(conv_run.requantize(pool_run.pool(conv_run.accumulate(inputs))))]

    return run


class _Plan:
    """The operators left to run per invoke once constant subgraphs are folded."""

    def __init__(self, steps, values, shapes, release):
        self.steps = steps  # (run, input indices, output indices)
        self.values = values  # tensor index -> constant or folded array
        self.shapes = shapes  # tensor index -> shape
        self.release = release  # per step: tensor indices not needed after it


class Interpreter:
    """Runs an int8 TFLite model with numpy; a subset of `tf.lite.Interpreter`.

    Args:
        model_path: a `.tflite` file, if `model_content` is not given.
        model_content: the model's bytes.
        num_threads: accepted for API compatibility. numpy's BLAS decides its own threads.
        experimental_preserve_all_tensors: keep every intermediate tensor for `get_tensor`.
        kernels: "xnnpack" (the default) for the arithmetic of ai-edge-litert's default
            interpreter, or "reference" for TFLite's reference kernels.

    Raises:
        ModelError: the model is not a TFLite model, or contains an operator, tensor type
            or option this backend does not support. The message names the operator.
    """

    def __init__(self, model_path=None, model_content=None, num_threads=None,
                 experimental_preserve_all_tensors=False, kernels="xnnpack", **_ignored):
        if kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}; expected one of {', '.join(KERNELS)}")
        self.kernels = kernels
        if model_content is None:
            if model_path is None:
                raise ValueError("give model_path or model_content")
            with open(model_path, "rb") as f:
                model_content = f.read()
        self._tensors, self._operators, self._inputs, self._outputs = _read_graph(model_content)
        missing = sorted({op.name for op in self._operators if op.name not in _KERNELS})
        if missing:
            raise ModelError(f"the numpy backend does not support operator "
                             f"{', '.join(missing)}; run this model with --backend litert")
        self._preserve = experimental_preserve_all_tensors
        self._input_shapes = {i: self._tensors[i].shape for i in self._inputs}
        self._input_values = {}
        self._plan = None
        self._values = {}
        # Build once at the file's shapes, so every unsupported option or type is reported
        # when the model is loaded rather than at the first invoke.
        self._plan = self._build_plan()
        self._plan = None

    # -- details ------------------------------------------------------------------------

    def _details(self, index):
        t = self._tensors[index]
        if self._plan is not None and index in self._plan.shapes:
            shape = self._plan.shapes[index]
        elif index in self._input_shapes:
            shape = self._input_shapes[index]
        else:
            shape = t.shape
        return {
            "name": t.name,
            "index": index,
            "shape": np.array(shape, np.int32),
            "shape_signature": np.array(t.signature, np.int32),
            "dtype": t.dtype.type,
            "quantization": (t.scale, t.zero_point),
            "quantization_parameters": {"scales": t.scales.copy(),
                                        "zero_points": t.zero_points.astype(np.int32),
                                        "quantized_dimension": t.quantized_dimension},
            "sparsity_parameters": {},
        }

    def get_input_details(self):
        return [self._details(i) for i in self._inputs]

    def get_output_details(self):
        return [self._details(i) for i in self._outputs]

    def get_tensor_details(self):
        return [self._details(i) for i in range(len(self._tensors))]

    # -- allocation ---------------------------------------------------------------------

    def resize_tensor_input(self, input_index, tensor_size, strict=False):
        """Set the shape of input `input_index`; call `allocate_tensors` afterwards."""
        if input_index not in self._input_shapes:
            raise ValueError(f"tensor {input_index} is not an input of the model")
        shape = tuple(int(d) for d in tensor_size)
        signature = self._tensors[input_index].signature
        if len(shape) != len(signature):
            raise ValueError(f"input {input_index}: shape {shape} has rank {len(shape)}, "
                             f"the model expects rank {len(signature)}")
        if strict:
            for new, old in zip(shape, signature):
                if old != -1 and new != old:
                    raise ValueError(f"input {input_index}: only dimensions of size -1 in "
                                     f"{signature} can be resized, not to {shape}")
        self._input_shapes[input_index] = shape
        self._plan = None

    def allocate_tensors(self):
        """Fold constant subgraphs and prepare every operator for the current input shapes."""
        self._plan = self._build_plan()

    def _build_plan(self):
        tensors = self._tensors
        values = {}
        for t in tensors:
            if t.data is not None:
                values[t.index] = t.data
        for i in self._inputs:
            values[i] = np.zeros(self._input_shapes[i], tensors[i].dtype)
        folded = set(values) - set(self._inputs)
        readers = {}
        for op in self._operators:
            for i in op.inputs:
                readers[i] = readers.get(i, 0) + 1
        steps = []
        writer = {}  # tensor index -> position in steps of the operator that writes it
        for op in self._operators:
            inputs = [values.get(i) if i >= 0 else None for i in op.inputs]
            for i, v in zip(op.inputs, inputs):
                if i >= 0 and v is None:
                    raise ModelError(f"operator {op.index} ({op.name}) reads tensor {i}, "
                                     "which no earlier operator writes")
            ctx = _Context(tensors, op, inputs, self.kernels)
            try:
                run = _KERNELS[op.name](ctx)
                outputs = run(inputs)
            except ModelError:
                raise
            except (ValueError, IndexError, TypeError) as e:
                raise ModelError(f"operator {op.index} ({op.name}) failed on shapes "
                                 f"{[None if v is None else v.shape for v in inputs]}: {e}") from None
            for i, v in zip(op.outputs, outputs):
                values[i] = v
            # SHAPE depends only on shapes, which are fixed once tensors are allocated.
            if op.name == "SHAPE" or all(i < 0 or i in folded for i in op.inputs):
                folded.update(op.outputs)
                continue
            fusable = (op.name == "MAX_POOL_2D" and not self._preserve
                       and op.inputs[0] in writer and readers.get(op.inputs[0]) == 1
                       and op.inputs[0] not in self._outputs)
            if fusable:
                position = writer.pop(op.inputs[0])
                conv_run, conv_inputs, _ = steps[position]
                steps[position] = None
                steps.append((_fuse_conv_pool(conv_run, run), conv_inputs, list(op.outputs)))
            else:
                steps.append((run, list(op.inputs), list(op.outputs)))
                if op.name == "CONV_2D":
                    writer[op.outputs[0]] = len(steps) - 1
        steps = [step for step in steps if step is not None]
        shapes = {i: v.shape for i, v in values.items()}
        keep = set(self._outputs) | set(self._inputs) | folded
        release = []
        if not self._preserve:
            last_use = {}
            for n, (_, ins, _) in enumerate(steps):
                for i in ins:
                    if i >= 0:
                        last_use[i] = n
            for n in range(len(steps)):
                release.append([i for i, last in last_use.items() if last == n and i not in keep])
        else:
            release = [[] for _ in steps]
        constants = {i: values[i] for i in folded}
        return _Plan(steps, constants, shapes, release)

    # -- running ------------------------------------------------------------------------

    def set_tensor(self, tensor_index, value):
        """Copy `value` into input `tensor_index`; its dtype and shape must match exactly."""
        if tensor_index not in self._input_shapes:
            raise ValueError(f"tensor {tensor_index} is not an input of the model")
        t = self._tensors[tensor_index]
        value = np.asarray(value)
        if value.dtype != t.dtype:
            raise ValueError(f"cannot set tensor: got value of type {value.dtype.name} but "
                             f"expected type {t.dtype.name} for input {tensor_index}, name: {t.name}")
        if value.shape != tuple(self._input_shapes[tensor_index]):
            raise ValueError(f"cannot set tensor: dimension mismatch, got {value.shape} but "
                             f"expected {tuple(self._input_shapes[tensor_index])} for input "
                             f"{tensor_index}")
        self._input_values[tensor_index] = value.copy()

    def invoke(self):
        """Run the model on the inputs set with `set_tensor`."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("call allocate_tensors() before invoke()")
        values = dict(plan.values)
        for i in self._inputs:
            if i not in self._input_values:
                raise RuntimeError(f"input tensor {i} was not set")
            values[i] = self._input_values[i]
        for (run, ins, outs), release in zip(plan.steps, plan.release):
            results = run([values[i] if i >= 0 else None for i in ins])
            for i, v in zip(outs, results):
                values[i] = v
            for i in release:
                del values[i]
        self._values = values

    def get_tensor(self, tensor_index):
        """Return a copy of tensor `tensor_index` after `invoke`."""
        if tensor_index in self._values:
            return np.array(self._values[tensor_index])
        if self._plan is not None and tensor_index in self._plan.values:
            return np.array(self._plan.values[tensor_index])
        raise ValueError(f"tensor {tensor_index} is not available: only inputs, outputs and "
                         "constants are kept unless experimental_preserve_all_tensors=True")
