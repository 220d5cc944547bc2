"""`edge-etc evaluate`: grouped k-fold cross-validation, baselines and ablations.

Folds are made of whole capture files. Each class's captures are shuffled (seeded) and
dealt round-robin over the folds. So no capture is on both sides of a split, and every
class is spread over the folds as evenly as its number of captures allows.

On each fold, the CNN-LSTM is trained on the other folds (with an inner validation split of
their captures for early stopping), quantized to int8 and scored on the fold's windows and
flows (the runner's decision: mean probabilities of a flow's first windows), float and int8.

Baselines, on the same folds and the same flows:
- port: the most frequent class per server port in the training flows (the overall most
  frequent class for a port never seen);
- one-packet CNN: the same network with windows of one packet;
- statistics: a random forest on the three packets' payload sizes, directions and gaps, with
  and without the server port, its leaf size chosen on each fold's training captures and
  run once per repeat, like the networks.

The flows are also scored with 1, 2, 3, 5 and 8 windows per decision (DECISION_DEPTHS), from
the same trained models, and every test window's probabilities are written to
probabilities.npz for other analyses of decision rules.

Flows the model does not know (`background` and `unknown` in FLOWS.tsv) are scored apart:
how often they get a confident label. The confidence threshold under which the runner says
"unknown" is chosen on each fold's inner validation captures.
"""

import collections
import json
import logging
import os
import time

import numpy as np

from edge_etc.config import DEFAULTS
from edge_etc.preprocess import CONTEXT_BYTES, Preprocessing

from . import dataset
from .metrics import flow_decisions, format_report, per_class_report
from .train import (CLASS_WEIGHT_POWER, DEFAULT_WEIGHTING, EPOCHS, MEMBERS,
                    settings_from_options, training_weights)

log = logging.getLogger(__name__)

PRESETS = {
    # Ten repeats make two averages of five networks, the bundled model's members (see
    # `average_groups`).
    "full": {"folds": 5, "epochs": EPOCHS, "limit_captures": None, "repeats": 10},
    # Two repeats, so that the average of the repeats' networks is scored too.
    "ci": {"folds": 2, "epochs": 2, "limit_captures": 30, "repeats": 2},
}


