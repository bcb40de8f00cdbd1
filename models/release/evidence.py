"""What a reviewer sees where they decide: the challenger against the current champion and the
teacher, every gate with its threshold and value, the data check, and links to the evidence.

Plain Markdown (the Prefect UI renders a pause form's description as Markdown); built from the
figures the pipeline already holds, nothing is measured here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from slimflow.models.core.redact import redact
from slimflow.models.optimize.bench import setting as bench_setting
from slimflow.models.release.model_card import counts_text


def _fmt(x: Any, spec: str = ".4f", unit: str = "") -> str:
    if x is None or x == "":
        return "–"
    try:
        return f"{float(x):{spec}}{unit}"
    except (TypeError, ValueError):
        return str(x)


def ui_base(tracking_uri: str) -> str | None:
    """The MLflow server's address for a browser, without credentials (None: not an HTTP server)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    base = redact(tracking_uri).rstrip("/")
    if "***" in base:  # never hand out a credentialed address
        scheme, _, rest = base.partition("://")
        base = f"{scheme}://{rest.split('@', 1)[-1]}"
    return base


def links(
    tracking_uri: str, experiment_id: str, run_id: str, model_name: str, version: str
) -> dict[str, str]:
    """Where the evidence lives: MLflow UI addresses for an HTTP tracking server, else how to open it."""
    base = ui_base(tracking_uri)
    if base:
        return {
            "run": f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
            "version": f"{base}/#/models/{quote(model_name)}/versions/{version}",
        }
    return {
        "run": f"run `{run_id}` (open with `slimflow ui`)",
        "version": f"`{model_name}` version {version} (open with `slimflow ui`)",
    }


def artifact_url(tracking_uri: str, run_id: str, path: str) -> str | None:
    """An address a browser (and a Markdown image) can load a run's artifact from."""
    base = ui_base(tracking_uri)
    return f"{base}/get-artifact?path={quote(path)}&run_uuid={run_id}" if base else None


def _link(text: str, target: str) -> str:
    return f"[{text}]({target})" if target.startswith("http") else f"{text}: {target}"


