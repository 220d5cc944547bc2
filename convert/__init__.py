"""Training side of edge-etc, installed as `edge_etc.convert` with the `train` extra."""

import logging
import os
import re
import sys
import tempfile

# Lines that TensorFlow 2.21 writes to file descriptor 2 while it loads, twice. Abseil logs
# them before its logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hold them back.
_LOAD_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} ")


def load_keras():
    """Return the keras module, with TensorFlow imported first by `import_tensorflow_quietly`."""
    import_tensorflow_quietly()
    import keras
    return keras


def import_tensorflow_quietly():
    """Import TensorFlow with its load-time notes dropped, unless logging is at DEBUG (-vv).

    Any other line that TensorFlow writes to standard error while it loads is passed on."""
    if "tensorflow" in sys.modules or logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            other_lines = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not _LOAD_NOISE.match(line)]
            sys.stderr.write("".join(other_lines))
    # Every fold and repeat builds a new model, so its first predict() traces a new function.
    # TensorFlow warns about that retracing after a few models, which is expected here.
    logging.getLogger("tensorflow").addFilter(
        lambda record: "triggered tf.function retracing" not in record.getMessage())
