"""``slimflow run`` and ``slimflow show-config``: the pipeline, and the configuration it would use."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from slimflow.api import check
from slimflow.cli.app import ConfigOpt, DebugOpt, SetOpt, app, err, fail, load, out
from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import ConfigError, SlimflowError


def _quiet_expected_tracebacks() -> None:
    """Expected failures (bad data, bad config) get one message, not a traceback, in the terminal.

    Prefect logs task/flow exceptions with tracebacks; its API log handler (the Prefect UI) runs
    first and keeps them, the console handler on the root logger then drops them.
    """
    import logging

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], SlimflowError):
                record.exc_info, record.exc_text = None, None
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_Filter())


def _run_summary(exc: BaseException | None) -> dict:
    """The summary the pipeline attached to the exception that ended it, or to one it led to (a
    SIGTERM exit raised while Prefect handled its own TerminationSignal); {} when none."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "slimflow_summary", None):
            return exc.slimflow_summary  # type: ignore[attr-defined]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return {}


@app.command()
def run(
    config: ConfigOpt,
    set_: SetOpt = None,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Write a JSON summary (run ids, stage states, metrics, decision)."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Run the whole pipeline (Prefect flow, tracked in MLflow)."""
    apply_defaults()
    try:
        cfg = load(config, set_)
        check(cfg)
    except Exception as e:
        fail(e, debug)
    err.print(
        f"[bold]slimflow[/] running pipeline [cyan]{cfg.name}[/] from {config} (workdir {cfg.workdir_path()})"
    )
    try:
        from slimflow.flows.pipeline import run_pipeline

        if not debug:
            _quiet_expected_tracebacks()

        result = run_pipeline(cfg, summary_path=str(summary) if summary else None)
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or SIGTERM (app.exit_cleanly_on_sigterm)
        done = _run_summary(e)
        reason = (done.get("decision") or {}).get("reason") or "the run was interrupted"
        err.print(f"[bold yellow]stopped:[/] {escape(str(reason))}", highlight=False, soft_wrap=True)
        if summary and summary.exists():
            err.print(f"summary written to {summary}")
        raise
    except Exception as e:
        done = _run_summary(e)
        decision = done.get("decision") or {}
        if decision.get("promoted"):  # the registry changed before the failure: say so first
            err.print(f"[bold yellow]note:[/] {escape(str(decision.get('reason')))}")
        if summary and summary.exists():
            err.print(f"summary written to {summary}")
        fail(e, debug)
    _print_summary(result, config, set_)
    if summary:
        err.print(f"summary written to {summary}")


def _print_summary(s: dict, config: Path | None = None, overrides: list[str] | None = None) -> None:
    t = Table(title=f"slimflow run {s.get('mlflow_run_id', '')[:12]}", show_lines=False)
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    t.add_column("key figures")
    keys = (
        "test_accuracy",
        "test_f1",
        "test_exact_match",
        "test_perplexity",
        "trainable_share",
        "counts_train",
        "counts_test",
        "rows_raw",
        "duplicates_dropped",
    )
    for name, st in s.get("stages", {}).items():
        m = st.get("metrics", {})
        figs = ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
        colour = {"completed": "green", "cached": "cyan", "failed": "red"}.get(st["status"], "white")
        t.add_row(name, f"[{colour}]{st['status']}[/]", f"{st.get('seconds', 0):.1f}", figs)
    out.print(t)
    if s.get("search"):
        _print_candidates(s["search"])
    d = s.get("decision") or {}
    out.print(f"decision: [bold]{d.get('outcome')}[/] — {escape(str(d.get('reason')))}")
    dep = (s.get("promotion") or {}).get("deployment")
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides or [])
    if dep:
        out.print(
            f"serving {d.get('model_name')} v{dep['version']} at {dep['endpoint']} "
            f"(POST /predict, GET /health; `slimflow deploy --stop -c {config}{sets}` stops it)"
        )
    ui = f"`slimflow ui -c {config}{sets}`" if config else "`slimflow ui`"
    out.print(f"MLflow: {s.get('tracking_uri')} (run {s.get('mlflow_run_id')}); {ui} to browse")


def _print_candidates(search: dict) -> None:
    from slimflow.models.optimize.bench import setting

    sel = search["selection"]
    b = sel["rank_batch_size"]
    metric = sel.get("metric", "accuracy")
    per_token = "per token " if "per-token" in sel.get("latency", "") else ""
    t = Table(title=f"candidates (best: {sel['best'] or 'none'})")
    for col, just in (
        ("candidate", "left"),
        ("status", "left"),
        ({"accuracy": "test acc", "exact_match": "test EM"}.get(metric, f"test {metric}"), "right"),
        (f"{per_token}p50 b{b} ms [95% CI]", "right"),
        (f"{per_token}p95 b{b} ms", "right"),
        ("MB", "right"),
        ("note", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in search["candidates"]:
        if r["status"] != "ok":
            colour = "yellow" if r["status"] == "rejected" else "red"
            t.add_row(r["name"], f"[{colour}]{r['status']}[/]", "", "", "", "", escape(r.get("reason", "")))
            continue
        st = setting(r["bench"], b)
        notes = [n for n, on in (("best", r["name"] == sel["best"]), ("Pareto", r.get("pareto"))) if on]
        if r.get("slower_than_reference"):
            notes.append("[yellow]slower than its FP32 source[/]")
        if not r.get("meets_bar"):
            notes.append("below the quality bar")
        t.add_row(
            r["name"],
            "[green]ok[/]",
            f"{r['test'][metric]:.4f}",
            f"{st['p50_ms']:.2f} [{st['p50_ci_low_ms']:.2f}, {st['p50_ci_high_ms']:.2f}]",
            f"{st['p95_ms']:.2f}",
            f"{r['file_bytes'] / 2**20:.1f}",
            ", ".join(notes),
        )
    out.print(t)
    for sk in search.get("skipped", []):
        out.print(f"  skipped {sk['name']}: {escape(sk['reason'])}", highlight=False)
    if search.get("pareto_png"):
        out.print(f"Pareto plot: {search['pareto_png']}")


@app.command("show-config")
def show_config(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Pipeline YAML (default: none, every default).", show_default=False
        ),
    ] = None,
    set_: SetOpt = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="Values only, without the field descriptions.")
    ] = False,
    schema: Annotated[
        bool,
        typer.Option(
            "--schema",
            help="Print the config's JSON Schema instead (for editor completion: "
            "`slimflow show-config --schema > slimflow.schema.json`).",
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Print the resolved configuration (defaults filled in, overrides applied) as YAML, each field
    with its description; or the JSON Schema of every config."""
    try:
        if schema:
            import json

            from slimflow.models.config.describe import json_schema
            from slimflow.models.pipeline_config import PipelineConfig

            if config is not None or set_:
                raise ConfigError("--schema describes every config: give it without --config/--set")
            typer.echo(json.dumps(json_schema(PipelineConfig), indent=2))  # raw: never wrapped
            return
        cfg = load(config, set_)
    except Exception as e:
        fail(e, debug)
    if plain:
        import yaml

        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    else:
        from slimflow.models.config.describe import commented_yaml

        text = commented_yaml(cfg)
    typer.echo(text)  # raw text, never wrapped: it is YAML to copy or redirect
