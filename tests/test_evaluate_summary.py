"""The results table of `edge-etc evaluate` with training repeats (no training here)."""

import pytest

pytest.importorskip("sklearn")  # convert.evaluate is training-side code

from edge_etc.convert.evaluate import _summary_row, average_groups  # noqa: E402


def report(f1):
    return {"macro_f1": f1}


def test_network_row_averages_repeats_per_fold_and_overall():
    # Two repeats of three folds: repeat 0's folds first, then repeat 1's.
    result = {
        "float": [report(v) for v in (0.2, 0.4, 0.6, 0.4, 0.4, 0.2)],
        "int8": [report(v) for v in (0.1, 0.3, 0.5, 0.3, 0.3, 0.1)],
        "repeat": [0, 0, 0, 1, 1, 1],
        "repeat_float": [0.45, 0.35],
        "repeat_int8": [0.40, 0.20],
        "overall_float": report(0.99),  # pooled over repeats; not the row's figure
        "overall_int8": report(0.99),
    }
    row = _summary_row("CNN-LSTM float", result, "overall_float")
    assert row["macro_f1"] == pytest.approx(0.40)
    assert row["repeat_macro_f1"] == [0.45, 0.35]
    assert row["fold_macro_f1"] == pytest.approx([0.3, 0.4, 0.4])
    row8 = _summary_row("CNN-LSTM int8", result, "overall_int8")
    assert row8["macro_f1"] == pytest.approx(0.30)
    assert row8["fold_macro_f1"] == pytest.approx([0.2, 0.3, 0.3])


def test_baseline_row_has_one_repeat():
    result = {"folds": [report(0.3), report(0.5)], "overall": report(0.42)}
    row = _summary_row("server port only", result)
    assert row["macro_f1"] == pytest.approx(0.42)
    assert row["repeat_macro_f1"] == [0.42]
    assert row["fold_macro_f1"] == pytest.approx([0.3, 0.5])


@pytest.mark.parametrize("repeats, groups", [
    (1, []),
    (2, [[0, 1]]),
    (3, [[0, 1, 2]]),
    (7, [[0, 1, 2], [3, 4, 5]]),  # repeat 6 has no group of three
    (9, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
])
def test_average_groups_of_three(repeats, groups):
    assert average_groups(repeats, 3) == groups


def test_average_groups_of_five():
    assert average_groups(10, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert average_groups(9, 5) == [[0, 1, 2, 3, 4]]


def test_average_groups_default_is_members():
    from edge_etc.convert.train import MEMBERS

    assert average_groups(10) == average_groups(10, MEMBERS)


def test_forest_averages_row_per_group():
    # Two averages of two folds, the shape of run_stats_baseline's "ensemble".
    result = {"folds": [report(v) for v in (0.2, 0.4, 0.4, 0.6)], "repeat": [0, 0, 1, 1],
              "repeat_macro_f1": [0.31, 0.52], "overall": report(0.99)}
    row = _summary_row("statistics, average of 3", result)
    assert row["macro_f1"] == pytest.approx(0.415)
    assert row["repeat_macro_f1"] == [0.31, 0.52]
    assert row["fold_macro_f1"] == pytest.approx([0.3, 0.5])


def test_decision_depths_same_windows():
    import types

    import numpy as np

    from edge_etc.convert.evaluate import DECISION_DEPTHS, Evaluation, depth_rows

    # Flow 0 (class 0): its first window leans to class 1, its next two to class 0.
    # Flow 1 (class 1): every window leans to class 1. Flow 2 is background (-1).
    ev = Evaluation.__new__(Evaluation)
    ev.data = types.SimpleNamespace(
        flow=np.array([0, 0, 0, 1, 1, 2]), position=np.array([0, 1, 2, 0, 1, 0]),
        flow_label=np.array([0, 1, -1]), classes=["A", "B"])
    p = np.array([[0.4, 0.6], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.5, 0.5]])
    test = np.ones(6, dtype=bool)
    depths = {str(d): {"float": [], "int8": [], "repeat_float": [], "repeat_int8": [],
                       "changed": []} for d in DECISION_DEPTHS}
    by_depth = {d: {"true": [], "float": [], "int8": []} for d in DECISION_DEPTHS}
    ev._score_depths({"float": p, "int8": p[:, ::-1].copy()}, test, depths, by_depth)
    # One window: flow 0 is called B, so class A has no hit. Three: both flows right.
    assert depths["1"]["float"] == [pytest.approx(1 / 3, abs=1e-3)]
    assert depths["3"]["float"] == [1.0]
    assert depths["8"]["float"] == [1.0]
    # The background flow is not scored; the true labels are the labelled flows only.
    assert list(by_depth[1]["true"][0]) == [0, 1]
    assert list(by_depth[3]["float"][0]) == [0, 1]
    assert list(by_depth[3]["int8"][0]) == [1, 0]
    # The reversed probabilities decide both labelled flows differently at every depth.
    assert depths["3"]["changed"] == [2]
    assert depths["1"]["changed"] == [2]

    for d in DECISION_DEPTHS:
        depths[str(d)]["repeat_float"] = [depths[str(d)]["float"][0]]
        depths[str(d)]["repeat_int8"] = [depths[str(d)]["int8"][0]]
    rows = {r["windows"]: r for r in depth_rows({"depths": depths})}
    assert rows[3]["float"] == 1.0
    assert rows[3]["int8"] == 0.0
    assert rows[3]["largest_fold_gap"] == 1.0
    # At one window int8 gets the other flow wrong instead: the same score, no gap.
    assert rows[1]["int8"] == pytest.approx(1 / 3, abs=1e-3)
    assert rows[1]["largest_fold_gap"] == 0.0
