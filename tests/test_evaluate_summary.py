"""The results table of `edge-etc evaluate` with training repeats (no training here)."""

import pytest

pytest.importorskip("sklearn")  # convert.evaluate is training-side code

from edge_etc.convert.evaluate import _summary_row  # noqa: E402


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