def make_folds(captures, k, seed):
    """Return a fold number per capture (see the module docstring)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(captures), dtype=np.int64)
    by_class = {}
    for i, c in enumerate(captures):
        by_class.setdefault(c.label, []).append(i)
    offset = 0
    for label in sorted(by_class):
        idx = list(by_class[label])
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            fold[i] = (offset + j) % k
        offset += len(idx)  # start the next class where this one ended, to even out sizes
    return fold


def _stats_features(x, settings, with_port):
    """Per-window statistics from the context bytes: sizes, directions, gaps (and port)."""
    start = settings.header_bytes
    ctx = x[:, :, start:start + CONTEXT_BYTES].astype(np.float32)
    direction = ctx[:, :, 0] / 255.0
    gap = ctx[:, :, 1]
    size = ctx[:, :, 3] * 256 + ctx[:, :, 4]
    flags = ctx[:, :, 7]
    cols = [size, direction, gap, flags, size.mean(1, keepdims=True), size.std(1, keepdims=True)]
    if with_port:
        port = ctx[:, 0, 5] * 256 + ctx[:, 0, 6]
        cols.append(port[:, None])
    return np.concatenate(cols, axis=1)


MAX_CORRECT_REJECTED = 0.05

# The random forest's minimum leaf sizes tried on each fold's training captures, and the
# number of grouped folds they are scored on (see `Evaluation.choose_leaf`).
LEAF_SIZES = (2, 5, 10, 20, 50)
INNER_FOLDS = 3

# Seed offset between repeats of the folds (see `Evaluation.run_model`).
REPEAT_SEED_STEP = 1000

# Windows per flow decision (the runner's --max-windows) scored beside the chosen one, from
# the same trained models, so the decision rules are compared without training noise.
DECISION_DEPTHS = (1, 2, 3, 5, 8)


def choose_threshold(confidence, correct, is_background, max_rejected=MAX_CORRECT_REJECTED):
    """Return the confidence threshold under which the runner reports "unknown".

    It is the highest threshold that turns at most `max_rejected` of the correctly
    classified labelled flows into "unknown", so the cost in recall is bounded and
    whatever background traffic falls under it is rejected. Returns 0.0 when there are
    no correctly classified flows to bound it with.
    """
    right = confidence[correct & ~is_background]
    if len(right) == 0:
        return 0.0
    return round(float(np.quantile(right, max_rejected)), 3)


def _flow_confidence(probs, data, mask, max_windows):
    _, pred, ids = flow_decisions(probs, data.flow[mask], data.position[mask], data.flow_label, max_windows)
    sums = np.zeros((len(ids), probs.shape[1]))
    keep = data.position[mask] < max_windows
    inv = np.searchsorted(ids, data.flow[mask][keep])
    np.add.at(sums, inv, probs[keep])
    counts = np.bincount(inv, minlength=len(ids))[:, None]
    mean = sums / np.maximum(counts, 1)
    return ids, pred, mean.max(1)


def average_groups(repeats, size=MEMBERS):
    """Return the groups of repeats whose networks `evaluate` averages: consecutive runs of
    `size` repeats (fewer when there are fewer repeats), none with fewer than two.

    Averages of three networks trained for 15 epochs scored 0.435 flow macro-F1 (float)
    with repeats 0-2, and 0.317 and 0.398 with repeats 3-5 and 6-8. So one average is too
    few to compare models a few points apart.
    """
    size = min(size, repeats)
    if size < 2:
        return []
    return [list(range(start, start + size)) for start in range(0, repeats - size + 1, size)]


class Evaluation:
    """Runs the folds for one preprocessing setting and collects reports."""

    def __init__(self, corpus, settings, captures, folds, epochs, seed, max_windows, first_only,
                 int8=True, class_power=None, weighting=None, repeats=1, members=None,
                 name="CNN-LSTM", average_size=MEMBERS, port_prior=False):
        self.settings = settings
        self.data = dataset.build_windows(corpus, settings, captures, seed=seed)
        self.captures = captures
        self.fold = make_folds(captures, folds, seed)
        self.k = folds
        self.epochs = epochs
        self.seed = seed
        self.max_windows = max_windows
        self.first_only = first_only
        self.int8 = int8
        self.class_power = class_power
        self.weighting = weighting or DEFAULT_WEIGHTING
        self.repeats = repeats
        self.members = members or 1
        self.groups = average_groups(repeats, average_size)
        self.name = name  # the network's name in log lines
        # With port_prior, each fold's networks are scored with the server port prior of
        # that fold's training captures, as `edge-etc train` stores it in the model.
        self.port_prior = port_prior
        self._priors = {}

    def fold_prior(self, f):
        """Return the server port prior of fold `f`'s training captures, or None."""
        from .train import port_prior_of

        if not self.port_prior:
            return None
        if f not in self._priors:
            self._priors[f] = port_prior_of(self.data, self.split(f)[0])
        return self._priors[f]

    def split(self, f):
        train = [i for i in range(len(self.captures)) if self.fold[i] != f]
        test = [i for i in range(len(self.captures)) if self.fold[i] == f]
        return train, test

    def seen_application(self, flow_ids, train_idx):
        return application_seen(self.captures, self.data.flow_capture[flow_ids], train_idx)

    def run_model(self):
        """Train, quantize and score the CNN-LSTM on each fold, `repeats` times.

        Repeat r trains fold f with seed `seed + f + REPEAT_SEED_STEP * r` (weights, batch
        order and the inner validation captures); the folds stay the same. Per-fold lists
        run over the repeats in order (repeat 0's folds first), and the overall reports
        pool the flows of every repeat.

        With several repeats of one-member networks, out["ensemble"] scores the same way,
        per fold, averages of the fold's networks (`average_groups`: `average_size` repeats
        each, by default the bundled model's members), each converted to int8 as one model.
        The first average is what `edge-etc train` makes, since its member i has the seed of
        repeat i. In out["ensemble"], the per-repeat lists hold one entry per average.
        """
        out = self._new_result()
        pooled = {"true": [], "float": [], "int8": [], "seen": []}
        # Every test window's class probabilities, for analyses of decision rules.
        self.saved = {"repeat": [], "fold": [], "window": [], "float": [], "int8": [],
                      "float_networks": [], "int8_networks": []}
        fold_models = collections.defaultdict(list)
        for r in range(self.repeats):
            self._run_repeat(r, out, pooled, fold_models)
        self._pool(out, pooled)
        if self.groups and self.members == 1:
            from .train import combine_members

            ensemble = self._new_result()
            pooled = {"true": [], "float": [], "int8": [], "seen": []}
            for g, group in enumerate(self.groups):
                passes = []
                for f in range(self.k):
                    models = [fold_models[f][r][0] for r in group]
                    val_sets = [fold_models[f][r][1][0] for r in group]
                    passes.append((combine_members(models, self.settings), val_sets,
                                   self.seed + f + REPEAT_SEED_STEP * group[0]))
                self._run_pass(passes, ensemble, pooled, repeat=g, save=False,
                               label=f"average of repeats {group[0]}-{group[-1]}")
            self._pool(ensemble, pooled)
            ensemble["members"] = len(self.groups[0])
            ensemble["groups"] = [list(group) for group in self.groups]
            out["ensemble"] = ensemble
        return out

    @staticmethod
    def _new_result():
        return {"float": [], "int8": [], "thresholds": [], "background": [],
                "float_windows": [], "int8_windows": [], "int8_changed": [], "repeat": [],
                "repeat_float": [], "repeat_int8": [],
                "depths": {str(d): {"float": [], "int8": [], "repeat_float": [], "repeat_int8": [],
                                    "changed": []}
                           for d in DECISION_DEPTHS}}

    def _pool(self, out, pooled):
        data = self.data
        true = np.concatenate(pooled["true"])
        out["overall_float"] = per_class_report(true, np.concatenate(pooled["float"]), data.classes)
        if self.int8:
            out["overall_int8"] = per_class_report(true, np.concatenate(pooled["int8"]), data.classes)
        preds = {kind: np.concatenate(pooled[kind]) for kind in ("float", "int8") if pooled[kind]}
        out["by_application"] = split_by_application(true, preds, np.concatenate(pooled["seen"]),
                                                     data.classes)

    def _run_repeat(self, r, out, pooled, fold_models):
        from .train import fit

        data = self.data
        for f in range(self.k):
            train_idx, _ = self.split(f)
            position_limit = self.max_windows if self.first_only else None
            extra = {"weighting": self.weighting, "members": self.members}
            if self.class_power is not None:
                extra["class_power"] = self.class_power
            seed = self.seed + f + REPEAT_SEED_STEP * r
            started = time.time()
            model, val_sets = fit(data, train_idx, self.settings, self.epochs, seed,
                                  position_limit=position_limit, return_val=True, **extra)
            fold_models[f].append((model, val_sets))
            # Score each fold as soon as it is trained, so its log line comes in order.
            self._run_pass([(model, val_sets, seed)], out, pooled, repeat=r, first_fold=f,
                           finish=f == self.k - 1, started=started)

    def _run_pass(self, passes, out, pooled, repeat=None, first_fold=0, finish=True, label=None,
                  started=None, save=True):
        """Score models on folds `first_fold`, `first_fold` + 1, and so on.

        `passes` contains one (model, validation sets, seed) tuple per fold. With `finish` the pass
        is complete: its macro-F1 over all folds goes to out["repeat_*"], and its flows to
        `pooled`. `started` is when the first fold's training began, for its log line. With
        `save`, the test windows' probabilities of a repeat go to `save_probabilities`.
        """
        from .tflite import to_int8
        from .train import apply_held_out_port_prior, apply_port_prior, validation_probabilities

        data = self.data
        if first_fold == 0:
            self._pass = {"true": [], "float": [], "int8": [], "seen": [],
                          "by_depth": {d: {"true": [], "float": [], "int8": []} for d in DECISION_DEPTHS}}
        acc = self._pass
        by_depth = acc["by_depth"]
        for f, (model, val_sets, seed) in enumerate(passes, start=first_fold):
            train_idx, test_idx = self.split(f)
            started = started or time.time()
            out["repeat"].append(repeat if repeat is not None else 0)
            test = data.select(test_idx)
            x_test = data.x[test]
            prior = self.fold_prior(f)
            # The networks' probabilities, and the decisions' after the server port prior.
            networks = {"float": model.predict(x_test.astype(np.float32) / 255.0, batch_size=512,
                                               verbose=0)}
            p_float = apply_port_prior(networks["float"], data, test, prior)
            labelled = data.y[test] >= 0
            out["float_windows"].append(per_class_report(data.y[test][labelled], p_float[labelled].argmax(1), data.classes))

            # Threshold for "unknown" from the inner validation captures.
            val, p_val = validation_probabilities(model, data, val_sets)
            p_val = apply_held_out_port_prior(p_val, data, val, train_idx if prior else None)
            threshold = 0.0
            if val.any():
                ids, pred, conf = _flow_confidence(p_val, data, val, self.max_windows)
                labels = data.flow_label[ids]
                threshold = choose_threshold(conf, pred == labels, labels < 0)
            out["thresholds"].append(threshold)

            ids, pred, conf = _flow_confidence(p_float, data, test, self.max_windows)
            labels = data.flow_label[ids]
            known = labels >= 0
            out["float"].append(per_class_report(labels[known], pred[known], data.classes))
            background = ~known
            out["background"].append({
                "flows": int(background.sum()),
                "confident_wrong": int((conf[background] >= threshold).sum()),
                "threshold": threshold,
                "known_rejected": int((conf[known] < threshold).sum()),
            })
            acc["true"].append(labels[known])
            acc["float"].append(pred[known])
            acc["seen"].append(self.seen_application(ids[known], train_idx))

            if self.int8:
                rng = np.random.default_rng(seed)
                train_windows = np.flatnonzero(data.select(train_idx))
                calib = data.x[rng.choice(train_windows, min(2000, len(train_windows)), replace=False)]
                _, classifier = to_int8(model, self.settings, data.classes, calib)
                networks["int8"] = classifier.predict([w.tobytes() for w in x_test])
                p_int8 = apply_port_prior(networks["int8"], data, test, prior)
                out["int8_windows"].append(per_class_report(data.y[test][labelled], p_int8[labelled].argmax(1), data.classes))
                ids8, pred8, _ = _flow_confidence(p_int8, data, test, self.max_windows)
                # Both decision lists cover the same flows in the same order.
                assert np.array_equal(ids8, ids)
                labels8 = data.flow_label[ids8]
                out["int8"].append(per_class_report(labels8[labels8 >= 0], pred8[labels8 >= 0], data.classes))
                acc["int8"].append(pred8[labels8 >= 0])
                # The labelled flows whose decision differs between int8 and float.
                out["int8_changed"].append({"flows": int(known.sum()),
                                            "changed": int((pred8[labels8 >= 0] != pred[known]).sum())})
            probs = {"float": p_float, "int8": p_int8} if self.int8 else {"float": p_float}
            self._score_depths(probs, test, out["depths"], by_depth)
            if repeat is not None and save:
                window_ids = np.flatnonzero(test)
                self.saved["repeat"].append(np.full(len(window_ids), repeat, np.int16))
                self.saved["fold"].append(np.full(len(window_ids), f, np.int16))
                self.saved["window"].append(window_ids)
                for kind, p in probs.items():
                    self.saved[kind].append(p.astype(np.float32))
                    if self.port_prior:  # every fold, so the arrays stay aligned
                        self.saved[f"{kind}_networks"].append(networks[kind].astype(np.float32))
            where = label or (f"repeat {repeat}" if self.repeats > 1 else "")
            log.info("%s, %sfold %d: flow macro-F1 float %.3f%s (%.0f s)", self.name,
                     f"{where}, " if where else "", f, out["float"][-1]["macro_f1"],
                     f", int8 {out['int8'][-1]['macro_f1']:.3f}" if self.int8 else "", time.time() - started)
            started = None
        if not finish:
            return
        true = np.concatenate(acc["true"])
        out["repeat_float"].append(per_class_report(true, np.concatenate(acc["float"]), data.classes)["macro_f1"])
        pooled["true"].append(true)
        pooled["float"].append(np.concatenate(acc["float"]))
        pooled["seen"].extend(acc["seen"])
        if self.int8:
            out["repeat_int8"].append(per_class_report(true, np.concatenate(acc["int8"]), data.classes)["macro_f1"])
            pooled["int8"].append(np.concatenate(acc["int8"]))
        for d, parts in by_depth.items():
            true = np.concatenate(parts["true"])
            for kind in ("float", "int8"):
                if parts[kind]:
                    out["depths"][str(d)][f"repeat_{kind}"].append(
                        per_class_report(true, np.concatenate(parts[kind]), data.classes)["macro_f1"])

    def save_probabilities(self, path):
        """Write every test window's float (and int8) class probabilities of `run_model`
        to `path` (.npz), with its repeat, fold, flow, position in the flow and the labels.

        With the server port prior, "float" and "int8" are the probabilities the decisions
        use, "float_networks" and "int8_networks" the networks' before the prior,
        "server_port" each window's port and "port_priors" each fold's prior as JSON."""
        from edge_etc.port_prior import window_server_ports

        data = self.data
        arrays = {key: np.concatenate(v) for key, v in self.saved.items() if v}
        w = arrays["window"]
        if self.port_prior and any(self._priors.values()):
            arrays["server_port"] = window_server_ports(data.x[w], data.settings)
            priors = [self.fold_prior(f) for f in range(self.k)]
            arrays["port_priors"] = np.array([json.dumps(p.to_dict() if p else None) for p in priors])
        np.savez_compressed(path, **arrays, flow=data.flow[w], position=data.position[w],
                            capture=data.capture[w], y=data.y[w], flow_label=data.flow_label,
                            flow_capture=data.flow_capture, classes=np.array(data.classes))

    def _score_depths(self, probs, test, depths, by_depth):
        """Score one fold's flows with each decision depth in DECISION_DEPTHS."""
        data = self.data
        for d in DECISION_DEPTHS:
            decided = {}
            for kind, p in probs.items():
                true, pred, _ = flow_decisions(p, data.flow[test], data.position[test],
                                               data.flow_label, d)
                known = true >= 0
                decided[kind] = pred[known]
                depths[str(d)][kind].append(
                    per_class_report(true[known], pred[known], data.classes)["macro_f1"])
                if kind == "float":
                    by_depth[d]["true"].append(true[known])
                by_depth[d][kind].append(pred[known])
            if "int8" in decided:
                # The labelled flows whose int8 decision differs from the float one.
                depths[str(d)]["changed"].append(int((decided["int8"] != decided["float"]).sum()))

    def run_port_baseline(self):
        data = self.data
        reports, all_true, all_pred, all_seen = [], [], [], []
        ports = self._flow_ports()
        for f in range(self.k):
            train_idx, test_idx = self.split(f)
            train_flows = np.isin(data.flow_capture, train_idx) & (data.flow_label >= 0)
            test_flows = np.isin(data.flow_capture, test_idx) & (data.flow_label >= 0)
            all_seen.append(self.seen_application(np.flatnonzero(test_flows), train_idx))
            table = {}
            for port, label in zip(ports[train_flows], data.flow_label[train_flows]):
                table.setdefault(int(port), []).append(int(label))
            overall = int(np.bincount(data.flow_label[train_flows]).argmax())
            best = {p: int(np.bincount(v).argmax()) for p, v in table.items()}
            pred = np.array([best.get(int(p), overall) for p in ports[test_flows]], dtype=np.int64)
            true = data.flow_label[test_flows]
            reports.append(per_class_report(true, pred, data.classes))
            all_true.append(true)
            all_pred.append(pred)
        true, pred = np.concatenate(all_true), np.concatenate(all_pred)
        return {"folds": reports, "overall": per_class_report(true, pred, data.classes),
                "by_application": split_by_application(true, {"port": pred}, np.concatenate(all_seen),
                                                       data.classes)}

    def _flow_ports(self):
        ports = np.zeros(len(self.data.flow_label), dtype=np.int64)
        for fid, port in self.data.flow_server_port.items():
            ports[fid] = port
        return ports

    def run_stats_baseline(self, with_port):
        """Score a random forest on the window statistics, `repeats` times per fold.

        Each fold's leaf size is chosen on its training captures alone (`choose_leaf`), and
        repeat r seeds fold f's forest with `seed + f + REPEAT_SEED_STEP * r`, like the
        networks: a forest's macro-F1 moves by several points with its seed.
        """
        data = self.data
        feats = _stats_features(data.x, self.settings, with_port)
        splits = [self.split(f) for f in range(self.k)]
        leaves = [self.choose_leaf(feats, train_idx) for train_idx, _ in splits]
        fold_probs = [[] for _ in range(self.k)]
        for r in range(self.repeats):
            for f, (train_idx, test_idx) in enumerate(splits):
                seed = self.seed + f + REPEAT_SEED_STEP * r
                probs, _ = self._forest_probs(feats, train_idx, test_idx, leaves[f], seed, 200)
                fold_probs[f].append(probs)
        result = self._score_forests(splits, fold_probs, [[r] for r in range(self.repeats)])
        result.update({"min_samples_leaf": leaves, "leaf_sizes": list(LEAF_SIZES),
                       "inner_folds": INNER_FOLDS})
        if self.groups:
            # The mean of the forests of each group of repeats per fold, like the networks'
            # averages.
            result["ensemble"] = self._score_forests(splits, fold_probs, self.groups)
            result["ensemble"].update({"members": len(self.groups[0]),
                                       "groups": [list(group) for group in self.groups]})
        return result

    def _score_forests(self, splits, fold_probs, groups):
        """Score the mean of the forests of each group of repeats on every fold.

        Returns the per-fold reports with their group numbers ("repeat"), each group's
        macro-F1 over all folds, the report of the flows of all groups pooled, and each
        group's macro-F1 with every decision depth of DECISION_DEPTHS ("depths"), as the
        networks' results have them."""
        data = self.data
        reports, group_of, per_group, pooled_true, pooled_pred = [], [], [], [], []
        depths = {str(d): {"repeat_float": []} for d in DECISION_DEPTHS}
        for g, group in enumerate(groups):
            all_true, all_pred = [], []
            by_depth = {d: ([], []) for d in DECISION_DEPTHS}
            for f, (_, test_idx) in enumerate(splits):
                te = data.select(test_idx)
                probs = sum(fold_probs[f][r] for r in group)
                for d in DECISION_DEPTHS:
                    true, pred, _ = flow_decisions(probs, data.flow[te], data.position[te],
                                                   data.flow_label, d)
                    by_depth[d][0].append(true[true >= 0])
                    by_depth[d][1].append(pred[true >= 0])
                true, pred, _ = flow_decisions(probs, data.flow[te], data.position[te],
                                               data.flow_label, self.max_windows)
                known = true >= 0
                reports.append(per_class_report(true[known], pred[known], data.classes))
                group_of.append(g)
                all_true.append(true[known])
                all_pred.append(pred[known])
            true, pred = np.concatenate(all_true), np.concatenate(all_pred)
            per_group.append(per_class_report(true, pred, data.classes)["macro_f1"])
            pooled_true.append(true)
            pooled_pred.append(pred)
            for d, (trues, preds) in by_depth.items():
                depths[str(d)]["repeat_float"].append(per_class_report(
                    np.concatenate(trues), np.concatenate(preds), data.classes)["macro_f1"])
        overall = per_class_report(np.concatenate(pooled_true), np.concatenate(pooled_pred),
                                   data.classes)
        return {"folds": reports, "repeat": group_of, "repeat_macro_f1": per_group,
                "overall": overall, "depths": depths}

    def _forest_probs(self, feats, train_idx, test_idx, leaf, seed, trees):
        """Fit a forest on the labelled windows of captures `train_idx`; return its class
        probabilities for the windows of `test_idx`, and their mask."""
        from sklearn.ensemble import RandomForestClassifier

        data = self.data
        tr = data.select(train_idx) & (data.y >= 0)
        te = data.select(test_idx)
        clf = RandomForestClassifier(n_estimators=trees, min_samples_leaf=leaf, n_jobs=2,
                                     random_state=seed)
        weights = training_weights(data.y[tr], data.flow[tr], data.capture[tr], len(data.classes),
                                   weighting=self.weighting)
        clf.fit(feats[tr], data.y[tr], sample_weight=weights)
        probs = np.zeros((te.sum(), len(data.classes)))
        if te.any():
            probs[:, clf.classes_] = clf.predict_proba(feats[te])
        return probs, te

    def choose_leaf(self, feats, train_idx):
        """Return the forest's minimum leaf size for a fold, chosen on its training captures.

        The training captures are dealt into INNER_FOLDS grouped folds like the outer ones.
        Each size in LEAF_SIZES is scored by the flow macro-F1 of those folds' pooled
        decisions, and the best one wins (the smaller one on a tie). Small leaves learn
        single captures: on the 5 folds of the full evaluation, leaves of 2 scored 0.30 and
        leaves of 10 about 0.39.
        """
        data = self.data
        captures = [self.captures[i] for i in train_idx]
        inner = make_folds(captures, INNER_FOLDS, self.seed)
        best = None
        for leaf in LEAF_SIZES:
            all_true, all_pred = [], []
            for g in range(INNER_FOLDS):
                fit_on = [c for c, fold in zip(train_idx, inner) if fold != g]
                score_on = [c for c, fold in zip(train_idx, inner) if fold == g]
                probs, te = self._forest_probs(feats, fit_on, score_on, leaf, self.seed, 100)
                true, pred, _ = flow_decisions(probs, data.flow[te], data.position[te], data.flow_label,
                                               self.max_windows)
                known = true >= 0
                all_true.append(true[known])
                all_pred.append(pred[known])
            score = per_class_report(np.concatenate(all_true), np.concatenate(all_pred),
                                     data.classes)["macro_f1"]
            log.info("random forest, leaf size %d: inner flow macro-F1 %.3f", leaf, score)
            if best is None or score > best[0]:
                best = (score, leaf)
        return best[1]


