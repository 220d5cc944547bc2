"""Training side: a tiny train, convert and run round trip on the corpus, and the
converter's handling of models it must unroll or reject. Needs the training extra."""

import json
import os

import numpy as np
import pytest

from conftest import case, flows_in, run_cli

tf = pytest.importorskip("tensorflow", reason="needs the training extra (pip install 'edge-etc[train]')")
pytestmark = pytest.mark.train


def test_train_convert_run(corpus, tmp_path):
    out = tmp_path / "model"
    env = dict(os.environ, EDGE_ETC_CORPUS=corpus)
    r = run_cli("train", "-o", str(out), "--epochs", "2", "--limit-captures", "30", "-q", env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "macro-F1" in r.stdout
    # TensorFlow prints these notes while it loads, whatever TF_CPP_MIN_LOG_LEVEL is set to.
    assert "absl::InitializeLog" not in r.stderr, r.stderr
    assert "oneDNN" not in r.stderr, r.stderr
    meta = json.loads((out / "model.json").read_text())
    assert not set(meta["split"]["train"]) & set(meta["split"]["test"])
    from edge_etc.convert.train import MEMBERS
    assert meta["members"] == MEMBERS  # the default number of trainings averaged in one model
    # The held-out report counts the flows the unknown threshold would reject, and train
    # warns when that is more than half of them.
    under = meta["results"]["flows_under_threshold"]
    assert 0 <= under <= meta["results"]["flows"]["support"]
    report = (out / "report.txt").read_text()
    assert ("held-out flows into unknown" in report) == (under > meta["results"]["flows"]["support"] / 2)
    assert len(meta["port_prior"]["class_flows"]) == len(meta["labels"])

    r = run_cli("convert", str(out / "model.h5"), "--force", "-q", env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "argmax agreement" in r.stdout
    assert "absl::InitializeLog" not in r.stderr, r.stderr
    parity = json.loads((out / "model.tflite.parity.json").read_text())
    assert parity["windows"] > 0
    assert 0 <= parity["mean_probability_difference"] <= parity["max_probability_difference"]
    assert "FULLY_CONNECTED" in parity["operators"]

    r = run_cli("run", "--pcap", case("eth_tls_2flows.pcap"), "--model", str(out / "model.tflite"))
    assert r.returncode == 0, r.stderr
    labels = meta["labels"] + ["unknown"]  # "unknown": under the model's confidence threshold
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert records
    assert all(x["label"] in labels for x in records)


def _members(n, settings):
    """`n` untrained one-member networks of the shape `edge-etc train` builds, each from its
    own seed."""
    import keras

    from convert.model import build_model

    models = []
    for seed in range(n):
        keras.utils.set_random_seed(seed)
        models.append(build_model(settings.window_packets, settings.vector_bytes, 10,
                                  context_bytes=settings.context_bytes))
    return models


def test_combined_members_average_their_outputs():
    """The model of several trained networks outputs the mean of their class probabilities,
    and each member carries its network's weights."""
    from convert.model import member_layers
    from convert.train import combine_members
    from edge_etc.preprocess import Preprocessing

    settings = Preprocessing()
    models = _members(3, settings)
    combined = combine_members(models, settings)
    x = np.random.default_rng(0).random((16, 3, settings.vector_bytes), dtype=np.float32)
    per_member = [m.predict(x, verbose=0) for m in models]
    assert not np.allclose(per_member[0], per_member[1])  # the networks differ
    np.testing.assert_allclose(combined.predict(x, verbose=0), np.mean(per_member, axis=0),
                               rtol=1e-5, atol=1e-6)
    for i, model in enumerate(models):
        layers = member_layers(combined, i)
        np.testing.assert_array_equal(layers["lstm"].get_weights()[0],
                                      model.get_layer("lstm").get_weights()[0])
    assert combine_members(models[:1], settings) is models[0]


def test_average_keeps_network_outputs(tmp_path):
    """An average of networks converts with one block of outputs per network, and the runner
    averages the blocks after dequantizing, so the mean is not rounded to the 1/256 steps of
    an int8 output. A single network keeps one block."""
    from convert.tflite import to_int8
    from convert.train import combine_members
    from edge_etc.infer import dequantize
    from edge_etc.model import load_model_info
    from edge_etc.preprocess import Preprocessing

    settings = Preprocessing()
    models = _members(2, settings)
    combined = combine_members(models, settings)
    rng = np.random.default_rng(2)
    # 200 windows to calibrate with, then one batch of the classifier (256) to compare on.
    windows = rng.integers(0, 256, (456, 3, settings.vector_bytes), dtype=np.uint8)
    labels = [f"class{i}" for i in range(10)]
    tflite, classifier = to_int8(combined, settings, labels, windows[:200])
    path = tmp_path / "average.tflite"
    path.write_bytes(tflite)
    assert load_model_info(str(path)).networks == 2
    assert classifier.networks == 2

    batch = windows[200:200 + classifier.batch_size].reshape(classifier.batch_size, -1)
    mean = classifier.predict(batch)
    raw = classifier.interpreter.get_tensor(classifier._output_index)
    assert raw.shape == (classifier.batch_size, 20)
    blocks = dequantize(raw, classifier.out_scale, classifier.out_zero).reshape(-1, 2, 10)
    np.testing.assert_allclose(mean, blocks.mean(axis=1), rtol=0, atol=1e-7)
    floats = [m.predict(batch.reshape(-1, 3, settings.vector_bytes).astype(np.float32) / 255.0,
                        verbose=0) for m in models]
    for i, p in enumerate(floats):
        # Each block is its own network's output, within int8 rounding.
        np.testing.assert_allclose(blocks[:, i], p, atol=0.03)
    # Means of two blocks fall between the 1/256 steps of a single int8 output.
    steps = mean * 256
    assert np.abs(steps - np.round(steps)).max() > 0.1

    _, single = to_int8(models[0], settings, labels, windows[:200])
    assert single.networks == 1
    assert single.predict(batch).shape == (classifier.batch_size, 10)


@pytest.fixture(scope="module")
def two_network_model():
    """An int8 model of two averaged untrained networks, as `edge-etc convert` writes it."""
    from convert.tflite import to_int8
    from convert.train import combine_members
    from edge_etc.preprocess import Preprocessing

    settings = Preprocessing()
    combined = combine_members(_members(2, settings), settings)
    windows = np.random.default_rng(3).integers(0, 256, (100, 3, settings.vector_bytes), dtype=np.uint8)
    tflite, _ = to_int8(combined, settings, [f"class{i}" for i in range(10)], windows)
    return tflite


_TWENTY = [f"class{i}" for i in range(20)]


def _default_settings():
    from edge_etc.preprocess import Preprocessing

    return Preprocessing().to_dict()


@pytest.mark.parametrize("edit, problem", [
    ({"networks": 3}, "the model's output is 2 joined blocks of 10 values, but its metadata has "
                      "10 labels and networks=3; convert it again with 'edge-etc convert'"),
    ({"networks": None}, "the model's output is 2 joined blocks of 10 values, but its metadata "
                         "has 10 labels and no networks entry (so 1 network); convert it again "
                         "with 'edge-etc convert'"),
    # 20 labels of one network would fill the 20 outputs, but the blocks give the layout away.
    ({"networks": 1, "labels": _TWENTY}, "the model's output is 2 joined blocks of 10 values, but "
                                         "its metadata has 20 labels and networks=1; convert it "
                                         "again with 'edge-etc convert'"),
    ({"networks": 0}, "networks=0 in the model metadata is invalid: expected a whole number from 1 to 1000"),
    ({"networks": "2"}, "networks='2' in the model metadata is invalid: expected a whole number from 1 to 1000"),
    ({"networks": True}, "networks=True in the model metadata is invalid: expected a whole number from 1 to 1000"),
    ({"networks": 10 ** 30}, "networks=" + "1" + "0" * 19 + "... in the model metadata is invalid: "
                             "expected a whole number from 1 to 1000"),
    ({"labels": ["Web"] * 10}, "invalid label list in the model metadata: 'Web' appears more than once"),
    ({"port_prior": {"smoothing": 1.0, "class_flows": [1] * 10, "ports": {"443": [1]}}},
     "invalid port_prior in the model metadata: port 443 must have a list of 10 whole numbers "
     "from 0 to 2**53"),
    ({"port_prior": {"smoothing": 1.0, "class_flows": [1] * 10, "ports": {}},
      "preprocessing": {**_default_settings(), "server_port": False, "port_buckets": 0}},
     "the model has a port_prior, but its preprocessing settings leave the server port out of "
     "the windows (context and server_port must be true)"),
])
def test_run_rejects_inconsistent_metadata(two_network_model, tmp_path, edit, problem):
    """A model whose metadata does not describe its outputs (network count, labels) or
    carries an unusable server port prior is rejected with one line by `run` and `info`,
    not run wrongly."""
    from convert.tflite import add_metadata
    from edge_etc.model import METADATA_NAME, decode_metadata
    from edge_etc.tflite_file import TFLiteModel

    doc = json.loads(TFLiteModel(two_network_model).metadata()[METADATA_NAME])
    assert decode_metadata(json.dumps(doc), "x")[4] == 2
    for key, value in edit.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    path = tmp_path / "model.tflite"
    path.write_bytes(add_metadata(two_network_model, METADATA_NAME, json.dumps(doc).encode()))
    for args in (["run", "--pcap", case("eth_tls_2flows.pcap"), "--model", str(path)], ["info", str(path)]):
        r = run_cli(*args)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if "error" in line]
        assert errors == [f"edge-etc: error: {path}: {problem}"], r.stderr


class _Windows:
    """The parts of dataset.Windows that validation_probabilities reads."""

    def __init__(self, x, capture):
        self.x, self.capture = x, capture

    def select(self, captures):
        return np.isin(self.capture, list(captures))


def test_validation_probabilities_from_held_out_members():
    """Each validation window is scored by the members that did not train on its capture,
    never by the whole model."""
    from convert.train import combine_members, validation_probabilities
    from edge_etc.preprocess import Preprocessing

    settings = Preprocessing()
    models = _members(3, settings)
    combined = combine_members(models, settings)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (12, 3, settings.vector_bytes), dtype=np.uint8)
    capture = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
    data = _Windows(x, capture)
    mask, probs = validation_probabilities(combined, data, [[0], [1], [0, 2]])
    assert mask.tolist() == [c in (0, 1, 2) for c in capture]  # no member holds out capture 3
    own = [m.predict(x[mask].astype(np.float32) / 255.0, verbose=0) for m in models]
    validation_capture = capture[mask]
    from_first = (validation_capture == 0)[:, None]  # held out by members 0 and 2
    from_second = (validation_capture == 1)[:, None]  # held out by member 1 only
    expected = np.where(from_first, (own[0] + own[2]) / 2, np.where(from_second, own[1], own[2]))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def _save(model, path):
    model.save(path)
    return str(path)


