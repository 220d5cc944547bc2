"""The CNN-LSTM.

Input: (window_packets, vector_bytes) floats, the packet bytes divided by 255.

Per packet, a CNN over the bytes: Conv2D layers with (1, k) kernels over the
(packets, bytes, 1) tensor, so one graph serves every packet of the window without
TimeDistributed (a smaller, faster TFLite graph), then a per-packet dense projection that
keeps byte positions (header fields sit at fixed offsets). Then an LSTM over the packets'
feature vectors and a softmax.

The first convolution reads non-overlapping patches of `patch` bytes (kernel and stride
`patch`). Over 304 header bytes, a (1, 5) convolution at every byte position made the int8
model take 110 us per window in ai-edge-litert on one x86 core, against 23 us with
8-byte patches.

Size: 16 filters per convolution, 32 packet features and 32 LSTM units. On the 5 folds
of `edge-etc evaluate`, with three trainings each, this network scored 0.434, 0.416 and
0.342 flow macro-F1 (float), and the same seeds with twice the widths (32 filters, 64
features, 64 units) 0.427, 0.410 and 0.313. Half these widths scored 0.370 and 0.355 on
the first two. It has a third of the wider network's parameters. How much faster its
int8 form runs depends on the interpreter and the sitting (benchmarks/RESULTS.md).

The LSTM is built with `unroll=True`: the window has three steps, so unrolling costs
nothing, and only the unrolled form converts to full-integer int8 TFLite.
"""

from . import load_keras


def build_model(window_packets, vector_bytes, n_classes, filters=(16, 16), feature_units=32,
                lstm_units=32, dropout=0.2, context_bytes=0, context_units=32, pool=2, patch=8,
                members=1):
    """Return an uncompiled Keras model.

    `filters` gives the filters of each convolution: the first one is the patch layer
    when `patch` > 1, each later one is a (1, 5) convolution followed by max pooling of
    `pool` bytes.

    With `context_bytes`, the last bytes of each packet vector (the flow context and port
    buckets) bypass the CNN: a dense layer reads them directly and its output joins the
    CNN's packet features before the LSTM. The split uses Permute and Cropping1D, which
    serialize without custom code and convert to TRANSPOSE and STRIDED_SLICE.

    With `members` > 1, the model holds that many independent CNN-LSTMs (layer names
    prefixed "m1_", "m2_", ...) on the same input, and its output is the mean of their class
    probabilities. `edge-etc train` trains the members one by one and copies their weights
    in (train.combine_members). `edge-etc convert` keeps the members' outputs apart in the
    int8 model, and the runner takes their mean (tflite.member_outputs).
    """
    keras = load_keras()
    layers = keras.layers

    inp = keras.Input((window_packets, vector_bytes), name="window")
    header_bytes = vector_bytes - context_bytes
    x = c = inp
    if context_bytes:
        by_byte = layers.Permute((2, 1), name="bytes_first")(inp)
        header = layers.Cropping1D((0, context_bytes), name="header_bytes")(by_byte)
        context = layers.Cropping1D((header_bytes, 0), name="context_bytes")(by_byte)
        x = layers.Permute((2, 1), name="header")(header)
        c = layers.Permute((2, 1), name="context")(context)
    outputs = []
    for m in range(members):
        prefix = f"m{m + 1}_" if members > 1 else ""
        outputs.append(_member(layers, x, c, prefix, window_packets, header_bytes, n_classes,
                               filters, feature_units, lstm_units, dropout, context_bytes,
                               context_units, pool, patch))
    if members == 1:
        return keras.Model(inp, outputs[0], name="cnn_lstm")
    out = layers.Average(name="classes")(outputs)
    return keras.Model(inp, out, name="cnn_lstm_ensemble")


def member_layers(model, i):
    """Return member i's layers of a model of several members (see `build_model`), by their
    names in a model of one member."""
    prefix = f"m{i + 1}_"
    return {layer.name[len(prefix):]: layer for layer in model.layers
            if layer.name.startswith(prefix)}


def _member(layers, x, c, prefix, window_packets, header_bytes, n_classes, filters,
            feature_units, lstm_units, dropout, context_bytes, context_units, pool, patch):
    """Build one CNN-LSTM on the header part `x` and context part `c`; return its softmax."""
    if context_bytes:
        c = layers.Dense(context_units, activation="relu", name=f"{prefix}context_features")(c)
    h = layers.Reshape((window_packets, header_bytes, 1), name=f"{prefix}packets")(x)
    convs = list(filters)
    if patch > 1:
        # A single-channel convolution at every byte position writes one output per
        # position and filter; patches cut those outputs by `patch` (timings above).
        h = layers.Conv2D(convs.pop(0), (1, patch), strides=(1, patch), padding="same",
                          activation="relu", name=f"{prefix}patches")(h)
    for i, f in enumerate(convs):
        h = layers.Conv2D(f, (1, 5), padding="same", activation="relu",
                          name=f"{prefix}conv{i + 1}")(h)
        h = layers.MaxPooling2D((1, pool), name=f"{prefix}pool{i + 1}")(h)
    length = h.shape[2]
    h = layers.Reshape((window_packets, length * h.shape[3]), name=f"{prefix}flatten")(h)
    h = layers.Dropout(dropout, name=f"{prefix}dropout1")(h)
    h = layers.Dense(feature_units, activation="relu", name=f"{prefix}packet_features")(h)
    if context_bytes:
        h = layers.Concatenate(name=f"{prefix}features")([h, c])
    h = layers.LSTM(lstm_units, unroll=True, name=f"{prefix}lstm")(h)
    h = layers.Dropout(dropout, name=f"{prefix}dropout2")(h)
    return layers.Dense(n_classes, activation="softmax", name=f"{prefix}classes")(h)
