"""Model files: the int8 `.tflite` plus the edge-etc metadata stored inside it.

`edge-etc convert` writes one metadata entry named `METADATA_NAME` into the model's
FlatBuffer. It is JSON:

    {"format": "edge-etc-model", "version": 1,
     "labels": ["Chat", ...],              # output index -> class name
     "preprocessing": {...},               # edge_etc.preprocess.Preprocessing
     "unknown_threshold": 0.0,             # below this confidence a flow is "unknown"
     "networks": 5,                        # averaged networks, one block of outputs each
     "port_prior": {...},                  # optional: edge_etc.port_prior.PortPrior
     "info": {...}}                        # free-form: training data, date, results

The runner reads it with `load_model_info`, so a model always runs with the preprocessing
it was trained with. A model without the entry is rejected.
"""

import json
import os

from .errors import ModelError
from .port_prior import PortPrior, check_settings
from .preprocess import Preprocessing
from .tflite_file import TFLiteFileError, TFLiteModel

METADATA_NAME = "edge_etc"
MODEL_FORMAT = "edge-etc-model"
MODEL_VERSION = 1
UNKNOWN_LABEL = "unknown"
MAX_NETWORKS = 1000


class ModelInfo:
    """A model file's bytes and what edge-etc stored with it."""

    def __init__(self, path, data, labels, preprocessing, unknown_threshold, info, operators,
                 networks=1, port_prior=None):
        self.path = path
        self.networks = networks
        self.port_prior = port_prior  # a PortPrior, or None
        self.data = data
        self.labels = labels
        self.preprocessing = preprocessing
        self.unknown_threshold = unknown_threshold
        self.info = info
        self.operators = operators


def default_model_path():
    """Return the path of the model that ships inside the package.

    pip installs the package as files, and its compiled extension could not load from a
    zip anyway, so the model is next to this module. importlib.resources, which also reads
    zips, added 0.5 MiB to the resident memory before the first packet.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "default.tflite")


def encode_metadata(labels, preprocessing, unknown_threshold=0.0, info=None, networks=1,
                    port_prior=None):
    """Return the metadata entry's bytes (used by the converter). `networks`: how many
    networks' probabilities the model outputs side by side, to be averaged. `port_prior`:
    the metadata form of a `PortPrior` (its `to_dict`), or None."""
    doc = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "labels": list(labels),
        "preprocessing": preprocessing.to_dict(),
        "unknown_threshold": float(unknown_threshold),
        "info": info or {},
        "networks": int(networks),
    }
    if port_prior is not None:
        doc["port_prior"] = port_prior
    return json.dumps(doc, sort_keys=True).encode()


def decode_metadata(raw, source):
    """Parse a metadata entry; return (labels, preprocessing, unknown_threshold, info,
    networks, port_prior). `networks` is None when the entry has none, as in models
    converted before it existed, which have one network's outputs. `port_prior` is a
    `PortPrior`, or None when the entry has none."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{source}: edge-etc metadata is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ModelError(f"{source}: metadata entry '{METADATA_NAME}' is not edge-etc model metadata")
    if doc.get("version") != MODEL_VERSION:
        raise ModelError(f"{source}: model metadata version {doc.get('version')!r} is not "
                         f"supported (expected {MODEL_VERSION}); upgrade edge-etc")
    labels = doc.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{source}: model metadata has no valid label list")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ModelError(f"{source}: invalid label list in the model metadata: "
                         f"{', '.join(repr(label) for label in duplicates)} appears more than once")
    try:
        pre = Preprocessing.from_dict(doc.get("preprocessing") or {}, source=source)
    except Exception as e:  # ConfigError from the settings check
        raise ModelError(str(e)) from None
    threshold = doc.get("unknown_threshold", 0.0)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ModelError(f"{source}: unknown_threshold={threshold!r} is invalid: expected 0 to 1")
    networks = doc.get("networks")
    if networks is not None and (type(networks) is not int or not 1 <= networks <= MAX_NETWORKS):
        value_text = repr(networks) if len(repr(networks)) <= 20 else repr(networks)[:20] + "..."
        raise ModelError(f"{source}: networks={value_text} in the model metadata is invalid: expected a "
                         f"whole number from 1 to {MAX_NETWORKS}")
    port_prior = None
    if "port_prior" in doc:
        check_settings(pre, source)
        port_prior = PortPrior.from_dict(doc["port_prior"], len(labels), source)
    return labels, pre, float(threshold), doc.get("info") or {}, networks, port_prior


def load_model_info(path):
    """Read a model file and its edge-etc metadata.

    Raises:
        ModelError: the file is missing, not a TFLite model, or carries no edge-etc
            metadata (a model converted without `edge-etc convert`).
    """
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not a model file")
    if not os.path.isfile(path):
        raise ModelError(f"{path}: model file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelError(f"{path}: cannot read model file: {e.strerror}") from None
    if not data:
        raise ModelError(f"{path}: empty file, not a TFLite model")
    if data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TFLite model (no TFL3 file identifier at byte 4)")
    try:
        tfl = TFLiteModel(data)
        meta = tfl.metadata()
        operators = tfl.operators()
        blocks = tfl.output_blocks()
    except TFLiteFileError as e:
        raise ModelError(f"{path}: corrupt or truncated TFLite file ({e})") from None
    if METADATA_NAME not in meta:
        raise ModelError(f"{path}: model has no edge-etc preprocessing settings; convert it "
                         "with 'edge-etc convert' so the settings travel with it")
    labels, pre, threshold, info, networks, port_prior = decode_metadata(meta[METADATA_NAME], path)
    check_output_blocks(path, blocks, labels, networks)
    return ModelInfo(path, data, labels, pre, threshold, info, operators, networks or 1, port_prior)


def check_output_blocks(path, blocks, labels, networks):
    """Raise ModelError unless the model's output parts are `networks` blocks of one value
    per label. `blocks` are the widths from TFLiteModel.output_blocks. `networks` None (no
    metadata entry) means one network, whose output is one part, not joined from several."""
    if networks in (None, 1):
        fits = sum(blocks) == len(labels) and len(blocks) == 1
    else:
        fits = len(blocks) == networks and all(b == len(labels) for b in blocks)
    if fits:
        return
    shape = (f"{len(blocks)} joined blocks of {', '.join(map(str, sorted(set(blocks))))} values"
             if len(blocks) > 1 else f"{blocks[0]} values")
    networks_text = f"networks={networks}" if networks else "no networks entry (so 1 network)"
    raise ModelError(f"{path}: the model's output is {shape}, but its metadata has "
                     f"{len(labels)} labels and {networks_text}; convert it again with 'edge-etc convert'")
