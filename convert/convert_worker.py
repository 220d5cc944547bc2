"""Child process of `edge-etc convert`: the TFLite conversion step alone.

Run as `python -m edge_etc.convert.convert_worker MODEL.keras CALIBRATION.npy OUT.tflite`.
It runs in its own process because the converter can crash the Python interpreter with a
segmentation fault on some recurrent layers. The parent turns such a crash into an error
message.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(model_path, calibration_path, out_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from edge_etc.convert import gate_lstm  # noqa: F401 (registers GateLSTM for load_model)

    model = keras.models.load_model(model_path, compile=False)
    calibration = np.load(calibration_path)

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    data = converter.convert()
    with open(out_path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m edge_etc.convert.convert_worker MODEL CALIBRATION OUT")
    main(*sys.argv[1:])
