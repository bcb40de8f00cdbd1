"""Early exit as a candidate: a built INT8 graph cut after an intermediate layer with an exit head;
the threshold is chosen on validation rows only, threshold 1.0 is the whole model and 0.0 the exit
head, each text takes the route its exit confidence says, and other graphs are refused clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slimflow.models.optimize import early_exit as E
from slimflow.models.optimize.cascade import CASCADE_FILE, choose_threshold, confidence
from slimflow.models.optimize.predictors import OrtPredictor, describe, load_predictor
from slimflow.models.optimize.quantizers import apply_quantizer
from slimflow.models.optimize.quantizers.ort_int8_dynamic import OrtDynamicInt8Config
from tests.conftest import make_reviews
from tests.models.optimize.test_export import ctx, exported, trained  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def source(exported, trained, tmp_path_factory):  # noqa: F811
    """The tiny 2-layer classifier's dynamic INT8 build, as a candidate folder."""
    out, _ = exported
    cand = tmp_path_factory.mktemp("ee-source")
    apply_quantizer(OrtDynamicInt8Config(), ctx(out, trained), cand)
    for f in out.iterdir():  # tokenizer and labels beside the graph, as in a candidate folder
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy(f, cand / f.name)
    return cand


@pytest.fixture(scope="module")
def splits():
    frame = make_reviews(400, seed=3).rename(columns={"review": "text", "sentiment": "label"})
    return (
        frame.iloc[:280],
        frame.iloc[280:340].reset_index(drop=True),
        frame.iloc[340:].reset_index(drop=True),
    )


@pytest.fixture(scope="module")
def built(source, splits, tmp_path_factory):
    train, validation, test = splits
    seen: list[str] = []
    original = OrtPredictor.encode

    def spy(self, texts, length=None):
        seen.extend(texts)
        return original(self, texts, length)

    OrtPredictor.encode = spy  # every text the build tokenizes
    try:
        folder = tmp_path_factory.mktemp("ee") / "cand"
        made = E.build_early_exit(source, folder, 1, train, validation, epochs=5, threads=1, name="ee")
    finally:
        OrtPredictor.encode = original
    return folder, made, seen


def _with_threshold(folder: Path, threshold: float, out: Path) -> Path:
    shutil.copytree(folder, out)
    spec = json.loads((out / CASCADE_FILE).read_text())
    (out / CASCADE_FILE).write_text(json.dumps({**spec, "threshold": threshold}))
    return out


def test_the_threshold_is_chosen_on_validation_rows_only(built, splits):
    folder, made, seen = built
    train, validation, test = splits
    assert not set(seen) & (set(test["text"]) - set(train["text"]) - set(validation["text"]))
    assert set(validation["text"]) <= set(seen) and made.choice.rows == len(validation) == 60
    # the recorded choice is the cascade rule on the exit head's and the whole model's validation logits
    ee, whole = load_predictor(folder, 1), load_predictor(E.read_source(folder), 1)
    gold = np.array([ee.info.labels.index(y) for y in validation["label"]])
    exit_logits = np.concatenate([ee.fast.logits(ee.encode([t])) for t in validation["text"]])
    whole_logits = np.concatenate([whole.logits(whole.encode([t])) for t in validation["text"]])
    want = choose_threshold(exit_logits, whole_logits, gold, "max_prob", 0.002)
    assert made.choice == want
    assert made.exit_after == 1 and made.layers == 2 and made.parity_max_abs_diff < 1e-4
    assert made.head["train_rows"] == 280 and 0.0 <= made.head["validation_accuracy"] <= 1.0


def test_threshold_one_is_the_whole_model_and_zero_the_exit_head(built, source, splits, tmp_path):
    folder, _, _ = built
    texts = splits[2]["text"].tolist()[:30]
    whole = load_predictor(source, 1)
    for threshold in (1.0, 0.0):
        cand = load_predictor(_with_threshold(folder, threshold, tmp_path / f"t{threshold}"), 1)
        assert isinstance(cand, E.EarlyExitPredictor) and describe(cand.folder).variant == "early_exit"
        for t in texts:  # one text per call: dynamic INT8 scales activations per call
            logits, esc = cand.route(cand.encode([t]))
            exit_logits = cand.fast.outputs(cand.encode([t]))[0]
            want = whole.logits(whole.encode([t])) if threshold == 1.0 else exit_logits
            assert bool(esc[0]) == (threshold == 1.0)
            np.testing.assert_allclose(logits, want, atol=1e-4)
    # the two parts hold the whole graph once: no layer is stored twice
    parts = sum(f.stat().st_size for f in folder.rglob("*.onnx"))
    assert parts < 1.2 * (source / "model.onnx").stat().st_size


def test_each_text_takes_the_route_its_exit_confidence_says(built, source, splits, tmp_path):
    folder, _, _ = built
    texts = splits[2]["text"].tolist()[:40]
    first = load_predictor(folder, 1)
    conf = np.array([confidence(first.fast.logits(first.encode([t])), "max_prob")[0] for t in texts])
    threshold = float(np.median(conf))  # half the texts go on
    cand, whole = (
        load_predictor(_with_threshold(folder, threshold, tmp_path / "mid"), 1),
        load_predictor(source, 1),
    )
    routed = {"fast": 0, "fallback": 0}
    for t, c in zip(texts, conf, strict=True):
        exit_logits = cand.fast.outputs(cand.encode([t]))[0]
        logits, esc = cand.route(cand.encode([t]))
        assert bool(esc[0]) == (c < threshold)
        want = whole.logits(whole.encode([t])) if esc[0] else exit_logits
        np.testing.assert_allclose(logits, want, atol=1e-4)
        routed["fallback" if esc[0] else "fast"] += 1
    assert routed["fast"] >= 15 and routed["fallback"] >= 15
    logits, parts = cand.predict_routed(texts, batch_size=1)
    assert {"fast": parts.count("fast"), "fallback": parts.count("fallback")} == routed


def test_other_graphs_and_layers_are_refused_by_name(exported, source, splits, tmp_path):  # noqa: F811
    train, validation, _ = splits
    with pytest.raises(ValueError, match=r"2 encoder layer\(s\); an exit goes after 1..1 of them"):
        E.build_early_exit(source, tmp_path / "a", 2, train, validation, epochs=1, threads=1)
    out, _ = exported
    unfused = tmp_path / "unfused"
    shutil.copytree(source, unfused)
    shutil.copy(out / "unfused" / "model.onnx", unfused / "model.onnx")
    with pytest.raises(ValueError, match="not a fused BERT-style encoder graph"):
        E.build_early_exit(unfused, tmp_path / "b", 1, train, validation, epochs=1, threads=1)
    bad = validation.assign(label="maybe")
    with pytest.raises(ValueError, match=r"labels \['maybe'\] of the data are not among"):
        E.build_early_exit(source, tmp_path / "c", 1, train, bad, epochs=1, threads=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_head_learns_from_a_seeded_sample_when_the_training_split_is_larger(source, splits, tmp_path):
    train, validation, _ = splits
    made = E.build_early_exit(source, tmp_path / "s", 1, train, validation, epochs=1, threads=1,
                              max_train_examples=100)  # fmt: skip
    again = E.build_early_exit(source, tmp_path / "t", 1, train, validation, epochs=1, threads=1,
                               max_train_examples=100)  # fmt: skip
    assert made.head["train_rows"] == 100 and made.choice.rows == len(validation)
    assert made.choice == again.choice and made.head == again.head  # same sample, same head
