"""A cascade candidate in the flow: a distilled student's INT8 build answers first, the teacher's
INT8 build takes what it is unsure of; the threshold is fitted on validation, the cascade scored
and benchmarked on test rows, judged by the gates, registered and answered from the registry. An
early exit cut from the teacher's INT8 build goes the same way (its parts' settings tuned as one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimflow.flows.pipeline import run_pipeline
from slimflow.models.pipeline_config import PipelineConfig
from tests.conftest import make_reviews
from tests.integration.test_search import BENCH

pytestmark = pytest.mark.integration

FAST, FALLBACK = "student/ort_int8_dynamic/cpu", "teacher/ort_int8_dynamic/cpu"
CASCADE = "cascade/student.ort_int8_dynamic_then_teacher.ort_int8_dynamic/cpu"
EARLY_EXIT = "early_exit/teacher.ort_int8_dynamic.exit1/cpu"


def _cfg(tmp_path: Path, data: Path, model: Path) -> PipelineConfig:
    train = {"epochs": 3, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3}
    return PipelineConfig.model_validate(
        {
            "name": "it-cascade",
            "workdir": str(tmp_path / "work"),
            "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                     "labels": ["neg", "pos"], "validation": {"min_per_class": 10}},
            "finetune": {"model": str(model), "method": {"kind": "full"}, "train": train},
            "distill": {"student": {"kind": "layer_drop", "keep_layers": [1]},
                        "train": {**train, "epochs": 1}},
            "optimize": {
                "quantize": [{"kind": "ort_int8_dynamic"}],
                "include_onnx_fp32": False,
                "cascades": [{"fast": FAST, "fallback": FALLBACK, "max_accuracy_drop": 0.0},
                             {"fast": "student/torch_int8/cpu", "fallback": FALLBACK},
                             {"fast": EARLY_EXIT, "fallback": FALLBACK}],  # composites do not nest
                "early_exits": [{"candidate": FALLBACK, "exit_after": 1, "epochs": 5},
                                {"candidate": FAST, "exit_after": 1}],  # the 1-layer student: no exit
                "agreement": {"min_agreement": 0.8},
                "accuracy_bar": {"min_retention": 0.5},
                "bench": {**BENCH, "batch_sizes": [1], "lengths": ["data"]},
            },
            "promote": {"model_name": "clf-cascade", "gates": {"min_retention": 0.5}, "deploy": None},
        }
    )  # fmt: skip


def test_a_cascade_is_fitted_on_validation_measured_judged_and_registered(tmp_path, tiny_model_dir):
    data = tmp_path / "reviews.csv"
    make_reviews(320).to_csv(data, index=False)
    s = run_pipeline(_cfg(tmp_path, data, tiny_model_dir), progress=False)
    assert s["status"] == "completed", s.get("error")
    rows = {r["name"]: r for r in s["search"]["candidates"]}
    assert rows[CASCADE]["status"] == "ok", rows[CASCADE].get("reason")
    c = rows[CASCADE]
    choice = c["build"]["cascade"]
    # fitted on validation: its accuracy there reaches the fallback's (max_accuracy_drop 0)
    assert choice["accuracy"] >= choice["fallback_accuracy"] - 1e-12
    assert choice["rows"] == s["stages"]["validate-data"]["metrics"]["counts_validation"]
    assert 0.0 <= c["test"]["escalation_rate"] <= 1.0 and 0.0 <= c["test"]["accuracy"] <= 1.0
    assert c["bench"]["settings"][0]["p50_ms"] > 0 and c["file_bytes"] == (
        rows[FAST]["file_bytes"] + rows[FALLBACK]["file_bytes"]
    )
    # a cascade naming a part this run did not make is listed as skipped, with the reason
    skipped = {x["name"]: x["reason"] for x in s["search"]["skipped"]}
    unplanned = "cascade/student.torch_int8_then_teacher.ort_int8_dynamic/cpu"
    assert "student/torch_int8/cpu (not planned)" in skipped[unplanned]
    nested = "cascade/early_exit.teacher.ort_int8_dynamic.exit1_then_teacher.ort_int8_dynamic/cpu"
    assert f"{EARLY_EXIT} (itself a cascade or early exit" in skipped[nested]

    # the test split's answers: the cascade's equal the fast part's where it kept the row, else the
    # fallback's (loaded back from the folders the search built)
    from slimflow.models.optimize.predictors import load_predictor

    test = pd.read_parquet(s["stages"]["validate-data"]["outputs"]["data.paths.test"])
    texts = test["text"].tolist()[:40]
    cascade = load_predictor(c["path"], 1)
    fast, fb = load_predictor(rows[FAST]["path"], 1), load_predictor(rows[FALLBACK]["path"], 1)
    for text in texts:
        logits, esc = cascade.route(cascade.encode([text]))
        want = (fb if esc[0] else fast).predict([text])
        np.testing.assert_allclose(logits, want, atol=1e-4)

    # registered (it passes the gates) and answered from the registry like any version
    versions = s["promotion"]["registered"]
    assert CASCADE in versions, s["promotion"]
    from slimflow.models.release.serving import load_registered

    model, _ = load_registered(f"models:/clf-cascade/{versions[CASCADE]}", s["tracking_uri"])
    got = model.predict(pd.DataFrame({"text": texts}))["label"].tolist()
    assert got == [["neg", "pos"][int(i)] for i in cascade.predict(texts).argmax(1)]

    # the early exit: built from the teacher's INT8 build, fitted on validation, scored, benchmarked
    # with its parts' settings tuned (the second part's copied from the first), registered
    e = rows[EARLY_EXIT]
    assert e["status"] == "ok", e.get("reason")
    assert (e["source"], e["variant"], e["runtime"], e["reference"]) == ("teacher", "early_exit", "cascade",
                                                                        FALLBACK)  # fmt: skip
    info = e["build"]["cascade"]
    assert info["exit_after"] == 1 and info["layers"] == 2 and info["rows"] == choice["rows"]
    assert info["parity_max_abs_diff"] < 1e-4 and 0.0 <= e["test"]["escalation_rate"] <= 1.0
    tuning = e["bench"]["runtime_tuning"]
    assert tuning["fallback"]["copied_from"] == "fast" and tuning["."]["tuned"], tuning
    assert EARLY_EXIT in versions, s["promotion"]
    ee = load_predictor(e["path"], 1)
    model, _ = load_registered(f"models:/clf-cascade/{versions[EARLY_EXIT]}", s["tracking_uri"])
    got = model.predict(pd.DataFrame({"text": texts}))["label"].tolist()
    assert got == [["neg", "pos"][int(i)] for i in ee.predict(texts).argmax(1)]
    # an exit needs a layer after it: the 1-layer student's is refused with the reason, nothing else lost
    bad = rows["early_exit/student.ort_int8_dynamic.exit1/cpu"]
    assert bad["status"] == "failed" and "an early exit needs at least 2" in bad["reason"], bad
