"""The CNN-LSTM.

Input: (window_packets, vector_bytes) floats, the packet bytes divided by 255.

Per packet, a CNN over the bytes: Conv2D layers with (1, k) kernels over the
(packets, bytes, 1) tensor, so one graph serves every packet of the window without
TimeDistributed (a smaller, faster TFLite graph), then a per-packet dense projection that
keeps byte positions (header fields sit at fixed offsets). Then an LSTM over the packets'
feature vectors and a softmax.

The LSTM is built with `unroll=True`: the window has three steps, so unrolling costs
nothing, and only the unrolled form converts to full-integer int8 TFLite.
"""


def build_model(window_packets, vector_bytes, n_classes, filters=(32, 32), feature_units=64,
                lstm_units=64, dropout=0.2):
    """Return an uncompiled Keras model."""
    import keras
    from keras import layers

    inp = keras.Input((window_packets, vector_bytes), name="window")
    h = layers.Reshape((window_packets, vector_bytes, 1))(inp)
    for i, f in enumerate(filters):
        h = layers.Conv2D(f, (1, 5), padding="same", activation="relu", name=f"conv{i + 1}")(h)
        h = layers.MaxPooling2D((1, 2), name=f"pool{i + 1}")(h)
    length = h.shape[2]
    h = layers.Reshape((window_packets, length * filters[-1]))(h)
    h = layers.Dropout(dropout)(h)
    h = layers.Dense(feature_units, activation="relu", name="packet_features")(h)
    h = layers.LSTM(lstm_units, unroll=True, name="lstm")(h)
    h = layers.Dropout(dropout)(h)
    out = layers.Dense(n_classes, activation="softmax", name="classes")(h)
    return keras.Model(inp, out, name="cnn_lstm")
