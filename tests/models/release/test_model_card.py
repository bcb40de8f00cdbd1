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


def _cand(name: str, source: str, variant: str) -> dict:
    row = cand(name)
    row.update(source=source, variant=variant, runtime="onnxruntime")
    row["bench"]["settings"][0].update(p50_ci_low_ms=1.9, p50_ci_high_ms=2.1, throughput_eps=500.0)
    return row


def test_a_teacher_card_names_no_student_and_the_approval_line_follows_the_decision():
    from slimflow.models.release.model_card import model_card, with_approval

    row = _cand("teacher/onnx_fp32/cpu", "teacher", "onnx_fp32")
    v = judge(row, GatesConfig(max_p95_ms=5.0), 0.85)
    ctx = {"teacher_accuracy": 0.85, "student": {"kind": "layer_drop", "keep_layers": [0, 2, 4]},
           "steps": ["prune_heads", "prune_ffn"]}  # fmt: skip
    card = model_card(row, v, ctx)
    assert "Student" not in card and "Compression steps" not in card and "{" not in card
    assert "- awaiting the promotion decision" in card
    auto = with_approval(card, {"decision": "auto", "reviewer": "", "time": "2026-12-02T06:00:00Z",
                                "comment": "approval.required is false"})  # fmt: skip
    assert "promoted without review at 2026-12-02T06:00:00Z" in auto and "awaiting" not in auto
    assert auto.endswith(card[card.index("\nPipeline run") :])  # the rest of the card unchanged
    rejected = with_approval(auto, {"decision": "rejected", "reviewer": "bo", "time": "t", "comment": "no"})
    assert "- rejected by **bo** at t: no" in rejected and "without review" not in rejected

    row2 = _cand("compressed/ort_int8_dynamic/cpu", "compressed", "ort_int8_dynamic")
    card2 = model_card(row2, judge(row2, GatesConfig(max_p95_ms=5.0), 0.85), ctx)
    assert "- **Student**: kind layer_drop, keep_layers [0, 2, 4]" in card2
    assert "- **Compression steps**: prune_heads → prune_ffn" in card2
