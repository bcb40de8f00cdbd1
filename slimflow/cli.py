"""The ``slimflow`` command line.

Heavy libraries (torch, prefect, mlflow, great_expectations) are imported inside the commands,
so ``--help`` and config errors answer at once. Exit codes: 0 finished, 1 failure,
2 bad usage or config, 3 data validation failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slimflow.env import apply_defaults

app = typer.Typer(
    name="slimflow",
    help="Fine-tune a teacher, shrink it, validate it and promote it only when it meets its gates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (logs, CI) is not cut to 80 columns: tables keep one line per row.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="Pipeline YAML (e.g. configs/quickstart.yaml).", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a field: KEY.PATH=VALUE (VALUE is YAML). Repeatable.",
        show_default=False,
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]


def _fail(exc: BaseException, debug: bool) -> None:
    from models.errors import SlimflowError  # noqa: PLC0415

    if debug:
        err.print_exception(show_locals=False)
    if isinstance(exc, SlimflowError):
        report = getattr(exc, "report", None)
        detail = report.summary() if report is not None and report.outcomes else str(exc)
        if report is not None and getattr(exc, "hint", None):
            detail += f"\n  {exc.hint}"
        err.print(f"[bold red]error:[/] {escape(detail)}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    err.print(
        f"[bold red]unexpected error:[/] {type(exc).__name__}: {escape(str(exc))}",
        highlight=False,
        soft_wrap=True,
    )
    if not debug:
        err.print("(run again with --debug for the traceback)")
    raise typer.Exit(1)


def _quiet_expected_tracebacks() -> None:
    """Expected failures (bad data, bad config) get one message, not a traceback, in the terminal.

    Prefect logs task/flow exceptions with tracebacks; its API log handler (the Prefect UI) runs
    first and keeps them, the console handler on the root logger then drops them.
    """
    import logging  # noqa: PLC0415

    from models.errors import SlimflowError  # noqa: PLC0415

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], SlimflowError):
                record.exc_info, record.exc_text = None, None
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_Filter())


def _load(config: Path, overrides: list[str] | None):  # noqa: ANN202 - PipelineConfig, lazily imported
    from models.config import load_config  # noqa: PLC0415

    return load_config(config, overrides or [])


def _preflight(cfg) -> None:  # noqa: ANN001
    """Cheap checks that would otherwise fail minutes into a run (files, model shapes)."""
    from models.preflight import preflight  # noqa: PLC0415

    preflight(cfg)
    if cfg.promote and cfg.promote.approval.required:
        from prefect.settings import PREFECT_API_URL  # noqa: PLC0415

        from models.errors import ConfigError  # noqa: PLC0415

        if not PREFECT_API_URL.value():
            raise ConfigError(
                "promote.approval.required needs a Prefect server a reviewer can reach: set PREFECT_API_URL "
                "(e.g. `prefect server start --host 127.0.0.1`), or set promote.approval.required: false"
            )


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
        cfg = _load(config, set_)
        _preflight(cfg)
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    err.print(
        f"[bold]slimflow[/] running pipeline [cyan]{cfg.name}[/] from {config} (workdir {cfg.workdir_path()})"
    )
    try:
        from flows.pipeline import run_pipeline  # noqa: PLC0415

        if not debug:
            _quiet_expected_tracebacks()

        result = run_pipeline(cfg, summary_path=str(summary) if summary else None)
    except Exception as e:  # noqa: BLE001
        if summary and summary.exists():
            err.print(f"summary written to {summary}")
        _fail(e, debug)
    _print_summary(result)
    if summary:
        err.print(f"summary written to {summary}")


def _print_summary(s: dict) -> None:
    t = Table(title=f"slimflow run {s.get('mlflow_run_id', '')[:12]}", show_lines=False)
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    t.add_column("key figures")
    keys = (
        "test_accuracy",
        "test_f1",
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
    if dep:
        out.print(
            f"serving {d.get('model_name')} v{dep['version']} at {dep['endpoint']} "
            f"(POST /predict, GET /health; `slimflow deploy --stop` stops it)"
        )
    out.print(f"MLflow: {s.get('tracking_uri')} (run {s.get('mlflow_run_id')}); `slimflow ui` to browse")


def _print_candidates(search: dict) -> None:
    from models.bench import setting  # noqa: PLC0415

    sel = search["selection"]
    b = sel["rank_batch_size"]
    t = Table(title=f"candidates (best: {sel['best'] or 'none'})")
    for col, just in (
        ("candidate", "left"),
        ("status", "left"),
        ("test acc", "right"),
        (f"p50 b{b} ms [95% CI]", "right"),
        (f"p95 b{b} ms", "right"),
        ("MB", "right"),
        ("note", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in search["candidates"]:
        if r["status"] != "ok":
            t.add_row(r["name"], f"[red]{r['status']}[/]", "", "", "", "", escape(r.get("reason", "")))
            continue
        st = setting(r["bench"], b)
        notes = [n for n, on in (("best", r["name"] == sel["best"]), ("Pareto", r.get("pareto"))) if on]
        if r.get("slower_than_reference"):
            notes.append("[yellow]slower than its FP32 source[/]")
        if not r.get("meets_bar"):
            notes.append("below accuracy bar")
        t.add_row(
            r["name"],
            "[green]ok[/]",
            f"{r['test']['accuracy']:.4f}",
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


@app.command()
def bench(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="A candidate or model folder, an .onnx file, or models:/NAME@ALIAS (MLflow registry).",
            show_default=False,
        ),
    ],
    texts: Annotated[
        Path | None,
        typer.Option(
            "--texts",
            help="CSV/JSONL/Parquet file of inputs (column --text-column); default: the packaged reviews.",
        ),
    ] = None,
    text_column: Annotated[str, typer.Option(help="Column of --texts holding the text.")] = "text",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    lengths: Annotated[
        str, typer.Option(help="Comma-separated: 'data' (texts as they come) and/or fixed token counts.")
    ] = "data,128",
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads (default: every core this process may use).")
    ] = None,
    iterations: Annotated[int, typer.Option(help="Timed calls per setting (at most).")] = 200,
    warmup: Annotated[int, typer.Option(help="Untimed calls first.")] = 10,
    time_budget: Annotated[float, typer.Option(help="Seconds per setting before stopping early.")] = 8.0,
    isolate: Annotated[bool, typer.Option(help="Measure in a fresh process.")] = True,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store for models:/ references (default: $MLFLOW_TRACKING_URI).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full result here.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Measure one model's latency and throughput (p50/p90/p95/p99 with 95% CIs, examples/s)."""
    apply_defaults()
    try:
        from models.config import BenchConfig  # noqa: PLC0415

        cfg = BenchConfig(
            batch_sizes=[int(x) for x in batch_sizes.split(",") if x.strip()],
            lengths=[x.strip() if x.strip() == "data" else int(x) for x in lengths.split(",") if x.strip()],
            threads=threads,
            iterations=iterations,
            warmup=warmup,
            time_budget_s=time_budget,
            min_iterations=min(20, iterations),
            isolate=isolate,
        )
    except ValueError as e:
        from pydantic import ValidationError  # noqa: PLC0415

        from models.config import format_validation_error  # noqa: PLC0415
        from models.errors import ConfigError  # noqa: PLC0415

        if isinstance(e, ValidationError):
            _fail(ConfigError(format_validation_error(e, "bench options")), debug)
        _fail(ConfigError(f"bench options: {e}"), debug)
    try:
        import json  # noqa: PLC0415

        from models.bench import bench as run_bench  # noqa: PLC0415
        from models.bench import format_table  # noqa: PLC0415
        from models.runtime import describe, resolve_model  # noqa: PLC0415

        inputs = _bench_texts(texts, text_column)
        path = resolve_model(model, tracking_uri)
        describe(path)  # a clear error now rather than from the benchmark process
        err.print(f"measuring {path} on {len(inputs)} texts, threads={cfg.threads or 'all'}")
        result = run_bench(path, inputs, cfg, progress=not isolate)
    except FileNotFoundError as e:
        from models.errors import ConfigError  # noqa: PLC0415

        _fail(ConfigError(str(e)), debug)
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    typer.echo(format_table([(Path(str(path)).name, result)]))
    out.print(
        f"threads {result['threads']} (runtime reports {result['threads_effective']}), "
        f"pinned cores {result['pinned_cores'] or 'none'}, file {result['file_bytes'] / 2**20:.1f} MB, "
        f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['hardware_fingerprint']}",
        highlight=False,
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        err.print(f"written to {json_out}")


