"""Training weights: per flow, per capture and per class."""

import numpy as np
import pytest

from edge_etc.convert.train import training_weights


def _totals(w, groups):
    return {g: round(float(w[groups == g].sum()), 6) for g in np.unique(groups)}


# Class 0: capture 0 has three flows (flow 0 with four windows), capture 1 has one flow.
# Class 1: capture 2 has one flow of two windows.
Y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])
FLOW = np.array([0, 0, 0, 0, 1, 2, 3, 4, 4])
CAPTURE = np.array([0, 0, 0, 0, 0, 0, 1, 2, 2])


def test_flow_weighting_equal_per_flow():
    w = training_weights(Y, FLOW, CAPTURE, 2, class_power=0.0, weighting="flow")
    per_flow = _totals(w, FLOW)
    assert len(set(per_flow.values())) == 1
    assert w.sum() == pytest.approx(len(w))


def test_capture_weighting_equal_per_capture():
    w = training_weights(Y, FLOW, CAPTURE, 2, class_power=0.0, weighting="capture")
    per_capture = _totals(w, CAPTURE)
    assert per_capture[0] == pytest.approx(per_capture[1])
    assert per_capture[1] == pytest.approx(per_capture[2])
    # Within capture 0, its three flows share the capture's weight equally.
    per_flow = _totals(w, FLOW)
    assert per_flow[0] == pytest.approx(per_flow[1])
    assert per_flow[0] == pytest.approx(per_capture[0] / 3)


def test_class_power_balances_classes():
    # class_power 1: both classes carry the same total, whatever their captures.
    w = training_weights(Y, FLOW, CAPTURE, 2, class_power=1.0, weighting="capture")
    per_class = _totals(w, Y)
    assert per_class[0] == pytest.approx(per_class[1])
    # class_power 0.5: class totals in proportion to sqrt(captures): 2 against 1.
    w = training_weights(Y, FLOW, CAPTURE, 2, class_power=0.5, weighting="capture")
    per_class = _totals(w, Y)
    assert per_class[0] / per_class[1] == pytest.approx(np.sqrt(2))


def test_weighting_rejects_unknown_mode():
    with pytest.raises(ValueError, match="weighting"):
        training_weights(Y, FLOW, CAPTURE, 2, weighting="window")


def test_weights_empty_input():
    empty = np.zeros(0, np.int64)
    assert len(training_weights(empty, empty, empty, 2)) == 0


def test_ema_momentum_long_and_short_trainings():
    from edge_etc.convert.train import EMA_MOMENTUM, ema_momentum

    assert ema_momentum(615) == EMA_MOMENTUM  # the smallest evaluate fold: 41 steps, 15 epochs
    assert ema_momentum(500) == pytest.approx(EMA_MOMENTUM)
    short = ema_momentum(75)
    assert short == pytest.approx(1 - 5 / 75)
    assert short ** 75 < 0.01  # the first step's weights are gone from the average
    assert ema_momentum(1) == 0.0


def test_flow_start_epochs_match_steps():
    from edge_etc.convert.dataset import Windows
    from edge_etc.convert.train import _epochs_for_same_steps
    from edge_etc.preprocess import Preprocessing

    data = Windows(Preprocessing(), [])
    # Capture 0: 1,000 labelled windows, capture 1: 300 more and 200 unlabelled ones.
    data.capture = np.repeat([0, 1, 1], [1000, 300, 200])
    data.y = np.repeat([2, 3, -1], [1000, 300, 200])
    # 1,300 labelled windows are 6 batches, so 15 epochs take 90 steps. 100 flow starts fit
    # in one batch, so they need 90 epochs. Over both captures' windows, the same 15.
    assert _epochs_for_same_steps(data, [0, 1], 100, 15) == 90
    assert _epochs_for_same_steps(data, [0, 1], 1300, 15) == 15
    # 300 windows are 2 batches: 45 epochs over them are the 90 steps.
    assert _epochs_for_same_steps(data, [0, 1], 300, 15) == 45
    # Capture 1 alone: 300 labelled windows, 2 batches, 30 steps.
    assert _epochs_for_same_steps(data, [1], 100, 15) == 30
