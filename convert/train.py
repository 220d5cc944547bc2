"""`edge-etc train`: train the CNN-LSTM on labelled captures and report held-out results.

Captures, never packets or windows, are split into training and test sets (per class,
seeded), so no flow and no capture environment is on both sides. Class imbalance is
handled per capture and per class (see `training_weights`).

Writes into the output folder:
    model.h5     the Keras model (LSTM unrolled, ready for `edge-etc convert`)
    model.json   labels, preprocessing settings, the capture split, seed and results
    report.txt   per-class precision, recall and F1 on the held-out captures
"""

import json
import logging
import os
import time

import numpy as np

from edge_etc.config import DEFAULTS
from edge_etc.errors import ConfigError
from edge_etc.port_prior import PortPrior, window_server_ports
from edge_etc.preprocess import Preprocessing

from . import dataset, load_keras
from .metrics import flow_decisions, format_report, per_class_report

log = logging.getLogger(__name__)


CLASS_WEIGHT_POWER = 0.5

# Momentum of the moving average of the weights kept during training (`fit`). On the 5
# folds of `edge-etc evaluate`, three seeds without it scored 0.396, 0.336 and 0.324 flow
# macro-F1 (float, first-window decisions), and the same seeds with it 0.423, 0.353 and
# 0.376. Label smoothing, distillation from three such models and training on the
# validation captures too scored no higher.
EMA_MOMENTUM = 0.99
# A training of fewer than 500 steps uses momentum 1 - EMA_MIN_SHARE_STEPS / steps, so
# that the average covers about its last fifth (see `fit`).
EMA_MIN_SHARE_STEPS = 5
BATCH_SIZE = 256
# Training epochs of `edge-etc train` and `evaluate` (a fixed number: no early stopping).
# Averaged over 15 trainings of the 5 folds of `evaluate`, the inner validation captures'
# loss was lowest after 3 epochs and their accuracy highest after 4. Then both worsened
# while the training loss kept falling, because the network learns the training captures. The
# weights' moving average is centred about two epochs before the last. Over 9 seeds of the
# folds, 7 epochs instead of 15 raised the flow macro-F1 of one network from 0.368 to
# 0.384 and that of averages of three from 0.392 to 0.408 (float).
EPOCHS = 7
# CNN-LSTMs averaged in one model by `edge-etc train` (`--members`, see `fit`). Each is
# trained on its own, from its own seed and with its own validation captures. On the 5 folds
# of `edge-etc evaluate`, with ten seeds per fold, two averages of five networks scored
# 0.464 and 0.444 flow macro-F1 int8 with the server port prior (mean 0.454), 5.5 points
# over the best baseline, five one-packet CNNs with the prior averaged the same way.
# Without the prior they scored 0.437, three averages of three 0.394 and one network
# 0.383 (docs/EVALUATION.md). Each member adds one network's
# inference time: five made the interpreter 1.6 times slower than three, and the runner
# about a quarter slower on a capture of 100,000 short flows (benchmarks/RESULTS.md).
MEMBERS = 5
# Seed offset between members, the same as between the repeats of `edge-etc evaluate`, so
# that the members of a fold's model there are its repeats' networks.
MEMBER_SEED_STEP = 1000
# "capture": every capture of a class carries the same total weight; "flow": every flow does.
WEIGHTINGS = ("capture", "flow")
DEFAULT_WEIGHTING = "capture"


def training_weights(y, flow, capture, n_classes, class_power=CLASS_WEIGHT_POWER,
                     weighting=DEFAULT_WEIGHTING):
    """Return per-window training weights.

    Every flow first gets the same total weight over its windows. With "capture" weighting,
    every capture then gets the same total within its class. A capture records one
    application, and one capture can hold most of a class's flows (Gnutella is 84% of the
    corpus's P2P flows), so flow weighting teaches mostly that one application.

    Each class's total is then proportional to (its flows or captures) ** (1 - class_power):
    1 gives every class the same total, 0 leaves classes as frequent as their flows or
    captures. Full balance raised recall on small classes but cost more precision than it
    gained in grouped cross-validation, so the default is in between.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}: expected one of {', '.join(WEIGHTINGS)}")
    if len(flow) == 0:
        return np.zeros(0)
    _, inverse, per_flow = np.unique(flow, return_inverse=True, return_counts=True)
    w = 1.0 / per_flow[inverse]
    if weighting == "capture":
        _, cap_inverse = np.unique(capture, return_inverse=True)
        flows_per_capture = np.bincount(cap_inverse, weights=w)
        w = w / flows_per_capture[cap_inverse]
    for c in range(n_classes):
        mask = y == c
        if mask.any():
            units_in_class = w[mask].sum()  # each flow, or each capture, contributes 1
            w[mask] *= units_in_class ** -class_power
    return w * (len(w) / w.sum())


def ema_momentum(steps):
    """Return the momentum of the weights' moving average for a training of `steps` steps."""
    return max(0.0, min(EMA_MOMENTUM, 1 - EMA_MIN_SHARE_STEPS / steps))