def _bench_texts(path: Path | None, column: str) -> list[str]:
    from models.config import DataConfig  # noqa: PLC0415
    from models.data import load_raw  # noqa: PLC0415
    from models.errors import ConfigError  # noqa: PLC0415

    cfg = DataConfig(source=str(path)) if path else DataConfig()
    if path and not path.is_file():
        raise ConfigError(f"--texts: file not found: {path}")
    frame = load_raw(cfg)
    if column not in frame.columns:
        raise ConfigError(f"--texts: no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
    texts = [t for t in frame[column].astype(str).tolist() if t.strip()]
    if not texts:
        raise ConfigError(f"--texts: column {column!r} holds no text")
    return texts[-2000:]


@app.command()
def approve(
    flow_run_id: Annotated[
        str, typer.Argument(help="The paused pipeline's Prefect flow-run id.", show_default=False)
    ],
    reviewer: Annotated[
        str, typer.Option(help="Who decides (stored on the model version).", show_default=False)
    ],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving.")] = False,
    comment: Annotated[str, typer.Option(help="Why (stored on the model version).")] = "",
    debug: DebugOpt = False,
) -> None:
    """Approve (or --reject) a run waiting for review; it then promotes (or not) and finishes.

    Talks to the Prefect API in PREFECT_API_URL, the server the paused run uses.
    """
    apply_defaults()
    from uuid import UUID  # noqa: PLC0415

    from models.errors import ConfigError, SlimflowError  # noqa: PLC0415

    try:
        UUID(flow_run_id)
    except ValueError:
        _fail(ConfigError(f"not a flow-run id: {flow_run_id!r} (expected a UUID, see the Prefect UI)"), debug)
    if not reviewer.strip():
        _fail(ConfigError("--reviewer must name someone"), debug)
    try:
        from flows.approval import resume  # noqa: PLC0415

        resume(flow_run_id, not reject, reviewer.strip(), comment)
    except Exception as e:  # noqa: BLE001
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(SlimflowError(f"could not answer flow run {flow_run_id}: {reason}"), debug)
    out.print(f"flow run {flow_run_id}: {'rejected' if reject else 'approved'} by {escape(reviewer)}")


@app.command()
def rollback(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Take the model name and MLflow store from this config."),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Registered model name (default: the config's).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default: the config's).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Move the 'champion' alias back to the 'previous' version (and 'previous' to the one rolled back)."""
    apply_defaults()
    try:
        from models.errors import SlimflowError  # noqa: PLC0415

        _, name, uri = _registry_target(config, model_name, tracking_uri)

        from models import registry, tracking  # noqa: PLC0415

        tracking.use(uri)
        try:
            old, new = registry.rollback(tracking.client(uri), name)
        except registry.RegistryError as e:
            raise SlimflowError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    out.print(f"{name}: champion moved from version {old} back to version {new} (previous is now {old})")


def _registry_target(config: Path | None, model_name: str | None, tracking_uri: str | None):  # noqa: ANN202
    from models.config import PipelineConfig  # noqa: PLC0415
    from models.errors import ConfigError  # noqa: PLC0415
    from models.tracking import tracking_uri as resolve_uri  # noqa: PLC0415

    cfg = _load(config, []) if config else PipelineConfig()
    name = model_name or (cfg.promote.model_name if cfg.promote else None)
    if not name:
        raise ConfigError("no model name: pass --model-name or a --config with a promote: section")
    from models.names import check_name  # noqa: PLC0415

    return cfg, check_name(name, "model name"), tracking_uri or resolve_uri(cfg.tracking, cfg.workdir_path())


@app.command()
def deploy(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Model name, MLflow store and port from this config."),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Registered model name (default: the config's).")
    ] = None,
    alias: Annotated[str, typer.Option(help="Which alias to serve.")] = "champion",
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: the config's, else 8088).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default: the config's).")] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop this model's server instead.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Serve models:/NAME@champion on 127.0.0.1 (/predict, /health), smoke-test it, record it in MLflow."""
    apply_defaults()
    try:
        cfg, name, uri = _registry_target(config, model_name, tracking_uri)
        from models import serve  # noqa: PLC0415

        if stop:
            stopped = serve.stop(cfg.workdir_path(), name)
            out.print(f"{name}: {'server stopped' if stopped else 'no server was running'}")
            return
        from flows.deploy import deploy as deploy_flow  # noqa: PLC0415

        dcfg = cfg.promote.deploy if cfg.promote and cfg.promote.deploy else None
        result = deploy_flow(
            name,
            uri,
            str(cfg.workdir_path()),
            cfg.tracking.experiment,
            alias=alias,
            host=dcfg.host if dcfg else "127.0.0.1",
            port=port or (dcfg.port if dcfg else 8088),
        )
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    out.print(
        f"{name} v{result['version']} serving at {result['endpoint']} (pid {result['pid']}); "
        "smoke test passed"
    )