def test_convert_rejects_gru_by_name(tmp_path):
    import keras
    inp = keras.Input((3, 64))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GRU(8, name="my_gru")(inp))
    path = _save(keras.Model(inp, out), tmp_path / "gru.h5")
    r = run_cli("convert", path)
    assert r.returncode == 2
    assert "my_gru" in r.stderr
    assert "GRU" in r.stderr
    assert "Traceback" not in r.stderr


def test_convert_unrolls_foreign_lstm(corpus, tmp_path):
    """A CNN-LSTM trained elsewhere, LSTM not unrolled, input (3, 64): converts with the
    default preprocessing for 64 bytes."""
    import keras
    inp = keras.Input((3, 64))
    h = keras.layers.Dense(16, activation="relu")(inp)
    h = keras.layers.LSTM(8, recurrent_dropout=0.1, name="plain_lstm")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    path = _save(keras.Model(inp, out), tmp_path / "foreign.h5")
    r = run_cli("convert", path, "--force", env=dict(os.environ, EDGE_ETC_CORPUS=corpus), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    # --force writes a model under the agreement limit and logs a warning about it.
    parity = json.loads((tmp_path / "foreign.tflite.parity.json").read_text())
    assert ("writing it anyway (--force)" in r.stderr) == (parity["argmax_agreement"] < 0.95)
    info = run_cli("info", str(tmp_path / "foreign.tflite"))
    meta = json.loads(info.stdout)
    assert meta["preprocessing"]["vector_bytes"] == 64
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in meta["operators"]


def test_run_rejects_model_without_settings(tmp_path):
    import keras
    inp = keras.Input((3, 128))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inp))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out))
    path = tmp_path / "bare.tflite"
    path.write_bytes(converter.convert())
    r = run_cli("run", "--pcap", case("eth_tls_2flows.pcap"), "--model", str(path))
    assert r.returncode == 2
    assert "no edge-etc preprocessing settings" in r.stderr


