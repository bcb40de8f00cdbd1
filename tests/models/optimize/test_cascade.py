"""Confidence cascades: the threshold is chosen on validation rows only, threshold 1.0 is the
fallback and 0.0 the fast part, the cascade candidate loads, predicts and benchmarks like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimflow.models.optimize.cascade import (
    CascadePredictor,
    ThresholdChoice,
    build_cascade,
    choose_threshold,
    confidence,
    fit_threshold,
)
from slimflow.models.optimize.predictors import describe, load_predictor


def _choice(threshold: float) -> ThresholdChoice:
    return ThresholdChoice(threshold, "max_prob", 0.0, 0.0, 0.0, 0.0, 0.0, 0)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_model_dir):
    """Two tiny classifiers of the same task as torch candidates: a weak one (1 epoch) to be the
    fast part, a stronger one (3 epochs) to be the fallback; and the prepared splits."""
    from slimflow.models.optimize.candidates import CandidateSpec, fp32_candidate
    from tests.conftest import train_tiny_teacher

    tmp = tmp_path_factory.mktemp("cascade")
    for sub in ("strong", "weak"):
        (tmp / sub).mkdir()
    prepared, strong = train_tiny_teacher(tmp / "strong", tiny_model_dir, rows=240, epochs=3)
    _, weak = train_tiny_teacher(tmp / "weak", tiny_model_dir, rows=240, epochs=1, learning_rate=5e-4)
    out = {}
    for name, res in (("fast", weak), ("fallback", strong)):
        folder = tmp / f"cand-{name}"
        folder.mkdir()
        spec = CandidateSpec("teacher", f"torch_fp32_{name}", "cpu", "torch")
        fp32_candidate(Path(res.model_dir), spec, folder, describe(res.model_dir))
        out[name] = folder
    frames = {s: pd.read_parquet(prepared.path(s)) for s in ("validation", "test")}
    return out["fast"], out["fallback"], frames


def test_threshold_one_is_the_fallback_and_zero_the_fast_part(parts, tmp_path: Path) -> None:
    fast_dir, fb_dir, frames = parts
    texts = frames["test"]["text"].tolist()
    fast, fb = load_predictor(fast_dir, 1), load_predictor(fb_dir, 1)
    want_fast, want_fb = fast.predict(texts), fb.predict(texts)
    assert (want_fast.argmax(1) != want_fb.argmax(1)).any() or not np.allclose(want_fast, want_fb)
    for threshold, want in ((1.0, want_fb), (0.0, want_fast)):
        folder = build_cascade(fast_dir, fb_dir, tmp_path / f"c{threshold}", _choice(threshold))
        got = load_predictor(folder, 1)
        assert isinstance(got, CascadePredictor) and describe(folder).runtime == "cascade"
        np.testing.assert_allclose(got.predict(texts), want, atol=1e-5)
        assert got.file_bytes == fast.file_bytes + fb.file_bytes


def test_a_middle_threshold_routes_each_row_by_the_fast_parts_confidence(parts, tmp_path: Path) -> None:
    fast_dir, fb_dir, frames = parts
    texts = frames["test"]["text"].tolist()[:40]
    fast, fb = load_predictor(fast_dir, 1), load_predictor(fb_dir, 1)
    conf = confidence(fast.predict(texts), "max_prob")
    threshold = float(np.median(conf))
    cascade = load_predictor(build_cascade(fast_dir, fb_dir, tmp_path / "mid", _choice(threshold)), 1)
    for i, text in enumerate(texts):
        logits, esc = cascade.route(cascade.encode([text]))
        assert bool(esc[0]) == (conf[i] < threshold)
        want = (fb if esc[0] else fast).predict([text])
        np.testing.assert_allclose(logits, want, atol=1e-5)


def test_the_threshold_is_chosen_on_validation_rows_only(parts) -> None:
    fast_dir, fb_dir, frames = parts
    seen: list[str] = []

    class Spy:
        def __init__(self, p):
            self.p, self.info = p, p.info

        def predict(self, texts, batch_size=64):
            seen.extend(texts)
            return self.p.predict(texts, batch_size)

    fast, fb = Spy(load_predictor(fast_dir, 1)), Spy(load_predictor(fb_dir, 1))
    choice = fit_threshold(fast, fb, frames["validation"], "max_prob", 0.002)
    assert set(seen) <= set(frames["validation"]["text"]) and not set(seen) & set(frames["test"]["text"])
    assert choice.rows == len(frames["validation"])
    assert choice.accuracy >= choice.fallback_accuracy - 0.002 - 1e-12
    assert 0.0 <= choice.escalation_rate <= 1.0 and choice.target_accuracy == pytest.approx(
        choice.fallback_accuracy - 0.002
    )


def test_choose_threshold_takes_the_least_escalation_that_keeps_the_target() -> None:
    # rows 0-3: the fast part is sure and right; 4-5: unsure and wrong; the fallback is always right
    fast = np.array([[4.0, 0], [0, 4.0], [4.0, 0], [0, 4.0], [0.2, 0], [0, 0.1]])
    gold = np.array([0, 1, 0, 1, 1, 0])
    fb = np.eye(2)[gold] * 3.0
    c = choose_threshold(fast, fb, gold, "max_prob", 0.0)
    assert c.escalation_rate == pytest.approx(2 / 6) and c.accuracy == 1.0
    assert confidence(fast[4:], "max_prob").max() < c.threshold <= confidence(fast[:4], "max_prob").min()
    # a looser target keeps every row on the fast part; margin confidence agrees here
    assert choose_threshold(fast, fb, gold, "max_prob", 1.0).escalation_rate == 0.0
    assert choose_threshold(fast, fb, gold, "margin", 0.0).escalation_rate == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        choose_threshold(fast, fb[:3], gold)


def test_parts_that_predict_different_labels_are_refused(parts, tmp_path: Path) -> None:
    import json
    import shutil

    fast_dir, fb_dir, _ = parts
    other = tmp_path / "other"
    shutil.copytree(fb_dir, other)
    info = json.loads((other / "candidate.json").read_text())
    info["labels"] = list(reversed(info["labels"]))
    (other / "candidate.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="same labels in the same order"):
        build_cascade(fast_dir, other, tmp_path / "bad", _choice(0.5))


def test_a_cascade_is_benchmarked_like_any_candidate(parts, tmp_path: Path) -> None:
    from slimflow.models.optimize.bench import bench_model
    from slimflow.models.optimize.config import BenchConfig

    fast_dir, fb_dir, frames = parts
    folder = build_cascade(fast_dir, fb_dir, tmp_path / "b", _choice(0.9))
    fast_bench = {"warmup": 2, "iterations": 12, "min_iterations": 5, "time_budget_s": None, "bootstrap": 200}
    cfg = BenchConfig(
        batch_sizes=[1], lengths=["data"], threads=1, isolate=False, pin_cores=False, **fast_bench
    )
    res = bench_model(folder, frames["test"]["text"].tolist(), cfg)
    s = res["settings"][0]
    assert res["runtime"] == "cascade" and s["p50_ms"] > 0 and s["mean_tokens"] > 0


def test_the_server_says_which_part_answered_each_text(parts, tmp_path: Path) -> None:
    import asyncio

    import httpx

    from slimflow.models.release.config import ServeConfig
    from slimflow.models.release.serving import _Served, create_app

    fast_dir, fb_dir, frames = parts
    texts = frames["test"]["text"].tolist()[:24]
    fast = load_predictor(fast_dir, 1)
    threshold = float(np.median(confidence(fast.predict(texts), "max_prob")))
    folder = build_cascade(fast_dir, fb_dir, tmp_path / "served", _choice(threshold))
    model = _Served(str(folder))
    app = create_app(model, str(folder), None, ServeConfig(batching=False))

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/predict", json={"texts": texts})

    r = asyncio.run(post())
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    cascade = load_predictor(folder, 1)
    logits, parts_used = cascade.predict_routed(texts)
    assert [p["answered_by"] for p in preds] == parts_used and {"fast", "fallback"} == set(parts_used)
    assert [p["label"] for p in preds] == [cascade.info.labels[i] for i in logits.argmax(1)]