def application_seen(captures, capture_of_flow, train_idx):
    """Return, per flow, whether a training capture shows the application of the flow's
    capture (MANIFEST.tsv's names, compared without case)."""
    seen = {captures[i].application.lower() for i in train_idx}
    return np.array([captures[c].application.lower() in seen for c in capture_of_flow], dtype=bool)


def split_by_application(true, predictions, seen, classes):
    """Return {"seen": {name: report}, "unseen": {name: report}}: the reports of each
    prediction array in `predictions` over the flows whose application a training capture
    shows (`seen`) and over the others."""
    return {group: {name: per_class_report(true[mask], pred[mask], classes)
                    for name, pred in predictions.items()}
            for group, mask in (("seen", seen), ("unseen", ~seen))}


def _weighting_text(weighting, class_power):
    power = class_power if class_power is not None else CLASS_WEIGHT_POWER
    if weighting == "capture":
        return ("every flow the same total weight over its windows, then every capture the same "
                "total within its class; class totals proportional to captures ** "
                f"(1 - {power})")
    return ("every flow the same total weight over its windows; class totals proportional to "
            f"flows ** (1 - {power})")


def _groups_text(groups):
    return ", ".join(f"repeats {g[0]}-{g[-1]}" for g in groups)


def _summary_row(name, result, key="overall"):
    """One row of the results table.

    For a trained network run several times (`run_model` with repeats), `macro_f1` is the
    mean over the repeats of each repeat's macro-F1 over all folds, `repeat_macro_f1` lists
    them, and `fold_macro_f1` is each fold's mean over the repeats. A baseline's row has
    one repeat.
    """
    if "repeat_float" in result:  # a network from run_model
        kind = "int8" if key == "overall_int8" else "float"
        per_repeat = result[f"repeat_{kind}"]
        reports = result[kind]
        repeat_of = result["repeat"]
    else:
        reports = result.get("folds") or []
        if "repeat_macro_f1" in result:  # a baseline run once per repeat
            per_repeat = result["repeat_macro_f1"]
            repeat_of = result["repeat"]
        else:
            per_repeat = [result[key]["macro_f1"]] if key in result else []
            repeat_of = [0] * len(reports)
    repeats = max(repeat_of) + 1 if repeat_of else 1
    folds = len(reports) // repeats
    f1s = [round(float(np.mean([reports[r * folds + f]["macro_f1"] for r in range(repeats)])), 4)
           for f in range(folds)]
    return {"name": name, "macro_f1": round(float(np.mean(per_repeat)), 4) if per_repeat else None,
            "repeat_macro_f1": per_repeat, "fold_macro_f1": f1s,
            "mean_fold_macro_f1": round(float(np.mean(f1s)), 4) if f1s else None}