def _decision_text(max_windows):
    if max_windows == 1:
        return "first window"
    return f"mean of the first {max_windows} windows"


def set_seed(seed):
    keras = load_keras()
    keras.utils.set_random_seed(seed)


def fit(data, train_idx, settings, epochs, seed, val_share=0.15, position_limit=None,
        return_val=False, early_stopping=False, class_power=CLASS_WEIGHT_POWER,
        weighting=DEFAULT_WEIGHTING, members=1):
    """Train a model on the windows of captures `train_idx`; return the Keras model.

    With `members` > 1, that many CNN-LSTMs are trained one after the other, member i with
    seed `seed + MEMBER_SEED_STEP * i` (initial weights, batch order and its own validation
    captures), and the model is their average (`combine_members`). Members trained together
    on the same batches, with the same validation captures, scored no higher than one.

    Args:
        position_limit: train only on windows at positions below this (an ablation: windows
            from the first packets only); None uses windows from any position.
        return_val: also return the validation captures: a list with one list of capture
            indices per member.
        early_stopping: stop when the validation loss stops falling and keep the best
            epoch. Off by default: the validation captures are few, and stopping on them
            scored lower in grouped cross-validation than a fixed number of epochs.
    """
    if members > 1:
        models, val_sets = [], []
        for i in range(members):
            log.info("member %d of %d", i + 1, members)
            model, (val,) = fit(data, train_idx, settings, epochs, seed + MEMBER_SEED_STEP * i,
                                val_share, position_limit, True, early_stopping, class_power,
                                weighting, members=1)
            models.append(model)
            val_sets.append(val)
        model = combine_members(models, settings)
        return (model, val_sets) if return_val else model

    keras = load_keras()

    from .model import build_model

    set_seed(seed)
    tr_caps = [data.captures[i] for i in train_idx]
    inner_train, inner_val = dataset.split_captures(tr_caps, test_share=val_share, seed=seed + 1)
    inner_train = [train_idx[i] for i in inner_train]
    inner_val = [train_idx[i] for i in inner_val]
    n_classes = len(data.classes)

    def part(caps):
        m = data.select(caps) & (data.y >= 0)
        if position_limit is not None:
            m &= data.position < position_limit
        return (data.x[m].astype(np.float32) / 255.0, data.y[m],
                training_weights(data.y[m], data.flow[m], data.capture[m], n_classes, class_power,
                                 weighting))

    x_tr, y_tr, w_tr = part(inner_train)
    x_va, y_va, w_va = part(inner_val)
    log.info("training on %d windows (%d captures), validating on %d windows (%d captures)",
             len(y_tr), len(inner_train), len(y_va), len(inner_val))
    if position_limit is not None:
        epochs = _epochs_for_same_steps(data, inner_train, len(y_tr), epochs)
    model = build_model(settings.window_packets, settings.vector_bytes, n_classes,
                        context_bytes=settings.context_bytes)
    # The model keeps an exponential moving average of its weights over the last ~100
    # training steps (about two epochs), which Keras swaps in when fit ends. A short
    # training (few windows or epochs) averages over its last 20% of steps instead: with
    # 75 steps, momentum 0.99 would leave 47% of the first step's weights in the average.
    steps = epochs * max(1, -(-len(y_tr) // BATCH_SIZE))
    optimizer = keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=ema_momentum(steps))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    callbacks = []
    if early_stopping and len(y_va):
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=6,
                                                       restore_best_weights=True))
    # Few captures can leave no validation windows: train without validation then.
    validation = (x_va, y_va, w_va) if len(y_va) else None
    # Keras's progress bar (verbose=1) wrote ANSI codes to stdout, among the report: log one
    # line per epoch on stderr instead.
    callbacks.append(_epoch_logger(epochs))
    model.fit(x_tr, y_tr, sample_weight=w_tr, validation_data=validation, epochs=epochs,
              batch_size=BATCH_SIZE, shuffle=True, callbacks=callbacks, verbose=0)
    return (model, [inner_val]) if return_val else model


