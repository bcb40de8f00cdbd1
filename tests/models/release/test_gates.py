"""decide(): the promotion decision, table-driven at, just below and just above every threshold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slimflow.models.release.config import GatesConfig
from slimflow.models.release.gates import decide, judge

EPS = 1e-9


def cand(name="c", acc=0.84, p50=2.0, p95_hi=3.0, mb=10.0, target="cpu", status="ok") -> dict:
    st = {"batch_size": 1, "length": "data", "p50_ms": p50, "p95_ms": p95_hi * 0.9, "p95_ci_high_ms": p95_hi}
    return {"name": name, "status": status, "target": target, "test": {"accuracy": acc},
            "file_bytes": int(mb * 2**20), "bench": {"settings": [st]}}  # fmt: skip


@pytest.mark.parametrize(
    ("gates", "row", "passed"),
    [
        # min_test_accuracy: at, just below, just above
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"acc": 0.80}, True),
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"acc": 0.80 - EPS}, False),
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"acc": 0.80 + EPS}, True),
        # min_retention vs a teacher at 0.85: 0.98 * 0.85 = 0.833
        ({"min_retention": 0.98}, {"acc": 0.833}, True),
        ({"min_retention": 0.98}, {"acc": 0.833 - 1e-6}, False),
        ({"min_retention": 0.98}, {"acc": 0.833 + 1e-6}, True),
        # max_p95_ms judged on the CI's upper bound
        ({"max_p95_ms": 3.0}, {"p95_hi": 3.0}, True),
        ({"max_p95_ms": 3.0}, {"p95_hi": 3.0 + EPS}, False),
        ({"max_p95_ms": 3.0}, {"p95_hi": 3.0 - EPS}, True),
        # max_size_mb
        ({"max_size_mb": 10.0}, {"mb": 10.0}, True),
        ({"max_size_mb": 10.0}, {"mb": 10.001}, False),
        ({"max_size_mb": 10.0}, {"mb": 9.999}, True),
    ],
)
def test_each_gate_at_and_around_its_threshold(gates, row, passed):
    g = GatesConfig(**gates)
    v = judge(cand(**row), g, teacher_accuracy=0.85)
    assert v.passed is passed, [x.describe() for x in v.gates]
    d = decide([cand(**row)], g, 0.85)
    assert (d.winner == "c") is passed


def test_latency_gate_uses_the_upper_confidence_bound_not_the_point_estimate():
    row = cand(p95_hi=3.5)
    row["bench"]["settings"][0]["p95_ms"] = 2.5  # the point estimate alone would pass
    assert not judge(row, GatesConfig(max_p95_ms=3.0), 0.85).passed


def test_latency_gate_fails_when_the_batch_size_was_not_measured():
    v = judge(cand(), GatesConfig(max_p95_ms=100.0, latency_batch_size=32), 0.85)
    assert not v.passed and v.gates[-1].value is None and "missing" in v.gates[-1].describe()


def test_ties_prefer_the_faster_then_the_smaller():
    g = GatesConfig(min_retention=0.9)
    rows = [
        cand("slow", p50=3.0, mb=1.0),
        cand("fast", p50=2.0, mb=20.0),
        cand("fast-small", p50=2.0, mb=5.0),
    ]
    assert decide(rows, g, 0.85).winner == "fast-small"
    rows = [cand("a", p50=2.0, p95_hi=4.0), cand("b", p50=2.0, p95_hi=3.0)]
    assert decide(rows, g, 0.85).winner == "b"


def test_no_winner_names_the_best_effort_and_its_failed_gates():
    g = GatesConfig(min_retention=0.98, max_p95_ms=1.0, max_size_mb=5.0)
    rows = [
        cand("accurate-slow-big", acc=0.85, p95_hi=4.0, mb=20.0),  # fails 2
        cand("fast-small-weak", acc=0.70, p95_hi=0.5, mb=2.0),  # fails 1
    ]
    d = decide(rows, g, 0.85)
    assert d.winner is None and d.best_effort == "fast-small-weak"
    assert d.best_effort_failed == ["min_retention"]
    assert "no candidate passes" in d.reason and "min_retention" in d.reason
    assert d.verdict("accurate-slow-big").failed == ["max_p95_ms", "max_size_mb"]


def test_only_measured_candidates_on_the_target_compete():
    g = GatesConfig(min_retention=0.5, target="cpu")
    rows = [
        cand("gpu-fast", p50=0.1, target="cuda"),
        cand("failed", p50=0.1, status="failed"),
        cand("cpu", p50=5.0),
    ]
    assert decide(rows, g, 0.85).winner == "cpu"
    assert decide([], g, 0.85).reason == "no measured candidate to judge on target cpu"


def test_gates_config_needs_at_least_one_gate():
    with pytest.raises(ValidationError, match="at least one gate"):
        GatesConfig(min_retention=None)


def test_an_unreliable_measurement_neither_passes_nor_fails_a_gate_and_cannot_win():
    fast_but_shaky = cand("shaky", p50=0.5, p95_hi=1.0)
    fast_but_shaky["bench"]["settings"][0].update(
        reliable=False, unreliable_reason="other processes used 60%"
    )
    steady = cand("steady", p50=2.0, p95_hi=3.0)
    g = GatesConfig(max_p95_ms=5.0)
    v = judge(fast_but_shaky, g, 0.84)
    lat = next(r for r in v.gates if r.gate == "max_p95_ms")
    assert not v.passed and lat.unreliable == "other processes used 60%"
    assert "not judged, the measurement is unreliable (other processes used 60%)" in lat.describe()
    d = decide([fast_but_shaky, steady], g, 0.84)
    assert d.winner == "steady" and "unreliable latency measurements (not judged on speed): shaky" in d.reason
    # without a latency gate it passes the gates (it is registered) but ranks after every trusted speed
    d = decide([fast_but_shaky, steady], GatesConfig(min_retention=0.9), 0.84)
    assert d.winner == "steady" and d.verdict("shaky").passed
    d = decide([fast_but_shaky], GatesConfig(min_retention=0.9), 0.84)
    assert d.winner == "shaky" and "not judged on speed" in d.reason  # the only one: it wins, said so
    d = decide([fast_but_shaky], g, 0.84)
    assert d.winner is None and "not judged" in d.reason


def gen(name="g", em=0.80, ppl=10.0, rate_lo=100.0, ttft_hi=80.0, mb=200.0) -> dict:
    """A generative candidate row: decode rate and TTFT with their CIs, as the generation benchmark."""
    st = {"batch_size": 1, "length": "data", "p50_ms": 1e3 / (rate_lo * 1.02), "p95_ci_high_ms": 12.0,
          "decode_tokens_per_s": rate_lo * 1.02, "decode_tokens_per_s_ci": [rate_lo, rate_lo * 1.05],
          "ttft_p50_ms": ttft_hi * 0.8, "ttft_p95_ci_ms": [ttft_hi * 0.9, ttft_hi]}  # fmt: skip
    return {"name": name, "status": "ok", "target": "cpu", "test": {"exact_match": em, "perplexity": ppl},
            "file_bytes": int(mb * 2**20), "bench": {"settings": [st]}}  # fmt: skip


REF = {"exact_match": 0.80, "perplexity": 10.0}


@pytest.mark.parametrize(
    ("gates", "row", "passed"),
    [
        # perplexity ratio vs the fine-tuned FP32 model (10.0): at, just above, below
        ({"max_perplexity_ratio": 1.15}, {"ppl": 11.5}, True),
        ({"max_perplexity_ratio": 1.15}, {"ppl": 11.5 + 1e-6}, False),
        ({"max_perplexity_ratio": 1.15}, {"ppl": 10.2}, True),
        # decode rate judged on the lower end of its CI
        ({"min_decode_tokens_per_s": 100.0}, {"rate_lo": 100.0}, True),
        ({"min_decode_tokens_per_s": 100.0}, {"rate_lo": 100.0 - 1e-6}, False),
        # time to first token judged on the upper end of its p95's CI
        ({"max_ttft_ms": 80.0}, {"ttft_hi": 80.0}, True),
        ({"max_ttft_ms": 80.0}, {"ttft_hi": 80.0 + 1e-6}, False),
        # the task metric: exact match, and retention of the teacher's
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"em": 0.80}, True),
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"em": 0.80 - 1e-6}, False),
        ({"min_retention": 0.99}, {"em": 0.792}, True),
        ({"min_retention": 0.99}, {"em": 0.79}, False),
        ({"max_size_mb": 100.0, "min_retention": None}, {"mb": 100.5}, False),
    ],
)
def test_generative_gates_at_and_around_their_thresholds(gates, row, passed):
    g = GatesConfig(**gates)
    v = judge(gen(**row), g, 0.80, "exact_match", REF)
    assert v.passed is passed, [x.describe() for x in v.gates]
    assert (decide([gen(**row)], g, 0.80, "exact_match", REF).winner == "g") is passed


def test_the_score_gate_is_named_after_the_family_metric():
    v = judge(gen(), GatesConfig(min_test_accuracy=0.5, min_retention=None), 0.80, "exact_match", REF)
    assert [x.gate for x in v.gates] == ["min_test_exact_match"]


def test_a_figure_a_gate_needs_but_lacks_fails_it_and_never_passes():
    g = GatesConfig(
        max_perplexity_ratio=1.15, min_decode_tokens_per_s=1.0, max_ttft_ms=1e6, min_retention=None
    )
    no_ref = judge(gen(), g, 0.80, "exact_match", reference={})
    assert not no_ref.passed and no_ref.failed == ["max_perplexity_ratio"]
    row = gen()
    row["bench"]["settings"][0]["batch_size"] = 4  # the gated batch size (1) was not measured
    v = judge(row, g, 0.80, "exact_match", REF)
    assert v.failed == ["min_decode_tokens_per_s", "max_ttft_ms"]


def test_an_unreliable_generation_benchmark_is_not_judged_on_speed():
    row = gen()
    row["bench"]["settings"][0].update(reliable=False, unreliable_reason="others used 50% of the CPU")
    v = judge(row, GatesConfig(min_decode_tokens_per_s=1.0, min_retention=None), 0.80, "exact_match", REF)
    assert not v.passed and "not judged" in v.gates[0].describe()


def test_the_fastest_generator_that_passes_wins():
    g = GatesConfig(max_perplexity_ratio=1.15, min_retention=0.98)
    rows = [
        gen("int4", em=0.76, ppl=11.0, rate_lo=160.0),  # fast, loses exact match
        gen("int8", em=0.80, ppl=10.3, rate_lo=115.0),
        gen("fp32", em=0.80, ppl=10.0, rate_lo=45.0),
    ]
    d = decide(rows, g, 0.80, "exact_match", REF)
    assert d.winner == "int8" and d.verdict("int4").failed == ["min_retention"]
