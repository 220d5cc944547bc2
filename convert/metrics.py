"""Scores: per-class precision, recall and F1, confusion matrices and flow decisions."""

import numpy as np


def per_class_report(y_true, y_pred, classes):
    """Return {"macro_f1", "accuracy", "support", "classes": {name: {p, r, f1, n}}, "confusion"}."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        confusion[t, p] += 1
    out = {}
    f1s = []
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        predicted = confusion[:, i].sum()
        actual = confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                     "f1": round(float(f1), 4), "support": int(actual)}
        if actual:
            f1s.append(f1)
    return {
        # Macro-F1 over the classes present in y_true, so a class absent from a test
        # fold does not count as a zero.
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "accuracy": round(float((y_true == y_pred).mean()) if len(y_true) else 0.0, 4),
        "support": int(len(y_true)),
        "classes": out,
        "confusion": confusion.tolist(),
    }


def format_report(report):
    """Return a report as a text table."""
    lines = [f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, r in report["classes"].items():
        lines.append(f"{name:<14}{r['precision']:>10.3f}{r['recall']:>10.3f}{r['f1']:>10.3f}{r['support']:>10d}")
    lines.append(f"{'macro-F1':<14}{'':>10}{'':>10}{report['macro_f1']:>10.3f}{report['support']:>10d}")
    lines.append(f"{'accuracy':<14}{'':>10}{'':>10}{report['accuracy']:>10.3f}")
    return "\n".join(lines) + "\n"


def flow_decisions(probs, flow, position, flow_label, max_windows=5):
    """Return (true, predicted, flow ids): the runner's decision per flow.

    The runner averages the probabilities of a flow's first `max_windows` windows, so only
    windows at positions below `max_windows` count here.
    """
    keep = position < max_windows
    probs, flow = probs[keep], flow[keep]
    ids, inverse = np.unique(flow, return_inverse=True)
    sums = np.zeros((len(ids), probs.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, probs)
    return flow_label[ids], sums.argmax(1), ids
