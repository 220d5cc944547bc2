"""A minimal reader for TFLite model files (FlatBuffers), with no TensorFlow.

It reads what the device side needs before any interpreter exists: the metadata entries
(where `edge-etc convert` stores the preprocessing settings and labels) and the operator
list, and the widths of the output's parts. Field numbers follow TensorFlow Lite's
`schema.fbs` (table Model: 1 operator_codes, 2 subgraphs, 4 buffers, 6 metadata; table
SubGraph: 0 tensors, 1 inputs, 2 outputs, 3 operators; table Tensor: 0 shape; table
Operator: 0 opcode_index, 1 inputs, 2 outputs; table Metadata: 0 name, 1 buffer; table
Buffer: 0 data, 1 offset, 2 size; table OperatorCode: 0 deprecated_builtin_code,
1 custom_code, 3 builtin_code).
"""

import struct

_U8 = struct.Struct("<B")
_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# BuiltinOperator values from TensorFlow Lite's schema.fbs (TensorFlow 2.21).
BUILTIN_OPS = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    5: "DEPTH_TO_SPACE", 6: "DEQUANTIZE", 7: "EMBEDDING_LOOKUP", 8: "FLOOR",
    9: "FULLY_CONNECTED", 10: "HASHTABLE_LOOKUP", 11: "L2_NORMALIZATION", 12: "L2_POOL_2D",
    13: "LOCAL_RESPONSE_NORMALIZATION", 14: "LOGISTIC", 15: "LSH_PROJECTION", 16: "LSTM",
    17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 20: "RELU_N1_TO_1", 21: "RELU6", 22: "RESHAPE",
    23: "RESIZE_BILINEAR", 24: "RNN", 25: "SOFTMAX", 26: "SPACE_TO_DEPTH", 27: "SVDF",
    28: "TANH", 29: "CONCAT_EMBEDDINGS", 30: "SKIP_GRAM", 31: "CALL", 32: "CUSTOM",
    33: "EMBEDDING_LOOKUP_SPARSE", 34: "PAD", 35: "UNIDIRECTIONAL_SEQUENCE_RNN", 36: "GATHER",
    37: "BATCH_TO_SPACE_ND", 38: "SPACE_TO_BATCH_ND", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB",
    42: "DIV", 43: "SQUEEZE", 44: "UNIDIRECTIONAL_SEQUENCE_LSTM", 45: "STRIDED_SLICE",
    46: "BIDIRECTIONAL_SEQUENCE_RNN", 47: "EXP", 48: "TOPK_V2", 49: "SPLIT",
    50: "LOG_SOFTMAX", 51: "DELEGATE", 52: "BIDIRECTIONAL_SEQUENCE_LSTM", 53: "CAST",
    54: "PRELU", 55: "MAXIMUM", 56: "ARG_MAX", 57: "MINIMUM", 58: "LESS", 59: "NEG",
    60: "PADV2", 61: "GREATER", 62: "GREATER_EQUAL", 63: "LESS_EQUAL", 64: "SELECT",
    65: "SLICE", 66: "SIN", 67: "TRANSPOSE_CONV", 68: "SPARSE_TO_DENSE", 69: "TILE",
    70: "EXPAND_DIMS", 71: "EQUAL", 72: "NOT_EQUAL", 73: "LOG", 74: "SUM", 75: "SQRT",
    76: "RSQRT", 77: "SHAPE", 78: "POW", 79: "ARG_MIN", 80: "FAKE_QUANT", 81: "REDUCE_PROD",
    82: "REDUCE_MAX", 83: "PACK", 84: "LOGICAL_OR", 85: "ONE_HOT", 86: "LOGICAL_AND",
    87: "LOGICAL_NOT", 88: "UNPACK", 89: "REDUCE_MIN", 90: "FLOOR_DIV", 91: "REDUCE_ANY",
    92: "SQUARE", 93: "ZEROS_LIKE", 94: "FILL", 95: "FLOOR_MOD", 96: "RANGE",
    97: "RESIZE_NEAREST_NEIGHBOR", 98: "LEAKY_RELU", 99: "SQUARED_DIFFERENCE",
    100: "MIRROR_PAD", 101: "ABS", 102: "SPLIT_V", 103: "UNIQUE", 104: "CEIL",
    105: "REVERSE_V2", 106: "ADD_N", 107: "GATHER_ND", 108: "COS", 109: "WHERE", 110: "RANK",
    111: "ELU", 112: "REVERSE_SEQUENCE", 113: "MATRIX_DIAG", 114: "QUANTIZE",
    115: "MATRIX_SET_DIAG", 116: "ROUND", 117: "HARD_SWISH", 118: "IF", 119: "WHILE",
    120: "NON_MAX_SUPPRESSION_V4", 121: "NON_MAX_SUPPRESSION_V5", 122: "SCATTER_ND",
    123: "SELECT_V2", 124: "DENSIFY", 125: "SEGMENT_SUM", 126: "BATCH_MATMUL",
    127: "PLACEHOLDER_FOR_GREATER_OP_CODES", 128: "CUMSUM", 129: "CALL_ONCE",
    130: "BROADCAST_TO", 131: "RFFT2D", 132: "CONV_3D", 133: "IMAG", 134: "REAL",
    135: "COMPLEX_ABS", 136: "HASHTABLE", 137: "HASHTABLE_FIND", 138: "HASHTABLE_IMPORT",
    139: "HASHTABLE_SIZE", 140: "REDUCE_ALL", 141: "CONV_3D_TRANSPOSE", 142: "VAR_HANDLE",
    143: "READ_VARIABLE", 144: "ASSIGN_VARIABLE", 145: "BROADCAST_ARGS",
    146: "RANDOM_STANDARD_NORMAL", 147: "BUCKETIZE", 148: "RANDOM_UNIFORM",
    149: "MULTINOMIAL", 150: "GELU", 151: "DYNAMIC_UPDATE_SLICE", 152: "RELU_0_TO_1",
    153: "UNSORTED_SEGMENT_PROD", 154: "UNSORTED_SEGMENT_MAX", 155: "UNSORTED_SEGMENT_SUM",
    156: "ATAN2", 157: "UNSORTED_SEGMENT_MIN", 158: "SIGN", 159: "BITCAST",
    160: "BITWISE_XOR", 161: "RIGHT_SHIFT", 162: "STABLEHLO_LOGISTIC", 163: "STABLEHLO_ADD",
    164: "STABLEHLO_DIVIDE", 165: "STABLEHLO_MULTIPLY", 166: "STABLEHLO_MAXIMUM",
    167: "STABLEHLO_RESHAPE", 168: "STABLEHLO_CLAMP", 169: "STABLEHLO_CONCATENATE",
    170: "STABLEHLO_BROADCAST_IN_DIM", 171: "STABLEHLO_CONVOLUTION", 172: "STABLEHLO_SLICE",
    173: "STABLEHLO_CUSTOM_CALL", 174: "STABLEHLO_REDUCE", 175: "STABLEHLO_ABS",
    176: "STABLEHLO_AND", 177: "STABLEHLO_COSINE", 178: "STABLEHLO_EXPONENTIAL",
    179: "STABLEHLO_FLOOR", 180: "STABLEHLO_LOG", 181: "STABLEHLO_MINIMUM",
    182: "STABLEHLO_NEGATE", 183: "STABLEHLO_OR", 184: "STABLEHLO_POWER",
    185: "STABLEHLO_REMAINDER", 186: "STABLEHLO_RSQRT", 187: "STABLEHLO_SELECT",
    188: "STABLEHLO_SUBTRACT", 189: "STABLEHLO_TANH", 190: "STABLEHLO_SCATTER",
    191: "STABLEHLO_COMPARE", 192: "STABLEHLO_CONVERT", 193: "STABLEHLO_DYNAMIC_SLICE",
    194: "STABLEHLO_DYNAMIC_UPDATE_SLICE", 195: "STABLEHLO_PAD", 196: "STABLEHLO_IOTA",
    197: "STABLEHLO_DOT_GENERAL", 198: "STABLEHLO_REDUCE_WINDOW", 199: "STABLEHLO_SORT",
    200: "STABLEHLO_WHILE", 201: "STABLEHLO_GATHER", 202: "STABLEHLO_TRANSPOSE",
    203: "DILATE", 204: "STABLEHLO_RNG_BIT_GENERATOR", 205: "REDUCE_WINDOW",
    206: "STABLEHLO_COMPOSITE", 207: "STABLEHLO_SHIFT_LEFT", 208: "STABLEHLO_CBRT",
    209: "STABLEHLO_CASE",
}


