"""The server port prior: its factors, its metadata form, the port it reads from windows,
and the bundled model's use of it in `run`."""

import json

import numpy as np
import pytest

from conftest import case, run_cli
from edge_etc.errors import ModelError
from edge_etc.port_prior import PortPrior, window_server_ports
from edge_etc.preprocess import Preprocessing


def _prior():
    # 8 flows of class 0 and 4 of class 1; port 443 has 3 and 1 of them, port 22 has 0 and 2.
    return PortPrior([8, 4], {443: [3, 1], 22: [0, 2]}, smoothing=1.0)


def test_factors_follow_formula():
    prior = _prior()
    share = np.array([8, 4]) / 12
    for port, counts in ((443, np.array([3, 1])), (22, np.array([0, 2]))):
        mix = (counts + share) / (counts.sum() + 1)
        row = list(prior.ports).index(port)
        np.testing.assert_allclose(prior.factors[row], mix / share, rtol=1e-6)


def test_apply_scales_and_normalizes():
    prior = _prior()
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    out = prior.apply(probs, np.array([443, 22, 443]))
    expected = probs * prior.factors[[list(prior.ports).index(p) for p in (443, 22, 443)]]
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32
    # Port 22 saw class 1 only: it turns an even row into a class-1 row.
    assert out[1].argmax() == 1
    # The input is not changed in place.
    assert probs[1].tolist() == [0.5, 0.5]