def test_evaluate_ci_preset(corpus, tmp_path):
    out = tmp_path / "evaluation"
    env = dict(os.environ, EDGE_ETC_CORPUS=corpus)
    r = run_cli("evaluate", "--preset", "ci", "-o", str(out), "-q", env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "evaluation.json").read_text())
    names = [row["name"] for row in result["summary"]]
    for expected in ("CNN-LSTM float", "CNN-LSTM int8", "server port only",
                     "statistics (random forest)", "statistics + server port", "one-packet CNN"):
        assert expected in names
    assert (out / "confusion_float.png").stat().st_size > 0
    assert "flow macro-F1" in (out / "evaluation.txt").read_text()
    assert "retracing" not in r.stderr
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["tensorflow"] == tf.__version__
    # The forests' leaf sizes come from the training captures' inner folds, one per fold.
    from edge_etc.convert.evaluate import LEAF_SIZES
    for key in ("stats", "stats_port"):
        assert len(result[key]["min_samples_leaf"]) == result["folds"]
        assert set(result[key]["min_samples_leaf"]) <= set(LEAF_SIZES)
        assert len(result[key]["repeat_macro_f1"]) == result["repeats"]
        # The run decides on one window, so the forests' one-window depth is their main
        # score, and every depth has one score per repeat or average.
        for part in (result[key], result[key]["ensemble"]):
            assert part["depths"]["1"]["repeat_float"] == part["repeat_macro_f1"]
            for depth in part["depths"].values():
                assert len(depth["repeat_float"]) == len(part["repeat_macro_f1"])
    changed = result["cnn_lstm"]["int8_changed"]
    assert [c["flows"] for c in changed] == [r["support"] for r in result["cnn_lstm"]["float"]]
    assert all(0 <= c["changed"] <= c["flows"] for c in changed)

    # Every scored flow is in exactly one of the two application groups.
    for split, overall, key in ((result["cnn_lstm"]["by_application"], result["cnn_lstm"]["overall_float"], "float"),
                                (result["cnn_lstm"]["by_application"], result["cnn_lstm"]["overall_int8"], "int8"),
                                (result["port"]["by_application"], result["port"]["overall"], "port")):
        assert split["seen"][key]["support"] + split["unseen"][key]["support"] == overall["support"]
        confusion = [[a + b for a, b in zip(x, y)]
                     for x, y in zip(split["seen"][key]["confusion"], split["unseen"][key]["confusion"])]
        assert confusion == overall["confusion"]

    # The one-window row of the decision depths is the main decision; the saved window
    # probabilities give it again.
    depths = result["cnn_lstm"]["depths"]
    assert depths["1"]["float"] == [r["macro_f1"] for r in result["cnn_lstm"]["float"]]
    assert depths["1"]["int8"] == [r["macro_f1"] for r in result["cnn_lstm"]["int8"]]
    assert "Windows per flow decision" in (out / "evaluation.txt").read_text()
    saved = np.load(out / "probabilities.npz")
    from edge_etc.convert.metrics import flow_decisions, per_class_report
    folds = result["folds"]
    assert result["repeats"] == 2  # the ci preset trains twice, so the average is scored too
    for i, report in enumerate(result["cnn_lstm"]["int8"]):
        repeat, fold = divmod(i, folds)
        m = (saved["repeat"] == repeat) & (saved["fold"] == fold)
        true, pred, _ = flow_decisions(saved["int8"][m], saved["flow"][m], saved["position"][m],
                                       saved["flow_label"], 1)
        known = true >= 0
        again = per_class_report(true[known], pred[known], list(saved["classes"]))
        assert again["macro_f1"] == report["macro_f1"]
        assert again["confusion"] == report["confusion"]

    # The average of the repeats' networks: one combined model per fold, float and int8. Its
    # float decisions are those of the mean of the repeats' saved network probabilities with
    # the fold's server port prior applied (up to float rounding between one combined model
    # and separate ones: a near tie may flip a flow).
    from edge_etc.port_prior import PortPrior
    assert result["port_prior"] is True
    priors = [PortPrior.from_dict(json.loads(doc), len(saved["classes"]), "test")
              for doc in saved["port_priors"]]
    for name in ("CNN-LSTM float, average of 2", "CNN-LSTM int8, average of 2",
                 "statistics + server port, average of 2", "one-packet CNN, average of 2"):
        assert name in names
    ensemble = result["cnn_lstm"]["ensemble"]
    assert ensemble["members"] == 2
    assert len(ensemble["float"]) == len(ensemble["int8"]) == folds
    for fold, report in enumerate(ensemble["float"]):
        parts = []
        for repeat in range(2):
            m = (saved["repeat"] == repeat) & (saved["fold"] == fold)
            order = np.argsort(saved["window"][m])
            parts.append((saved["float_networks"][m][order], saved["flow"][m][order],
                          saved["position"][m][order], saved["server_port"][m][order]))
        mean = priors[fold].apply((parts[0][0] + parts[1][0]) / 2, parts[0][3])
        true, pred, _ = flow_decisions(mean, parts[0][1], parts[0][2], saved["flow_label"], 1)
        known = true >= 0
        confusion = np.array(per_class_report(true[known], pred[known], list(saved["classes"]))["confusion"])
        assert np.abs(confusion - np.array(report["confusion"])).sum() <= 2
        changed = ensemble["int8_changed"][fold]
        assert changed["flows"] == report["support"]
        assert 0 <= changed["changed"] <= changed["flows"]