@app.command()
def predict(
    model: Annotated[
        str, typer.Option("--model", "-m", help="models:/NAME@ALIAS or a model folder.", show_default=False)
    ],
    input_file: Annotated[
        Path, typer.Option("--input", "-i", help="CSV, JSONL or Parquet file.", show_default=False)
    ],
    output_file: Annotated[
        Path,
        typer.Option("--output", "-o", help="Where to write (.csv/.jsonl/.parquet).", show_default=False),
    ],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    batch_size: Annotated[int, typer.Option(help="Texts per model call.", min=1, max=4096)] = 256,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store for models:/ (default: $MLFLOW_TRACKING_URI).")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Offline batch inference: adds 'label' and 'score' columns to every row of --input."""
    apply_defaults()
    from models.errors import ConfigError  # noqa: PLC0415

    try:
        if output_file.suffix not in (".csv", ".jsonl", ".parquet"):
            raise ConfigError(f"--output must end in .csv, .jsonl or .parquet, got {output_file.name!r}")
        if not input_file.is_file():
            raise ConfigError(f"--input: file not found: {input_file}")
        from models.config import DataConfig  # noqa: PLC0415
        from models.data import load_raw  # noqa: PLC0415

        frame = load_raw(DataConfig(source=str(input_file)))
        if text_column not in frame.columns:
            raise ConfigError(
                f"--input has no column {text_column!r} (columns: {', '.join(map(str, frame.columns))})"
            )
        import pandas as pd  # noqa: PLC0415
        from tqdm.auto import tqdm  # noqa: PLC0415

        from models.serve import load_registered  # noqa: PLC0415

        if not model.startswith("models:/") and not Path(model).exists():
            raise ConfigError(f"model not found: {model}")
        pyfunc, version = load_registered(model, tracking_uri)
        texts = frame[text_column].fillna("").astype(str).tolist()
        parts = []
        for i in tqdm(range(0, len(texts), batch_size), desc="predict", unit="batch", disable=None):
            parts.append(pyfunc.predict(pd.DataFrame({"text": texts[i : i + batch_size]})))
        preds = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"label": [], "score": []})
        result = frame.reset_index(drop=True).assign(label=preds["label"], score=preds["score"])
        output_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_file.with_name(f".{output_file.name}.tmp")
        if output_file.suffix == ".csv":
            result.to_csv(tmp, index=False)
        elif output_file.suffix == ".jsonl":
            result.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            result.to_parquet(tmp, index=False)
        tmp.replace(output_file)
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    counts = result["label"].value_counts().to_dict()
    out.print(f"{len(result)} rows -> {output_file} (model {model}, version {version}); labels: {counts}")