def test_apply_leaves_unseen_ports():
    prior = _prior()
    probs = np.array([[0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    out = prior.apply(probs, np.array([80, 65535]))
    assert out.tolist() == probs.tolist()
    assert out is probs  # nothing to do, so no copy


def test_apply_keeps_all_zero_rows():
    prior = _prior()
    out = prior.apply(np.zeros((1, 2), dtype=np.float32), np.array([443]))
    assert out.tolist() == [[0.0, 0.0]]


def test_class_without_flows_keeps_factor_one():
    prior = PortPrior([5, 0, 5], {443: [1, 0, 3]})
    row = prior.factors[0]
    assert row[1] == 1.0
    assert row[2] > 1.0 > row[0]


def test_count_matches_flows():
    labels = [0, 0, 1, 2, 2, 2]
    ports = [443, 443, 443, 22, 22, 53]
    prior = PortPrior.count(labels, ports, 3)
    doc = prior.to_dict()
    assert doc["class_flows"] == [2, 1, 3]
    assert doc["ports"] == {"22": [0, 0, 2], "53": [0, 0, 1], "443": [2, 1, 0]}


def test_metadata_round_trip():
    prior = _prior()
    again = PortPrior.from_dict(json.loads(json.dumps(prior.to_dict())), 2, "m.tflite")
    assert again.ports.tolist() == prior.ports.tolist()
    np.testing.assert_array_equal(again.factors, prior.factors)
    assert again.smoothing == prior.smoothing


_GOOD = {"smoothing": 1.0, "class_flows": [8, 2], "ports": {"443": [3, 1]}}


_RANGE = "expected a number from 0.001 to 1000000"
_COUNTS = "a list of 2 whole numbers from 0 to 2**53"


@pytest.mark.parametrize("edit, problem", [
    ({"smoothing": 0}, f"smoothing=0, {_RANGE}"),
    ({"smoothing": 1e-300}, f"smoothing=1e-300, {_RANGE}"),
    ({"smoothing": 1e12}, f"smoothing=1000000000000.0, {_RANGE}"),
    ({"smoothing": float("nan")}, f"smoothing=nan, {_RANGE}"),
    ({"smoothing": "1"}, f"smoothing='1', {_RANGE}"),
    ({"smoothing": True}, f"smoothing=True, {_RANGE}"),
    ({"class_flows": [8]}, f"class_flows must be {_COUNTS}"),
    ({"class_flows": [8, -1]}, f"class_flows must be {_COUNTS}"),
    ({"class_flows": [8, 2.5]}, f"class_flows must be {_COUNTS}"),
    ({"class_flows": [0, 0], "ports": {}}, "class_flows are all 0"),
    ({"ports": [443]}, "ports must map port numbers to flow counts"),
    ({"ports": {"65536": [1, 0]}}, "port '65536' is not a number from 0 to 65535"),
    ({"ports": {"-1": [1, 0]}}, "port '-1' is not a number from 0 to 65535"),
    ({"ports": {"0443": [1, 0]}}, "port '0443' is not a number from 0 to 65535"),
    ({"ports": {"\u0664\u0664\u0663": [1, 0]}}, "port '\u0664\u0664\u0663' is not a number from 0 to 65535"),
    ({"ports": {"1" * 30: [1, 0]}}, "port '" + "1" * 19 + "... is not a number from 0 to 65535"),
    ({"ports": {"443": [1]}}, f"port 443 must have {_COUNTS}"),
    ({"ports": {"443": "many"}}, f"port 443 must have {_COUNTS}"),
    ({"ports": {"443": [3, 1], "22": [6, 0]}}, "the ports have more flows of class 0 than class_flows gives"),
])
def test_metadata_rejects_invalid(edit, problem):
    doc = {**_GOOD, **edit}
    with pytest.raises(ModelError) as e:
        PortPrior.from_dict(doc, 2, "m.tflite")
    assert str(e.value) == f"m.tflite: invalid port_prior in the model metadata: {problem}"


def test_metadata_rejects_non_object():
    with pytest.raises(ModelError, match="expected an object"):
        PortPrior.from_dict([1, 2], 2, "m.tflite")


def test_window_ports_match_flow_table():
    """The port read from a window is the server port the flow table found for its flow,
    for windows built by the runner's code from a real capture."""
    from edge_etc.convert import dataset

    settings = Preprocessing()
    per_flow, _ = dataset.capture_windows(case("eth_tls_2flows.pcap"), settings)
    assert per_flow
    for flow, windows in per_flow:
        rows = np.frombuffer(b"".join(windows), dtype=np.uint8).reshape(len(windows), -1)
        assert window_server_ports(rows, settings).tolist() == [flow.server_port] * len(windows)
        shaped = rows.reshape(len(windows), settings.window_packets, settings.vector_bytes)
        assert window_server_ports(shaped, settings).tolist() == [flow.server_port] * len(windows)


def test_bundled_model_has_prior():
    from edge_etc.model import default_model_path, load_model_info

    model = load_model_info(default_model_path())
    assert model.port_prior is not None
    assert 443 in model.port_prior.ports
    assert len(model.port_prior.class_flows) == len(model.labels)
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)["port_prior"]
    assert shown == {"ports": len(model.port_prior.ports), "smoothing": model.port_prior.smoothing}


def test_classifier_applies_prior():
    """`Classifier.predict` returns the networks' mean with the model's prior applied, and
    the mean alone with port_prior=False."""
    from edge_etc.convert import dataset
    from edge_etc.infer import Classifier
    from edge_etc.model import default_model_path, load_model_info

    model = load_model_info(default_model_path())
    classifier = Classifier(model, batch_size=4)
    per_flow, _ = dataset.capture_windows(case("eth_tls_2flows.pcap"), model.preprocessing)
    windows = [w for _, ws in per_flow for w in ws]
    rows = np.frombuffer(b"".join(windows), dtype=np.uint8).reshape(len(windows), -1)
    networks = classifier.predict(windows, port_prior=False)
    decided = classifier.predict(windows)
    ports = window_server_ports(rows, model.preprocessing)
    assert set(ports.tolist()) == {443}
    np.testing.assert_allclose(decided, model.port_prior.apply(networks, ports), rtol=1e-6)
    assert not np.allclose(decided, networks)


class _Windows:
    """The parts of dataset.Windows that the prior's training-side helpers read."""

    def __init__(self, settings, rows):
        # rows: (capture, flow, class or -1, server port) per window
        self.settings = settings
        self.classes = ["a", "b", "c"]
        self.capture = np.array([r[0] for r in rows])
        self.flow = np.array([r[1] for r in rows])
        self.y = np.array([r[2] for r in rows])
        self.flow_label = np.full(self.flow.max() + 1, -1)
        self.flow_label[self.flow] = self.y
        self.x = np.zeros((len(rows), settings.window_packets, settings.vector_bytes), np.uint8)
        offset = settings.header_bytes + 5
        for i, (_, _, _, port) in enumerate(rows):
            self.x[i, 0, offset:offset + 2] = divmod(port, 256)

    def select(self, captures):
        return np.isin(self.capture, list(captures))


_ROWS = [(0, 0, 0, 443), (0, 0, 0, 443), (0, 1, 1, 22), (1, 2, 2, 5222),
         (2, 3, 2, 5222), (2, 4, -1, 53)]


def test_training_prior_counts_labelled_flows():
    """Each labelled flow counts once, on the port its window carries; background flows
    do not count."""
    from edge_etc.convert.train import port_prior_of

    prior = port_prior_of(_Windows(Preprocessing(), _ROWS), [0, 1, 2])
    assert prior.to_dict()["class_flows"] == [1, 1, 2]
    assert prior.to_dict()["ports"] == {"22": [0, 1, 0], "443": [1, 0, 0], "5222": [0, 0, 2]}
    assert port_prior_of(_Windows(Preprocessing(server_port=False, port_buckets=0), _ROWS),
                         [0, 1, 2]) is None


def test_held_out_prior_leaves_own_capture_out():
    """For the unknown threshold, each validation capture is scored with the prior of the
    other captures."""
    from edge_etc.convert.train import apply_held_out_port_prior

    data = _Windows(Preprocessing(), _ROWS)
    probs = np.full((len(_ROWS), 3), 1 / 3, dtype=np.float32)
    mask = np.ones(len(_ROWS), bool)
    out = apply_held_out_port_prior(probs, data, mask, [0, 1, 2])
    # Capture 0's ports appear in no other capture: its windows are unchanged.
    np.testing.assert_array_equal(out[:3], probs[:3])
    # Without its own capture, each of captures 1 and 2 leaves flows a, b and c of the
    # other two captures, with one class-c flow on port 5222.
    others = PortPrior([1, 1, 1], {443: [1, 0, 0], 22: [0, 1, 0], 5222: [0, 0, 1]})
    expected = others.apply(probs[3:5], np.array([5222, 5222]))
    np.testing.assert_allclose(out[3:5], expected, rtol=1e-6)
    assert out[3].argmax() == out[4].argmax() == 2
    # The background flow's port 53 is in no prior.
    np.testing.assert_array_equal(out[5], probs[5])