def test_evaluate_average_size_groups(corpus, tmp_path):
    """Four repeats with --average-size 2 make two averages of two networks per fold, each
    the mean of its own repeats' probabilities, and the summary row lists both."""
    out = tmp_path / "evaluation"
    env = dict(os.environ, EDGE_ETC_CORPUS=corpus)
    r = run_cli("evaluate", "--preset", "ci", "--repeats", "4", "--average-size", "2",
                "--no-baselines", "--no-int8",
                "-o", str(out), "-q", env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "evaluation.json").read_text())
    ensemble = result["cnn_lstm"]["ensemble"]
    assert ensemble["groups"] == [[0, 1], [2, 3]]
    assert ensemble["members"] == 2
    assert result["average_size"] == 2
    assert "--average-size 2" in result["flags"]
    folds = result["folds"]
    assert len(ensemble["float"]) == 2 * folds
    assert ensemble["repeat"] == [0] * folds + [1] * folds
    row = next(row for row in result["summary"] if row["name"] == "CNN-LSTM float, average of 2")
    assert row["repeat_macro_f1"] == ensemble["repeat_float"]
    assert len(row["repeat_macro_f1"]) == 2
    assert row["macro_f1"] == pytest.approx(sum(row["repeat_macro_f1"]) / 2, abs=1e-4)

    saved = np.load(out / "probabilities.npz")
    from edge_etc.convert.metrics import flow_decisions, per_class_report
    for g, group in enumerate(ensemble["groups"]):
        for fold in range(folds):
            probs, flows, positions = [], None, None
            for repeat in group:
                m = (saved["repeat"] == repeat) & (saved["fold"] == fold)
                order = np.argsort(saved["window"][m])
                probs.append(saved["float"][m][order])
                flows, positions = saved["flow"][m][order], saved["position"][m][order]
            true, pred, _ = flow_decisions(sum(probs) / len(group), flows, positions, saved["flow_label"], 1)
            known = true >= 0
            again = per_class_report(true[known], pred[known], list(saved["classes"]))
            report = ensemble["float"][g * folds + fold]
            # One combined model against two separate ones: a near tie may flip a flow.
            assert np.abs(np.array(again["confusion"]) - np.array(report["confusion"])).sum() <= 2