def _epochs_for_same_steps(data, captures, windows, epochs):
    """Return the epochs over `windows` training windows that take as many optimizer steps
    as `epochs` epochs over every labelled window of `captures`.

    Windows from flow starts only are about a fourteenth of all windows. With the same
    epochs, the network took 60 steps instead of about 750 and ended near the loss of a
    uniform guess (2.1 against ln 10 = 2.3), so the ablation measured the shorter training
    more than the choice of windows.
    """
    all_windows = int((data.select(captures) & (data.y >= 0)).sum())
    steps = epochs * max(1, -(-all_windows // BATCH_SIZE))
    matched = max(epochs, -(-steps // max(1, -(-windows // BATCH_SIZE))))
    if matched != epochs:
        log.info("%d epochs over %d windows take the %d steps of %d epochs over all %d windows",
                 matched, windows, steps, epochs, all_windows)
    return matched


def combine_members(models, settings):
    """Return one model whose output is the mean of the class probabilities of `models`,
    networks trained by `fit` on windows of `settings`, with their weights."""
    from .model import build_model, member_layers

    if len(models) == 1:
        return models[0]
    combined = build_model(settings.window_packets, settings.vector_bytes,
                           models[0].output_shape[-1], context_bytes=settings.context_bytes,
                           members=len(models))
    for i, model in enumerate(models):
        targets = member_layers(combined, i)
        for layer in model.layers:
            if layer.weights:
                targets[layer.name].set_weights(layer.get_weights())
    return combined


def _epoch_logger(epochs):
    """Return a Keras callback that logs the metrics of each epoch at INFO."""
    keras = load_keras()

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = " ".join(f"{name}={value:.4f}" for name, value in (logs or {}).items()
                               if isinstance(value, (int, float)))
            log.info("epoch %d/%d: %s", epoch + 1, epochs, metrics)

    return EpochLogger()


def evaluate(model, data, test_idx, max_windows=DEFAULTS.flows.max_windows, prior=None,
             threshold=0.0):
    """Return window-level and flow-level reports on the captures `test_idx`, or None when
    those captures have no labelled windows. `prior`: a server port prior to apply. The
    report counts the flows whose confidence is under the unknown `threshold`."""
    from .evaluate import _flow_confidence

    m = data.select(test_idx) & (data.y >= 0)
    if not m.any():
        return None
    probs = model.predict(data.x[m].astype(np.float32) / 255.0, batch_size=512, verbose=0)
    probs = apply_port_prior(probs, data, m, prior)
    window_pred = probs.argmax(1)
    flow_true, flow_pred, _ = flow_decisions(probs, data.flow[m], data.position[m],
                                             data.flow_label, max_windows)
    _, _, confidence = _flow_confidence(probs, data, m, max_windows)
    return {
        "windows": per_class_report(data.y[m], window_pred, data.classes),
        "flows": per_class_report(flow_true, flow_pred, data.classes),
        "flows_under_threshold": int((confidence < threshold).sum()),
    }


def settings_from_options(**options):
    """Return `Preprocessing` with the options that were given (None means the default).

    Masking the server port or turning the context off also drops the server port
    buckets, unless they were given: they need both.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if "port_buckets" not in given and (given.get("server_port") is False or given.get("context") is False):
        given["port_buckets"] = 0
    return Preprocessing(**given)


def validation_probabilities(model, data, val_sets):
    """Return (mask, probabilities) for the windows of the validation captures `val_sets`
    (one list of capture indices per member, as `fit` returns them).

    With several members, each window's probabilities are the mean over the members that
    held its capture out of training, so no member scores a capture it learnt from. They
    are fewer than all the members, so these probabilities are less smooth than the whole
    model's on new captures.
    """
    from .model import member_layers

    union = sorted(set().union(*map(set, val_sets)))
    mask = data.select(union)
    x = data.x[mask].astype(np.float32) / 255.0
    if not mask.any():
        return mask, None
    if len(val_sets) == 1:
        return mask, model.predict(x, batch_size=512, verbose=0)

    keras = load_keras()
    outputs = [member_layers(model, i)["classes"].output for i in range(len(val_sets))]
    per_member = keras.Model(model.inputs, outputs).predict(x, batch_size=512, verbose=0)
    capture = data.capture[mask]
    sums = np.zeros(per_member[0].shape)
    counts = np.zeros(len(x))
    for probs, val in zip(per_member, val_sets):
        held_out = np.isin(capture, val)
        sums[held_out] += probs[held_out]
        counts[held_out] += 1
    return mask, (sums / counts[:, None]).astype(np.float32)


def port_prior_of(data, captures):
    """Return the `PortPrior` of the labelled flows that have windows in `captures`, with
    each flow's server port read from its first window as the runner reads it, or None when
    the windows do not carry the server port."""
    settings = data.settings
    if not (settings.context and settings.server_port):
        return None
    rows = np.flatnonzero(data.select(captures) & (data.y >= 0))
    if not len(rows):
        return None
    flows, first = np.unique(data.flow[rows], return_index=True)
    ports = window_server_ports(data.x[rows[first]], settings)
    return PortPrior.count(data.flow_label[flows], ports, len(data.classes))


def apply_port_prior(probs, data, mask, prior):
    """Return the probabilities of the windows `mask` of `data` with `prior` applied (None:
    unchanged)."""
    if prior is None or probs is None:
        return probs
    return prior.apply(probs, window_server_ports(data.x[mask], data.settings))


def apply_held_out_port_prior(probs, data, mask, captures):
    """Return the probabilities of the windows `mask` of `data`, each capture's with the
    server port prior of `captures` less that capture.

    The model's prior counts the validation captures' flows too. With their own counts in
    it, flows on ports that only their capture uses look as certain as the training flows,
    and a threshold chosen on them would reject more new flows than intended."""
    if probs is None or captures is None:
        return probs
    out = probs.copy()
    ports = window_server_ports(data.x[mask], data.settings)
    capture = data.capture[mask]
    for c in np.unique(capture):
        prior = port_prior_of(data, [i for i in captures if i != c])
        if prior is not None:
            rows = capture == c
            out[rows] = prior.apply(probs[rows], ports[rows])
    return out


def unknown_threshold(model, data, val_sets, max_windows=DEFAULTS.flows.max_windows,
                      prior_captures=None):
    """Return the confidence under which the runner reports "unknown", chosen on the
    validation captures' labelled and background flows (see evaluate.choose_threshold and
    `validation_probabilities`). With `prior_captures`, the captures the model's server
    port prior counts, each validation capture is scored with that prior less its own
    flows (`apply_held_out_port_prior`)."""
    from .evaluate import _flow_confidence, choose_threshold

    val, probs = validation_probabilities(model, data, val_sets)
    if not val.any():
        return 0.0
    probs = apply_held_out_port_prior(probs, data, val, prior_captures)
    ids, pred, confidence = _flow_confidence(probs, data, val, max_windows)
    labels = data.flow_label[ids]
    threshold = choose_threshold(confidence, pred == labels, labels < 0)
    log.info("unknown threshold %.2f, chosen on %d validation flows", threshold, len(ids))
    return threshold


def _threshold_note(data, val_idx, threshold):
    """Return why the unknown threshold is 0 (the model never reports "unknown"), or ""."""
    if not val_idx:
        return ("no validation captures, because no class has two or more training captures "
                "after the hold-out; the model never reports unknown (train on more captures)")
    if not data.select(val_idx).any():
        return ("the validation captures have no windows; the model never reports unknown "
                "(train on more captures)")
    if threshold == 0.0:
        return ("no validation flow was classified correctly, so none bounds the threshold; "
                "the model never reports unknown")
    return ""


def train_command(corpus, output, epochs, seed, vector_bytes, window_rule, no_server_port,
                  limit_captures, context=None, port_buckets=None, weighting=DEFAULT_WEIGHTING,
                  members=None, port_prior=True):
    members = members or MEMBERS
    epochs = epochs or EPOCHS
    corpus = corpus or dataset.default_corpus()
    settings = settings_from_options(vector_bytes=vector_bytes, window_rule=window_rule,
                                     server_port=False if no_server_port else None,
                                     context=context, port_buckets=port_buckets)
    captures = dataset.read_manifest(corpus)
    if limit_captures:
        captures = dataset.spread_captures(captures, limit_captures)
    started = time.time()
    data = dataset.build_windows(corpus, settings, captures, seed=seed)
    if not (data.y >= 0).any():
        raise ConfigError(f"{corpus}: no labelled windows in the selected captures")
    train_idx, test_idx = dataset.split_captures(captures, seed=seed)
    held_out_note = ""
    if not test_idx:
        held_out_note = ("no capture is held out for testing: every class has a single capture; "
                         "the model is trained and saved without held-out results")
    elif len(test_idx) > 1.5 * dataset.HELD_OUT_SHARE * len(captures):
        held_out_note = (f"{len(test_idx)} of {len(captures)} captures "
                         f"({100 * len(test_idx) / len(captures):.0f}%) are held out for testing, "
                         f"not {100 * dataset.HELD_OUT_SHARE:.0f}%: a class with two or more "
                         "captures holds out at least one")
    if held_out_note:
        log.warning("%s", held_out_note)
    model, val_sets = fit(data, train_idx, settings, epochs, seed, return_val=True,
                          weighting=weighting, members=members)
    prior = port_prior_of(data, train_idx) if port_prior else None
    if port_prior and prior is None:
        log.warning("no server port prior: the windows do not carry the server port "
                    "(--no-server-port or --no-context)")
    threshold = unknown_threshold(model, data, val_sets, prior_captures=train_idx if prior else None)
    threshold_note = _threshold_note(data, sorted(set().union(*map(set, val_sets))), threshold)
    if threshold_note:
        log.warning("unknown threshold %.2f: %s", threshold, threshold_note)
    report = evaluate(model, data, test_idx, prior=prior, threshold=threshold)
    rejected_note = ""
    if report is not None and report["flows_under_threshold"] > report["flows"]["support"] / 2:
        rejected_note = (f"the unknown threshold {threshold:.2f} turns "
                         f"{report['flows_under_threshold']} of {report['flows']['support']} "
                         "held-out flows into unknown; train longer or on more captures")
        log.warning("%s", rejected_note)

    os.makedirs(output, exist_ok=True)
    model_path = os.path.join(output, "model.h5")
    # The .h5 format is what `edge-etc convert` documents; Keras's note that it is a legacy
    # format is not for the user of this command.
    logging.getLogger("absl").setLevel(logging.ERROR)
    model.save(model_path)
    meta = {
        "labels": data.classes,
        "preprocessing": settings.to_dict(),
        "seed": seed,
        "weighting": weighting,
        "members": members,
        "corpus": os.path.abspath(corpus),
        "split": {"train": [captures[i].path for i in train_idx],
                  "test": [captures[i].path for i in test_idx]},
        "results": report,
        "unknown_threshold": threshold,
        "port_prior": prior.to_dict() if prior else None,
        "training_seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(output, "model.json"), "w") as f:
        json.dump(meta, f, indent=1)
    text = f"Held-out captures: {len(test_idx)} of {len(captures)} (split by capture file, seed {seed})\n"
    if held_out_note:
        text += f"  {held_out_note}\n"
    text += (f"Networks averaged: {members} (seeds "
             + ", ".join(str(seed + MEMBER_SEED_STEP * i) for i in range(members)) + ")\n"
             f"Unknown threshold: {threshold:.2f} (reported flows above use no threshold)\n"
             "Server port prior: " + (f"{len(prior.ports)} ports of the training flows\n" if prior else "none\n"))
    if threshold_note:
        text += f"  {threshold_note}\n"
    if rejected_note:
        text += f"  {rejected_note}\n"
    text += "\n"
    if report is None:
        text += "No held-out results: the held-out captures have no labelled windows.\n"
    else:
        text += ("Windows:\n" + format_report(report["windows"]) +
                 f"\nFlows ({_decision_text(DEFAULTS.flows.max_windows)}, as the runner decides):\n" +
                 format_report(report["flows"]))
    with open(os.path.join(output, "report.txt"), "w") as f:
        f.write(text)
    print(text)
    log.info("wrote %s, model.json and report.txt", model_path)