@app.command("validate-data")
def validate_data(
    config: ConfigOpt,
    set_: SetOpt = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="Where to write the report (default: <workdir>/validate)."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Validate the configured data with Great Expectations only (no training, no tracking)."""
    apply_defaults()
    try:
        cfg = _load(config, set_)
        from models.data import source_digest  # noqa: PLC0415
        from models.errors import DataValidationError  # noqa: PLC0415
        from models.prepare import prepare  # noqa: PLC0415

        digest = source_digest(cfg.data)
        dest = report_dir or cfg.workdir_path() / "validate"
        import tempfile  # noqa: PLC0415

        with tempfile.TemporaryDirectory() as tmp:
            try:
                prepared, report = prepare(cfg.data, tmp, digest, dest)
            except DataValidationError as e:
                if e.report is not None:
                    _print_report(e.report)
                raise
        _print_report(report)
        out.print(
            f"rows: {prepared.rows_raw} raw, {prepared.duplicates_dropped} repeats and "
            f"{prepared.blank_dropped} blank dropped; split {prepared.counts}; "
            f"fingerprint {prepared.data_fingerprint[:16]}"
        )
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)


def _print_report(report) -> None:  # noqa: ANN001
    t = Table(title="Great Expectations" + (" — passed" if report.success else " — FAILED"))
    t.add_column("suite")
    t.add_column("expectation")
    t.add_column("result")
    t.add_column("observed")
    for o in report.outcomes:
        t.add_row(o.suite, o.title, "[green]ok[/]" if o.success else "[red]failed[/]", o.observed)
    out.print(t)
    if report.docs_dir:
        out.print(f"Data Docs: {Path(report.docs_dir) / 'index.html'}")


@app.command()
def ui(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Use this config's tracking store (default: ./.slimflow)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    debug: DebugOpt = False,
) -> None:
    """Open the MLflow UI on the configured store, bound to 127.0.0.1."""
    try:
        from models.config import PipelineConfig  # noqa: PLC0415
        from models.tracking import artifact_root, tracking_uri  # noqa: PLC0415

        cfg = _load(config, []) if config else PipelineConfig()
        workdir = cfg.workdir_path()
        uri = tracking_uri(cfg.tracking, workdir)
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", artifact_root(workdir)]
    err.print(f"MLflow UI for {uri} at http://127.0.0.1:{port} (Ctrl-C to stop)")
    os.execv(sys.executable, cmd)


@app.command("show-config")
def show_config(config: ConfigOpt, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the resolved configuration (defaults filled in, overrides applied) as YAML."""
    try:
        cfg = _load(config, set_)
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    import yaml  # noqa: PLC0415

    out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False, markup=False)