class TFLiteFileError(ValueError):
    """The bytes are not a TFLite FlatBuffer this reader understands."""


class _Table:
    __slots__ = ("buf", "pos", "vtable", "vsize")

    def __init__(self, buf, pos):
        if pos < 0 or pos + 4 > len(buf):
            raise TFLiteFileError(f"table offset {pos} outside the file")
        self.buf = buf
        self.pos = pos
        self.vtable = pos - _I32.unpack_from(buf, pos)[0]
        if self.vtable < 0 or self.vtable + 4 > len(buf):
            raise TFLiteFileError(f"vtable offset {self.vtable} outside the file")
        self.vsize = _U16.unpack_from(buf, self.vtable)[0]

    def _field(self, index):
        at = 4 + 2 * index
        if at + 2 > self.vsize:
            return None
        off = _U16.unpack_from(self.buf, self.vtable + at)[0]
        return self.pos + off if off else None

    def scalar(self, index, fmt, default=0):
        p = self._field(index)
        return default if p is None else fmt.unpack_from(self.buf, p)[0]

    def _indirect(self, index):
        p = self._field(index)
        if p is None:
            return None
        target = p + _U32.unpack_from(self.buf, p)[0]
        if target + 4 > len(self.buf):
            raise TFLiteFileError(f"offset {target} outside the file")
        return target

    def table(self, index):
        p = self._indirect(index)
        return None if p is None else _Table(self.buf, p)

    def string(self, index):
        p = self._indirect(index)
        if p is None:
            return None
        n = _U32.unpack_from(self.buf, p)[0]
        return bytes(self.buf[p + 4:p + 4 + n]).decode("utf-8", "replace")

    def bytes_vector(self, index):
        p = self._indirect(index)
        if p is None:
            return b""
        n = _U32.unpack_from(self.buf, p)[0]
        if p + 4 + n > len(self.buf):
            raise TFLiteFileError("byte vector runs past the end of the file")
        return bytes(self.buf[p + 4:p + 4 + n])

    def tables(self, index):
        p = self._indirect(index)
        if p is None:
            return []
        n = _U32.unpack_from(self.buf, p)[0]
        if p + 4 + 4 * n > len(self.buf):
            raise TFLiteFileError("table vector runs past the end of the file")
        out = []
        for i in range(n):
            q = p + 4 + 4 * i
            out.append(_Table(self.buf, q + _U32.unpack_from(self.buf, q)[0]))
        return out

    def vector(self, index, fmt):
        p = self._indirect(index)
        if p is None:
            return []
        n = _U32.unpack_from(self.buf, p)[0]
        if p + 4 + fmt.size * n > len(self.buf):
            raise TFLiteFileError("vector runs past the end of the file")
        return [fmt.unpack_from(self.buf, p + 4 + fmt.size * i)[0] for i in range(n)]