def application_text(results):
    """Return the lines of the table of scores on flows of seen and unseen applications."""
    columns = [("CNN-LSTM float", results["cnn_lstm"]["by_application"], "float"),
               ("CNN-LSTM int8", results["cnn_lstm"]["by_application"], "int8"),
               ("server port", results.get("port", {}).get("by_application"), "port")]
    columns = [c for c in columns if c[1] and c[2] in c[1]["seen"]]
    lines = ["Flows whose application (MANIFEST.tsv) a training capture shows, and the others;",
             "macro-F1 / accuracy (the networks' flows are counted once per repeat):",
             f"{'application':<13}" + "".join(f"{name:>24}" for name, _, _ in columns)]
    for group in ("seen", "unseen"):
        cells = []
        for _, split, key in columns:
            report = split[group][key]
            cells.append(f"{report['macro_f1']:.3f} / {report['accuracy']:.3f} ({report['support']})")
        lines.append(f"{group:<13}" + "".join(f"{cell:>24}" for cell in cells))
    return lines


def depth_rows(result):
    """Return one row per decision depth of `run_model`'s "depths".

    A row has the windows per decision and the mean macro-F1 over the repeats, float and
    int8. With int8, it also has the largest float/int8 gap on a fold and the number of
    labelled flows whose int8 decision differs from the float one."""
    rows = []
    for d, r in result.get("depths", {}).items():
        if not r["repeat_float"]:
            continue
        row = {"windows": int(d), "float": round(float(np.mean(r["repeat_float"])), 4),
               "repeat_float": r["repeat_float"]}
        if r["repeat_int8"]:
            row["int8"] = round(float(np.mean(r["repeat_int8"])), 4)
            row["repeat_int8"] = r["repeat_int8"]
            row["largest_fold_gap"] = round(max(abs(a - b) for a, b in zip(r["float"], r["int8"])), 4)
            row["int8_changed"] = sum(r.get("changed", []))
        rows.append(row)
    return rows