servers_app = typer.Typer(
    help="Local Prefect and MLflow servers (PostgreSQL, a worker) on 127.0.0.1; data in .slimflow/servers.",
    no_args_is_help=True,
)
app.add_typer(servers_app, name="servers")
StateOpt = Annotated[Path, typer.Option("--dir", help="State folder: data, logs, process records.")]
DEFAULT_STATE = Path(".slimflow/servers")


@servers_app.command("start")
def servers_start(
    postgres: Annotated[
        bool,
        typer.Option("--postgres/--sqlite", help="MLflow backend store: PostgreSQL (Debian's) or sqlite."),
    ] = False,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also start a Prefect process worker.")
    ] = True,
    pool: Annotated[
        str, typer.Option(help="Work pool the worker serves (created if missing).")
    ] = "slimflow-process",
    host: Annotated[
        str,
        typer.Option(help="Interface to bind. Anything but 127.0.0.1 exposes the servers: set auth first."),
    ] = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    postgres_port: Annotated[int, typer.Option(help="PostgreSQL port.")] = 5433,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Extra Host header MLflow accepts (DNS-rebinding guard). Repeatable."),
    ] = None,
    state_dir: StateOpt = DEFAULT_STATE,
    debug: DebugOpt = False,
) -> None:
    """Start the servers (skipping those already running) and write STATE/env to `source`."""
    apply_defaults()
    from slimflow import servers  # noqa: PLC0415

    if host != servers.LOOPBACK and not os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        err.print(
            f"[yellow]warning:[/] binding {host} without PREFECT_SERVER_API_AUTH_STRING: anyone who can reach"
            " this machine can use the Prefect API; put an authenticating proxy in front of MLflow"
        )
    plan = servers.ServerPlan(
        state_dir=state_dir, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
        postgres=postgres, postgres_port=postgres_port, worker_pool=pool if worker else None,
        allowed_hosts=list(allowed_host or []),
    )  # fmt: skip
    try:
        with err.status("starting servers (PostgreSQL ~5 s, MLflow ~10 s, Prefect ~10 s)..."):
            info = servers.start(plan, Path.cwd())
    except Exception as e:  # noqa: BLE001
        _fail(e, debug)
    _print_servers(servers.status(state_dir))
    out.print(f"started: {', '.join(info['started']) or 'nothing (all running)'}")
    out.print(f"use them:  source {info['env_file']}   (stop: slimflow servers stop)", highlight=False)


@servers_app.command("stop")
def servers_stop(state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Stop exactly the processes `servers start` recorded (worker, Prefect, MLflow, PostgreSQL)."""
    from slimflow import servers  # noqa: PLC0415

    stopped = servers.stop(state_dir)
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@servers_app.command("status")
def servers_status(state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Which recorded servers are running, their URLs and logs."""
    from slimflow import servers  # noqa: PLC0415

    st = servers.status(state_dir)
    _print_servers(st)
    if not any(r["running"] for r in st.values()):
        raise typer.Exit(1)


def _print_servers(st: dict) -> None:
    table = Table("server", "running", "pid", "url", "log")
    for name, rec in st.items():
        table.add_row(
            name, "yes" if rec["running"] else "no", str(rec["pid"]), rec.get("url", ""), rec.get("log", "")
        )
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