class TFLiteModel:
    """Read access to a TFLite model's metadata and operators.

    Args:
        data: the whole `.tflite` file.

    Raises:
        TFLiteFileError: the data is not a TFLite model.
    """

    def __init__(self, data):
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise TFLiteFileError("not a TFLite model (file identifier TFL3 missing)")
        self.data = data
        try:
            self.root = _Table(data, _U32.unpack_from(data, 0)[0])
            self.buffers = self.root.tables(4)
        except struct.error as e:
            raise TFLiteFileError(f"corrupt FlatBuffer: {e}") from None

    def buffer_data(self, index):
        """Return the bytes of buffer `index`, inline or stored after the FlatBuffer."""
        if not 0 <= index < len(self.buffers):
            raise TFLiteFileError(f"buffer {index} does not exist")
        buf = self.buffers[index]
        offset = buf.scalar(1, _U64)
        if offset > 1:
            size = buf.scalar(2, _U64)
            return bytes(self.data[offset:offset + size])
        return buf.bytes_vector(0)

    def metadata(self):
        """Return {name: bytes} of the model's metadata entries."""
        out = {}
        try:
            for entry in self.root.tables(6):
                name = entry.string(0)
                if name is not None:
                    out[name] = self.buffer_data(entry.scalar(1, _U32))
        except struct.error as e:
            raise TFLiteFileError(f"corrupt metadata: {e}") from None
        return out

    def output_blocks(self):
        """Return the widths (last dimension) of the parts the main subgraph's first output
        is joined from: the inputs of the CONCATENATION that writes it along its last axis,
        or else the output alone. A model of several averaged networks outputs one part
        per network."""
        try:
            graph = self.root.tables(2)[0]
            shapes = [tensor.vector(0, _I32) for tensor in graph.tables(0)]
            output = graph.vector(2, _I32)[0]
            width = shapes[output][-1]
            codes = self.operators()
            for op in graph.tables(3):
                if output not in op.vector(2, _I32):
                    continue
                if codes[op.scalar(0, _U32)] == "CONCATENATION":
                    parts = [shapes[i][-1] for i in op.vector(1, _I32)]
                    if sum(parts) == width and len(parts) > 1:
                        return parts
                break
        except (IndexError, struct.error) as e:
            raise TFLiteFileError(f"corrupt graph: {e}") from None
        return [width]

    def operators(self):
        """Return the names of the operator codes the model uses."""
        names = []
        for code in self.root.tables(1):
            builtin = max(code.scalar(0, _I8), code.scalar(3, _I32))
            if builtin == 32:  # CUSTOM
                names.append("CUSTOM:" + (code.string(1) or "?"))
            else:
                names.append(BUILTIN_OPS.get(builtin, f"BUILTIN_{builtin}"))
        return names
