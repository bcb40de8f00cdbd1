"""The model card: a short Markdown page on each registered version (what it is, what it was
trained on, its figures and gates, who approved it), shown in the MLflow UI."""

from __future__ import annotations

from typing import Any

from slimflow.models.release.gates import Verdict


def model_card(
    row: dict[str, Any],
    verdict: Verdict,
    context: dict[str, Any],
    approval: dict[str, str] | None = None,
) -> str:
    """A short Markdown card for a registered version: what it is, what it was trained on, its
    figures and the gates it passed, so a reviewer in the MLflow UI sees why it may be promoted."""
    ctx = {"data_fingerprint": "?", "teacher_accuracy": float("nan"), "metric": "accuracy", **context}
    metric = ctx["metric"]
    words = metric.replace("_", " ")
    lines = [
        f"# {ctx.get('model_name', 'slimflow model')}: {row['name']}",
        "",
        f"- **Candidate**: source `{row['source']}`, variant `{row['variant']}`, target `{row['target']}`, "
        f"runtime `{row['runtime']}`",
        f"- **Data**: `{ctx.get('data_source', '?')}`, fingerprint `{str(ctx['data_fingerprint'])[:16]}`, "
        f"rows {counts_text(ctx.get('counts'))}; Great Expectations: {ctx.get('gx', '?')}",
        f"- **Teacher**: `{ctx.get('teacher_model', '?')}`, test {words} {ctx['teacher_accuracy']:.4f}"
        + _teacher_extra(ctx.get("teacher_test")),
    ]
    # what this candidate is made of: a teacher candidate has no student and no compression steps
    if row["source"] in ("student", "compressed") and context.get("student"):
        lines.append(f"- **Student**: {_student(context['student'])}")
    if row["source"] == "compressed" and context.get("steps"):
        lines.append(f"- **Compression steps**: {' → '.join(str(x) for x in context['steps'])}")
    cascade = (row.get("build") or {}).get("cascade")
    if cascade:
        lines.append(_cascade_line(cascade, row))
    lines.append(f"- **Test {words}**: {_test_line(row['test'], metric)}")
    for s in row.get("bench", {}).get("settings", []):
        lines.append(_bench_line(s))
    hw = row.get("bench", {}).get("hardware_fingerprint")
    if hw:
        lines.append(f"- **Measured on**: {hw}, {row['bench'].get('threads')} threads")
    lines.append(f"- **Size**: {row['file_bytes'] / 2**20:.1f} MiB")
    lines += ["", "## Gates", ""]
    lines += [f"- {g.describe()}" for g in verdict.gates]
    lines += ["", APPROVAL_HEADING, "", approval_line(approval), ""]
    lines.append(
        f"Pipeline run: `{context.get('run_id', '?')}`, git commit `{context.get('git_commit', '?')}`"
    )
    return "\n".join(lines) + "\n"


APPROVAL_HEADING = "## Approval"


def approval_line(approval: dict[str, str] | None) -> str:
    if not approval:
        return "- awaiting the promotion decision"
    a = {"decision": "?", "reviewer": "", "time": "?", "comment": "", **approval}
    if a["decision"] == "auto":
        return f"- promoted without review at {a['time']} (approval.required is false)"
    who = f" by **{a['reviewer']}**" if a["reviewer"] else ""
    return f"- {a['decision']}{who} at {a['time']}" + (f": {a['comment']}" if a["comment"] else "")


def with_approval(card: str, approval: dict[str, str]) -> str:
    """The card with its approval line replaced by ``approval``'s (the rest unchanged)."""
    head, sep, tail = card.partition(f"{APPROVAL_HEADING}\n\n")
    if not sep:
        return card.rstrip("\n") + f"\n\n{APPROVAL_HEADING}\n\n{approval_line(approval)}\n"
    _, _, rest = tail.partition("\n")
    return f"{head}{sep}{approval_line(approval)}\n{rest}"