def test_forest_leaf_ignores_test_captures(corpus):
    """The random forest's leaf size for a fold is chosen on its training captures alone:
    replacing the test captures' features with noise changes nothing."""
    from edge_etc.convert import dataset
    from edge_etc.convert.evaluate import LEAF_SIZES, Evaluation, _stats_features
    from edge_etc.convert.train import settings_from_options

    settings = settings_from_options(vector_bytes=328, port_buckets=0)
    captures = dataset.spread_captures(dataset.read_manifest(corpus), 30)
    ev = Evaluation(corpus, settings, captures, 2, 1, 0, 1, False, int8=False)
    train_idx, test_idx = ev.split(0)
    feats = _stats_features(ev.data.x, settings, with_port=True)
    leaf = ev.choose_leaf(feats, train_idx)
    assert leaf in LEAF_SIZES
    noisy = feats.copy()
    test = ev.data.select(test_idx)
    noisy[test] = np.random.default_rng(1).uniform(0, 65535, size=noisy[test].shape)
    assert ev.choose_leaf(noisy, train_idx) == leaf


def test_application_seen_by_name(corpus):
    """A flow counts as seen when another capture of its application is in training."""
    from edge_etc.convert import dataset
    from edge_etc.convert.evaluate import application_seen

    captures = dataset.read_manifest(corpus)
    by_name = {}
    for i, c in enumerate(captures):
        by_name.setdefault(c.application.lower(), []).append(i)
    shared = next(v for v in by_name.values() if len(v) >= 2)
    single = next(v[0] for v in by_name.values() if len(v) == 1)
    seen = application_seen(captures, [shared[1], single], train_idx=[shared[0]])
    assert seen.tolist() == [True, False]
    assert application_seen(captures, [shared[1]], train_idx=[single]).tolist() == [False]


