"""Promotion gates and the decision: a pure function of the measured candidates and the gates.

``decide(candidates, gates, teacher_accuracy, metric, reference)`` says, for every measured
candidate, which gates it passes (with the measured value and the threshold), which candidate
wins (the fastest passing one, ties broken by size), and, when none passes, the best-effort
candidate and the gates it failed.
No I/O here: the registry writes are in ``registry.py``, called by the promotion tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from slimflow.models.release.config import GatesConfig


@dataclass
class GateResult:
    gate: str
    value: float | None
    threshold: float
    passed: bool
    unreliable: str = ""  # why the figure cannot be judged (then the gate neither passes nor fails)

    def describe(self) -> str:
        if self.unreliable:
            return f"{self.gate}: not judged, the measurement is unreliable ({self.unreliable})"
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        op = ">=" if self.gate.startswith("min_") else "<="
        return f"{self.gate}: {shown} {op} {self.threshold:.4g} {'ok' if self.passed else 'FAILED'}"


@dataclass
class Verdict:
    name: str
    passed: bool
    gates: list[GateResult]
    p95_upper_ms: float | None
    p50_ms: float | None
    size_mb: float
    unreliable: str = ""  # why its latency at the gated batch size cannot be trusted, if so

    @property
    def failed(self) -> list[str]:
        return [g.gate for g in self.gates if not g.passed]


@dataclass
class Decision:
    winner: str | None
    reason: str
    verdicts: list[Verdict] = field(default_factory=list)
    best_effort: str | None = None
    best_effort_failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self, name: str) -> Verdict:
        return next(v for v in self.verdicts if v.name == name)


def _setting(row: dict[str, Any], batch: int) -> tuple[dict[str, Any] | None, str]:
    """The benchmark setting at ``batch`` on test-data lengths and, if unreliable, why."""
    for s in (row.get("bench") or {}).get("settings", []):
        if s["batch_size"] == batch and s["length"] == "data":
            why = "" if s.get("reliable", True) else (s.get("unreliable_reason") or "unreliable")
            return s, why
    return None, ""


def _bound(setting: dict[str, Any] | None, key: str, end: int) -> float | None:
    """One end (0 low, 1 high) of a figure's confidence interval, e.g. ``ttft_p95_ci_ms``."""
    ci = (setting or {}).get(key)
    return float(ci[end]) if ci else None


def judge(
    row: dict[str, Any],
    gates: GatesConfig,
    teacher_accuracy: float,
    metric: str = "accuracy",
    reference: dict[str, Any] | None = None,
) -> Verdict:
    """Every configured gate for one measured candidate (a row of the candidate search).

    ``metric`` is the task family's primary figure in ``row["test"]`` (accuracy, exact match) and
    ``teacher_accuracy`` the fine-tuned teacher's value of it; ``reference`` is the teacher's whole
    set of test figures (its perplexity for ``max_perplexity_ratio``). A figure a gate needs but the
    row lacks fails that gate ("missing"), never passes it."""
    score = row["test"][metric]
    setting, unreliable = _setting(row, gates.latency_batch_size)
    p95_hi = setting["p95_ci_high_ms"] if setting else None
    p50 = setting["p50_ms"] if setting else None
    size = row["file_bytes"] / 2**20
    results = []

    def at_most(gate: str, value: float | None, limit: float, shaky: str = "") -> None:
        ok = not shaky and value is not None and value <= limit
        results.append(GateResult(gate, value, limit, ok, shaky))

    def at_least(gate: str, value: float | None, limit: float, shaky: str = "") -> None:
        ok = not shaky and value is not None and value >= limit
        results.append(GateResult(gate, value, limit, ok, shaky))

    if gates.min_test_accuracy is not None:
        at_least(f"min_test_{metric}", score, gates.min_test_accuracy)
    if gates.min_retention is not None:
        at_least(
            "min_retention", score / teacher_accuracy if teacher_accuracy > 0 else 0.0, gates.min_retention
        )
    if gates.max_perplexity_ratio is not None:
        ppl, ref = row["test"].get("perplexity"), (reference or {}).get("perplexity")
        ratio = float(ppl) / float(ref) if ppl is not None and ref else None
        at_most("max_perplexity_ratio", ratio, gates.max_perplexity_ratio)
    if gates.max_p95_ms is not None:
        at_most("max_p95_ms", p95_hi, gates.max_p95_ms, unreliable)
    if gates.min_decode_tokens_per_s is not None:
        rate = _bound(setting, "decode_tokens_per_s_ci", 0)
        at_least("min_decode_tokens_per_s", rate, gates.min_decode_tokens_per_s, unreliable)
    if gates.max_ttft_ms is not None:
        at_most("max_ttft_ms", _bound(setting, "ttft_p95_ci_ms", 1), gates.max_ttft_ms, unreliable)
    if gates.max_size_mb is not None:
        at_most("max_size_mb", size, gates.max_size_mb)
    return Verdict(row["name"], all(g.passed for g in results), results, p95_hi, p50, size, unreliable)


def decide(
    candidates: list[dict[str, Any]],
    gates: GatesConfig,
    teacher_accuracy: float,
    metric: str = "accuracy",
    reference: dict[str, Any] | None = None,
) -> Decision:
    """The winner is the passing candidate with the lowest p50 (then p95 upper bound, then size).

    Only measured candidates (status ok, on ``gates.target`` if set) compete. With no passing
    candidate, nothing wins; the best effort is the one failing the fewest gates (then fastest).
    """
    rows = [
        r
        for r in candidates
        if r.get("status") == "ok" and (gates.target is None or r["target"] == gates.target)
    ]
    if not rows:
        return Decision(
            None, "no measured candidate to judge" + (f" on target {gates.target}" if gates.target else "")
        )
    verdicts = [judge(r, gates, teacher_accuracy, metric, reference) for r in rows]

    def speed(v: Verdict) -> tuple[float, float, float]:
        inf = float("inf")
        return (
            v.p50_ms if v.p50_ms is not None else inf,
            v.p95_upper_ms if v.p95_upper_ms is not None else inf,
            v.size_mb,
        )

    # the winner is the fastest: a speed that cannot be trusted ranks after every trusted one
    passing = sorted((v for v in verdicts if v.passed), key=lambda v: (bool(v.unreliable), *speed(v)))
    shaky = [v.name for v in verdicts if v.unreliable]
    note = f"; unreliable latency measurements (not judged on speed): {', '.join(shaky[:5])}" if shaky else ""
    if passing:
        w = passing[0]
        return Decision(
            w.name,
            f"{w.name} passes every gate ({len(passing)} of {len(verdicts)} candidates pass); fastest at "
            f"batch {gates.latency_batch_size}{note}",
            verdicts,
        )
    best = min(verdicts, key=lambda v: (len(v.failed), *speed(v)))
    detail = "; ".join(g.describe() for g in best.gates if not g.passed) + note
    return Decision(
        None,
        f"no candidate passes the gates; best effort {best.name} fails {detail}",
        verdicts,
        best.name,
        best.failed,
    )