def _cascade_line(c: dict[str, Any], row: dict[str, Any]) -> str:
    """Which part answers what, and how the threshold was chosen (validation rows only)."""
    ref, conf = row.get("reference", "?"), f"{c['confidence']} confidence is at least {c['threshold']:.4g}"
    if "exit_after" in c:  # an early exit: one model, cut after an intermediate layer
        title, verb, names = "Early exit", "went on", ("whole model", "exit head alone")
        who = (
            f"an exit head after encoder layer {c['exit_after']} of {c['layers']} of `{ref}` answers "
            f"when its {conf}, the remaining layers otherwise"
        )
    else:
        title, verb, names = "Cascade", "escalated", ("fallback", "fast part")
        who = f"the fast part answers when its {conf}, the fallback (`{ref}`) otherwise"
    test_esc = row.get("test", {}).get("escalation_rate")
    on_test = f"; {test_esc:.1%} of test rows {verb}" if isinstance(test_esc, int | float) else ""
    return (
        f"- **{title}**: {who}; threshold chosen on {c['rows']} validation rows: accuracy "
        f"{c['accuracy']:.4f} ({names[0]} {c['fallback_accuracy']:.4f}, {names[1]} {c['fast_accuracy']:.4f}, "
        f"target {c['target_accuracy']:.4f}), {c['escalation_rate']:.1%} {verb}{on_test}"
    )


def _test_line(test: dict[str, Any], metric: str) -> str:
    """The primary figure first, then the others the family reports (macro F1; perplexity)."""
    others = {"f1": "macro F1", "perplexity": "perplexity"}
    extra = [f"{name} {test[k]:.4f}" for k, name in others.items() if isinstance(test.get(k), int | float)]
    rows = test.get("rows", "?")
    return f"{test[metric]:.4f} (" + ", ".join([*extra, f"{rows} rows"]) + ")"


def _teacher_extra(test: Any) -> str:
    if isinstance(test, dict) and isinstance(test.get("perplexity"), int | float):
        return f", perplexity {test['perplexity']:.4f}"
    return ""


def _bench_line(s: dict[str, Any]) -> str:
    """One benchmark setting: a generator's decode rate and time to first token, a classifier's
    latency per call on test-data lengths."""
    if "decode_tokens_per_s" in s:
        lo, hi = s["decode_tokens_per_s_ci"]
        t_lo, t_hi = s["ttft_p95_ci_ms"]
        return (
            f"- **Generation** batch {s['batch_size']}, {s['prompt_tokens']}-token prompt, "
            f"{s['new_tokens']} new tokens: {s['decode_tokens_per_s']:.1f} tokens/s [95% CI {lo:.1f}, "
            f"{hi:.1f}], per-token p50 {s['token_p50_ms']:.2f} ms, p95 {s['token_p95_ms']:.2f} ms; "
            f"time to first token p50 {s['ttft_p50_ms']:.1f} ms, "
            f"p95 {s['ttft_p95_ms']:.1f} ms [{t_lo:.1f}, {t_hi:.1f}]"
        )
    return (
        f"- **Latency** batch {s['batch_size']}, {s['length']} tokens: p50 {s['p50_ms']:.2f} ms "
        f"[95% CI {s['p50_ci_low_ms']:.2f}, {s['p50_ci_high_ms']:.2f}], p95 {s['p95_ms']:.2f} ms "
        f"(upper {s['p95_ci_high_ms']:.2f}), {s['throughput_eps']:.0f} examples/s"
        + (f"; ONNX Runtime {s['session']}" if s.get("session") else "")
    )


def _student(student: Any) -> str:
    if isinstance(student, dict):
        return ", ".join(f"{k} {v}" for k, v in student.items() if v not in (None, [], {}))
    return str(student)


def counts_text(counts: Any) -> str:
    if isinstance(counts, dict) and counts:
        return ", ".join(f"{k} {v}" for k, v in counts.items())
    return "?"