def test_members_train_convert_run(corpus, tmp_path):
    """`--members 2`: one model file whose int8 form the runner reads like any other."""
    out = tmp_path / "pair"
    env = dict(os.environ, EDGE_ETC_CORPUS=corpus)
    r = run_cli("train", "-o", str(out), "--members", "2", "--epochs", "1", "--limit-captures", "20",
                "-q", env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "model.json").read_text())["members"] == 2
    r = run_cli("convert", str(out / "model.h5"), "--force", "-q", env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    parity = json.loads((out / "model.tflite.parity.json").read_text())
    assert not any("LSTM" in op for op in parity["operators"])  # unrolled: no state kept
    r = run_cli("info", str(out / "model.tflite"))
    assert r.returncode == 0, r.stderr
    r = run_cli("run", "--pcap", case("eth_tls_2flows.pcap"), "--model", str(out / "model.tflite"),
                "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert flows_in(r.stdout) == 2


@pytest.mark.parametrize("command", ["train", "convert"])
def test_missing_corpus_names_variable(command, tmp_path):
    env = dict(os.environ, EDGE_ETC_CORPUS=str(tmp_path / "no-corpus"))
    # An HDF5 signature passes the file check; the corpus is checked before Keras reads it.
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\nnot read: the corpus is checked first")
    args = ["train", "-o", str(tmp_path / "m")] if command == "train" else ["convert", str(tmp_path / "m.h5")]
    r = run_cli(*args, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"edge-etc: error: {tmp_path / 'no-corpus'}: corpus folder not found; give --corpus DIR "
        "or set EDGE_ETC_CORPUS")


def test_train_single_capture_per_class(corpus, tmp_path):
    """Three captures, one per class: nothing can be held out, and the model is still saved."""
    out = tmp_path / "tiny"
    env = dict(os.environ, EDGE_ETC_CORPUS=corpus)
    r = run_cli("train", "-o", str(out), "--epochs", "1", "--limit-captures", "3", "-q", env=env,
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert (out / "model.h5").stat().st_size > 0
    assert "No held-out results" in (out / "report.txt").read_text()


def test_gate_lstm_copy_computes_the_same():
    """The per-gate LSTM that conversion swaps in gives the trained LSTM's outputs."""
    import keras

    from edge_etc.convert.gate_lstm import GateLSTM, gate_lstm_copy

    keras.utils.set_random_seed(3)
    inp = keras.Input((3, 20))
    last = keras.layers.LSTM(12, unroll=True, name="last")(inp)
    sequence = keras.layers.LSTM(5, unroll=True, return_sequences=True, name="sequence")(inp)
    out = keras.layers.Concatenate()([last, keras.layers.Flatten()(sequence)])
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(out))
    # Weights away from their initial values, so every gate matters.
    model.set_weights([w + np.random.default_rng(4).normal(0, 0.3, w.shape) for w in model.get_weights()])
    copy = gate_lstm_copy(model)

    assert isinstance(copy.get_layer("last"), GateLSTM)
    assert type(copy.get_layer("sequence")).__name__ == "LSTM"  # whole sequences stay
    x = np.random.default_rng(5).random((64, 3, 20)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