def review_evidence(
    model_name: str,
    version: str,
    row: dict[str, Any],
    verdict: dict[str, Any],
    teacher_accuracy: float,
    latency_batch_size: int,
    champion: dict[str, Any] | None,
    context: dict[str, Any],
    where: dict[str, str],
) -> str:
    """Markdown for the approval form.

    ``row`` is the challenger's candidate row (test figures, bench settings), ``verdict`` its gate
    verdict (``gates.Verdict`` as a dict), ``champion`` the current champion's registered figures
    (``version``, ``test_accuracy``, ``p50_ms``, ``p95_upper_ms``, ``size_mb``) or None.
    """
    test = row.get("test") or {}
    metric = str(context.get("metric") or "accuracy")
    words = metric.replace("_", " ")
    acc = test.get(metric)
    try:
        setting = bench_setting(row["bench"], latency_batch_size)
    except (KeyError, TypeError):  # not measured at the gated batch size
        setting = {}
    size_mb = verdict.get("size_mb")
    retention = (acc / teacher_accuracy) if acc is not None and teacher_accuracy else None
    ch = champion or {}
    teacher = context.get("teacher_test") or {}
    lines = [
        f"### Promote **{model_name}** version **{version}** (`{row.get('name', '?')}`) to `champion`?",
        "",
        f"Candidate: source `{row.get('source', '?')}`, variant `{row.get('variant', '?')}`, "
        f"target `{row.get('target', '?')}`, runtime `{row.get('runtime', '?')}`.",
        "",
        f"| | challenger v{version} | "
        + (f"champion v{champion['version']}" if champion else "champion (none yet)")
        + " | teacher |",
        "|---|---|---|---|",
        f"| test {words} | {_fmt(acc)} | {_fmt(ch.get('test_score'))} | {_fmt(teacher_accuracy)} |",
        f"| retention of teacher | {_fmt(retention, '.2%')} | "
        f"{_fmt(_ratio(ch.get('test_score'), teacher_accuracy), '.2%')} | 100% |",
    ]
    if "perplexity" in test:  # a generator: language modelling and generation speed
        lines += [
            f"| test perplexity | {_fmt(test['perplexity'])} | {_fmt(ch.get('perplexity'))} "
            f"| {_fmt(teacher.get('perplexity'))} |",
            f"| decode tokens/s, batch {latency_batch_size} | {_rate(setting)} "
            f"| {_fmt(ch.get('decode_tokens_per_s'), '.1f')} | – |",
            f"| time to first token, batch {latency_batch_size} | {_ttft(setting)} "
            f"| {_fmt(ch.get('ttft_ms'), '.1f', ' ms')} | – |",
        ]
    else:
        lines += [
            f"| p50 latency, batch {latency_batch_size} | {_ci(setting, 'p50')} "
            f"| {_fmt(ch.get('p50_ms'), '.2f', ' ms')} | – |",
            f"| p95 latency, batch {latency_batch_size} | {_ci(setting, 'p95')} "
            f"| upper {_fmt(ch.get('p95_upper_ms'), '.2f', ' ms')} | – |",
        ]
    lines += [
        f"| size | {_fmt(size_mb, '.1f', ' MB')} | {_fmt(ch.get('size_mb'), '.1f', ' MB')} | – |",
        "",
        "**Gates**",
        "",
        "| gate | threshold | value | result |",
        "|---|---|---|---|",
    ]
    for g in verdict.get("gates", []):
        op = ">=" if str(g.get("gate", "")).startswith("min_") else "<="
        passed = "pass" if g.get("passed") else "**FAIL**"
        result = "not judged (unreliable)" if g.get("unreliable") else passed
        threshold, value = _fmt(g.get("threshold"), ".4g"), _fmt(g.get("value"), ".4g")
        lines.append(f"| {g.get('gate')} | {op} {threshold} | {value} | {result} |")
    if setting and setting.get("reliable") is False:
        lines += ["", f"Latency measurement marked unreliable: {setting.get('unreliable_reason', '?')}."]
    lines += [
        "",
        f"**Data**: `{redact(str(context.get('data_source', '?')))}`, fingerprint "
        f"`{str(context.get('data_fingerprint', '?'))[:16]}`, rows {counts_text(context.get('counts'))}; "
        f"Great Expectations: {context.get('gx', '?')}.",
        "",
        f"**Evidence**: {_link('MLflow run', where.get('run', ''))} · "
        f"{_link('model version and card', where.get('version', ''))}",
    ]
    return "\n".join(lines)


def _ratio(a: Any, b: float) -> float | None:
    try:
        return float(a) / b if a not in (None, "") and b else None
    except (TypeError, ValueError):
        return None


def _ci(setting: dict[str, Any], q: str) -> str:
    if not setting:
        return "not measured"
    return (
        f"{setting[f'{q}_ms']:.2f} ms [95% CI {setting[f'{q}_ci_low_ms']:.2f}, "
        f"{setting[f'{q}_ci_high_ms']:.2f}]"
    )


def _rate(setting: dict[str, Any]) -> str:
    if not setting or "decode_tokens_per_s" not in setting:
        return "not measured"
    lo, hi = setting["decode_tokens_per_s_ci"]
    return f"{setting['decode_tokens_per_s']:.1f} [95% CI {lo:.1f}, {hi:.1f}]"


def _ttft(setting: dict[str, Any]) -> str:
    if not setting or "ttft_p50_ms" not in setting:
        return "not measured"
    return f"p50 {setting['ttft_p50_ms']:.1f} ms, p95 upper {setting['ttft_p95_ci_ms'][1]:.1f} ms"


def champion_figures(tags: dict[str, str], version: str, metric: str = "accuracy") -> dict[str, Any]:
    """The figures a registered version carries in its tags (see ``tasks/promote.py``)."""
    return {
        "version": version,
        "test_score": tags.get(f"slimflow.test_{metric}"),
        "perplexity": tags.get("slimflow.test_perplexity"),
        "decode_tokens_per_s": tags.get("slimflow.decode_tokens_per_s"),
        "ttft_ms": tags.get("slimflow.ttft_p50_ms"),
        "p50_ms": tags.get("slimflow.p50_ms"),
        "p95_upper_ms": tags.get("slimflow.p95_upper_ms"),
        "size_mb": tags.get("slimflow.size_mb"),
    }