def depth_text(result):
    rows = depth_rows(result)
    if not rows:
        return []
    lines = ["Windows per flow decision (--max-windows), same trained models:",
             f"{'windows':<9}{'float':>8}{'int8':>8}{'largest fold gap':>18}{'int8 changed':>14}"
             "   float per repeat"]
    for r in rows:
        int8 = (f"{r['int8']:>8.3f}{r['largest_fold_gap']:>18.3f}{r['int8_changed']:>14d}"
                if "int8" in r else " " * 40)
        lines.append(f"{r['windows']:<9}{r['float']:>8.3f}{int8}   "
                     + " ".join(f"{v:.3f}" for v in r["repeat_float"]))
    return lines


def save_confusion_png(report, classes, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(report["confusion"], dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_text(report, classes):
    width = max(len(c) for c in classes) + 1
    lines = [" " * width + "".join(f"{c[:6]:>7}" for c in classes)]
    for name, row in zip(classes, report["confusion"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>7d}" for v in row))
    return "\n".join(lines)


def machine_info():
    """Return what the figures of a run depend on: CPU, cores and software versions."""
    import platform

    from . import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "tensorflow": tf.__version__, "numpy": np.__version__}


def evaluate_command(corpus, output, preset, seed, vector_bytes, window_rule, no_server_port,
                     no_mask_addresses, context, window_packets, max_windows, first_only,
                     baselines, int8, port_buckets=None, class_power=None, weighting=None,
                     repeats=None, members=None, average_size=None, port_prior=True):
    corpus = corpus or dataset.default_corpus()
    members = members or 1
    average_size = average_size or MEMBERS
    cfg = PRESETS[preset]
    repeats = repeats or cfg["repeats"]
    settings = settings_from_options(vector_bytes=vector_bytes, window_rule=window_rule,
                                     window_packets=window_packets, context=context,
                                     port_buckets=port_buckets,
                                     server_port=False if no_server_port else None,
                                     mask_addresses=False if no_mask_addresses else None)
    captures = dataset.read_manifest(corpus)
    if cfg["limit_captures"]:
        captures = dataset.spread_captures(captures, cfg["limit_captures"])
    started = time.time()
    os.makedirs(output, exist_ok=True)
    ev = Evaluation(corpus, settings, captures, cfg["folds"], cfg["epochs"], seed, max_windows,
                    first_only, int8=int8, class_power=class_power, weighting=weighting,
                    repeats=repeats, members=members, average_size=average_size,
                    port_prior=port_prior)
    flags = []
    if no_server_port:
        flags.append("--no-server-port")
    if no_mask_addresses:
        flags.append("--no-mask-addresses")
    if first_only:
        flags.append("--first-only")
    if max_windows != DEFAULTS.flows.max_windows:
        flags.append(f"--max-windows {max_windows}")
    if window_packets is not None:
        flags.append(f"--window-packets {window_packets}")
    if weighting is not None and weighting != DEFAULT_WEIGHTING:
        flags.append(f"--weighting {weighting}")
    if vector_bytes is not None:
        flags.append(f"--vector-bytes {vector_bytes}")
    if members != 1:
        flags.append(f"--members {members}")
    if average_size != MEMBERS:
        flags.append(f"--average-size {average_size}")
    if window_rule is not None:
        flags.append(f"--window-rule {window_rule}")
    if context is not None:
        flags.append("--context" if context else "--no-context")
    if port_buckets is not None:
        flags.append(f"--port-buckets {port_buckets}")
    if not port_prior:
        flags.append("--no-port-prior")
    results = {"flags": " ".join(flags), "settings": settings.to_dict(), "preset": preset, "folds": cfg["folds"],
               "epochs": cfg["epochs"], "seed": seed, "max_windows": max_windows,
               "first_only": first_only, "captures": len(captures), "repeats": repeats,
               "members": members, "average_size": average_size,
               "port_prior": bool(port_prior and settings.context and settings.server_port),
               "weighting": _weighting_text(ev.weighting, class_power),
               "machine": machine_info()}
    per_application = collections.Counter(c.application.lower() for c in captures)
    results["applications"] = {"names": len(per_application),
                                "in_one_capture": sum(n == 1 for n in per_application.values())}
    results["cnn_lstm"] = ev.run_model()
    ev.save_probabilities(os.path.join(output, "probabilities.npz"))
    rows = [_summary_row("CNN-LSTM float", results["cnn_lstm"], "overall_float")]
    if int8:
        rows.append(_summary_row("CNN-LSTM int8", results["cnn_lstm"], "overall_int8"))
    groups = average_groups(repeats, average_size)
    averaged = f", average of {len(groups[0])}" if groups else ""
    if "ensemble" in results["cnn_lstm"]:
        rows.append(_summary_row("CNN-LSTM float" + averaged, results["cnn_lstm"]["ensemble"], "overall_float"))
        if int8:
            rows.append(_summary_row("CNN-LSTM int8" + averaged, results["cnn_lstm"]["ensemble"], "overall_int8"))
    if baselines:
        results["port"] = ev.run_port_baseline()
        rows.append(_summary_row("server port only", results["port"]))
        # The statistics come from the context bytes, so they need windows built with them.
        stats_ev = ev if settings.context and settings.server_port else Evaluation(
            corpus, Preprocessing(**{**settings.to_dict_plain(), "context": True, "server_port": True,
                                     "vector_bytes": settings.header_bytes + 8, "port_buckets": 0}),
            captures, cfg["folds"], cfg["epochs"], seed, max_windows, first_only, int8=False,
            weighting=weighting, repeats=repeats, average_size=average_size)
        results["stats"] = stats_ev.run_stats_baseline(with_port=False)
        rows.append(_summary_row("statistics (random forest)", results["stats"]))
        results["stats_port"] = stats_ev.run_stats_baseline(with_port=True)
        rows.append(_summary_row("statistics + server port", results["stats_port"]))
        for key, name in (("stats", "statistics"), ("stats_port", "statistics + server port")):
            if "ensemble" in results[key]:
                rows.append(_summary_row(name + averaged, results[key]["ensemble"]))
        if settings.window_packets != 1:
            one = Evaluation(corpus, Preprocessing(**{**settings.to_dict_plain(), "window_packets": 1}),
                             captures, cfg["folds"], cfg["epochs"], seed, max_windows, first_only, int8=False,
                             weighting=weighting, repeats=repeats, members=members,
                             name="one-packet CNN", average_size=average_size,
                             port_prior=port_prior)
            results["one_packet_cnn"] = one.run_model()
            rows.append(_summary_row("one-packet CNN", results["one_packet_cnn"], "overall_float"))
            if "ensemble" in results["one_packet_cnn"]:
                rows.append(_summary_row("one-packet CNN" + averaged, results["one_packet_cnn"]["ensemble"],
                                         "overall_float"))
    results["summary"] = rows
    results["seconds"] = round(time.time() - started, 1)

    with open(os.path.join(output, "evaluation.json"), "w") as f:
        json.dump(results, f, indent=1)
    classes = ev.data.classes
    text = [f"Grouped {cfg['folds']}-fold cross-validation by capture file, {len(captures)} captures, "
            f"seed {seed}, {repeats} training repeat(s), {results['seconds']:.0f} s",
            f"settings: {json.dumps(settings.to_dict_plain())}",
            "server port prior of the training flows: " + ("on" if results["port_prior"] else "off"), "",
            f"{'model':<40}{'flow macro-F1':>15}   per fold (mean over repeats or averages); "
            "per repeat or average"]
    for r in rows:
        folds = " ".join(f"{v:.3f}" for v in r["fold_macro_f1"])
        spread = " ".join(f"{v:.3f}" for v in r["repeat_macro_f1"]) if len(r["repeat_macro_f1"]) > 1 else ""
        text.append(f"{r['name']:<40}{r['macro_f1']:>15.3f}   {folds}" + (f"; {spread}" if spread else ""))
    text += ["", "CNN-LSTM float, flows, all folds" + (" and repeats" if repeats > 1 else "") + ":", format_report(results["cnn_lstm"]["overall_float"]),
             confusion_text(results["cnn_lstm"]["overall_float"], classes)]
    if int8:
        text += ["", "CNN-LSTM int8, flows, all folds:", format_report(results["cnn_lstm"]["overall_int8"])]
        diffs = [abs(a["macro_f1"] - b["macro_f1"]) for a, b in zip(results["cnn_lstm"]["float"], results["cnn_lstm"]["int8"])]
        text.append(f"largest float/int8 macro-F1 difference on a fold: {max(diffs):.3f}")
        changed = results["cnn_lstm"]["int8_changed"]
        text.append("labelled flows whose int8 decision differs from the float one: "
                    f"{sum(c['changed'] for c in changed)} of {sum(c['flows'] for c in changed)}; "
                    "per fold: " + " ".join(str(c["changed"]) for c in changed))
    ensemble = results["cnn_lstm"].get("ensemble")
    if ensemble and int8:
        diffs = [abs(a["macro_f1"] - b["macro_f1"]) for a, b in zip(ensemble["float"], ensemble["int8"])]
        changed = ensemble["int8_changed"]
        text += ["", f"CNN-LSTM, averages of {ensemble['members']} networks per fold "
                 f"({_groups_text(ensemble['groups'])}), int8, flows:",
                 format_report(ensemble["overall_int8"]),
                 f"largest float/int8 macro-F1 difference on a fold: {max(diffs):.3f}",
                 "labelled flows whose int8 decision differs from the float one: "
                 f"{sum(c['changed'] for c in changed)} of {sum(c['flows'] for c in changed)}; "
                 "per fold: " + " ".join(str(c["changed"]) for c in changed)]
    bg = results["cnn_lstm"]["background"]
    total = sum(b["flows"] for b in bg)
    wrong = sum(b["confident_wrong"] for b in bg)
    text += ["", f"background/unknown flows: {total}; given a confident label: {wrong} "
             f"({wrong / total:.1%})" if total else "background/unknown flows: none",
             "thresholds per fold: " + ", ".join(f"{b['threshold']:.2f}" for b in bg)]
    if ensemble:
        bg = ensemble["background"]
        flows = sum(b["flows"] for b in bg)
        wrong = sum(b["confident_wrong"] for b in bg)
        text += [f"averages of {ensemble['members']}: {flows} background/unknown flows; given a confident "
                 f"label: {wrong} ({wrong / flows:.1%}); thresholds per fold: "
                 + ", ".join(f"{b['threshold']:.2f}" for b in bg) if flows else ""]
    text += ["", *application_text(results)]
    depths = depth_text(results["cnn_lstm"])
    if depths:
        text += ["", *depths]
    depths = depth_text(ensemble) if ensemble else []
    if depths:
        text += ["", f"Averages of {ensemble['members']} networks. " + depths[0], *depths[1:]]
    with open(os.path.join(output, "evaluation.txt"), "w") as f:
        f.write("\n".join(text) + "\n")
    # The matrices of the model as bundled: the averages of its members' networks, when the
    # run scored them.
    product, title = ((ensemble, f"CNN-LSTM, average of {ensemble['members']}") if ensemble
                      else (results["cnn_lstm"], "CNN-LSTM"))
    save_confusion_png(product["overall_float"], classes,
                       os.path.join(output, "confusion_float.png"), f"{title}, float, flows")
    if int8:
        save_confusion_png(product["overall_int8"], classes,
                           os.path.join(output, "confusion_int8.png"), f"{title}, int8, flows")
    print("\n".join(text))
    return results
