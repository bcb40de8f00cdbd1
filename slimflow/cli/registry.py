"""Commands on the model registry and the served model: approve, rollback, deploy, predict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from slimflow.cli.app import DebugOpt, SetOpt, app, fail, load, out, registry_store
from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import ConfigError, SlimflowError

# `approve` talks to a Prefect server: one bound, like MLflow's (Prefect's defaults: 60 s x 5 retries)
PREFECT_WAIT_BOUNDS = {"PREFECT_API_REQUEST_TIMEOUT": "20", "PREFECT_CLIENT_MAX_RETRIES": "2"}


def approval_error(exc: BaseException, flow_run_id: str, api: str) -> str:
    """One line saying why a flow run could not be answered (never the auth string)."""
    from slimflow.models.core.redact import redact
    from slimflow.models.release.tracking import server_silent

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return (
            f"the Prefect API at {redact(api)} refused the request (HTTP {status}): set"
            " PREFECT_API_AUTH_STRING to its auth string (source .slimflow/servers/env)"
        )
    if status == 404:
        return f"the Prefect API at {redact(api)} has no flow run {flow_run_id}"
    if server_silent(exc):
        retries = os.environ.get("PREFECT_CLIENT_MAX_RETRIES", "?")
        timeout = os.environ.get("PREFECT_API_REQUEST_TIMEOUT", "?")
        return (
            f"the Prefect API at {redact(api)} did not answer ({retries} retries, {timeout} s timeout each):"
            f" flow run {flow_run_id} was not answered; check that the Prefect server runs"
            " (slimflow servers status)"
        )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not answer flow run {flow_run_id}: {redact(reason)}"


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
    from uuid import UUID

    try:
        UUID(flow_run_id)
    except ValueError:
        fail(ConfigError(f"not a flow-run id: {flow_run_id!r} (expected a UUID, see the Prefect UI)"), debug)
    if not reviewer.strip():
        fail(ConfigError("--reviewer must name someone"), debug)
    for key, value in PREFECT_WAIT_BOUNDS.items():  # before Prefect reads its settings
        os.environ.setdefault(key, value)
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        fail(
            ConfigError(
                "PREFECT_API_URL is not set: approve answers the run on the Prefect server it waits on"
                " (after `slimflow servers start`: source .slimflow/servers/env)"
            ),
            debug,
        )
    try:
        from slimflow.flows.approval import resume

        resume(flow_run_id, not reject, reviewer.strip(), comment)
    except Exception as e:
        fail(SlimflowError(approval_error(e, flow_run_id, api)), debug)
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
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Version to make champion (default: the one aliased 'previous').", show_default=False
        ),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store (default: the config's).")] = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Move the 'champion' alias back to 'previous' (or --to VERSION); the version rolled back from
    becomes 'previous'. A second rollback without --to is refused (it would undo the first)."""
    apply_defaults()
    try:
        _, name, uri = _registry_target(config, model_name, tracking_uri, set_)
        if to is not None and not to.isdigit():
            raise ConfigError(f"--to must be a version number, got {to!r}")

        from slimflow.models.release import registry, tracking
        from slimflow.tasks.locks import registry_lock

        tracking.use(uri)
        client = tracking.client(uri)
        try:
            with registry_lock(name, uri):  # the lock promotions hold: never interleaved with one
                done = registry.recover(client, name)
                old, new = registry.rollback(client, name, to)
        except registry.RegistryError as e:
            raise SlimflowError(str(e)) from None
    except Exception as e:
        fail(e, debug)
    if done:
        out.print(f"{name}: completed an interrupted {done['op']} (champion v{done['champion']}) first")
    if old == new:
        out.print(f"{name}: version {new} already is the champion; nothing moved")
    else:
        out.print(f"{name}: champion moved from version {old} back to version {new} (previous is now {old})")


def _registry_target(
    config: Path | None, model_name: str | None, tracking_uri: str | None, overrides: list[str] | None = None
):
    from slimflow.models.pipeline_config import PipelineConfig
    from slimflow.models.release.tracking import tracking_uri as resolve_uri

    if overrides and not config:
        raise ConfigError("--set overrides a config's fields: pass the config with -c")
    cfg = load(config, overrides or []) if config else PipelineConfig()
    name = model_name or (cfg.promote.model_name if cfg.promote else None)
    if not name:
        raise ConfigError("no model name: pass --model-name or a --config with a promote: section")
    from slimflow.models.core.names import check_name

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
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Serve models:/NAME@champion on 127.0.0.1 (/predict, /health), smoke-test it, record it in MLflow."""
    apply_defaults()
    try:
        cfg, name, uri = _registry_target(config, model_name, tracking_uri, set_)
        from slimflow.models.release import deployments

        if stop:
            with deployments.deploy_lock(cfg.workdir_path(), name):
                stopped = deployments.stop(cfg.workdir_path(), name)
            out.print(f"{name}: {'server stopped' if stopped else 'no server was running'}")
            return
        from slimflow.models.release import tracking
        from slimflow.models.release.registry import alias_version

        # the registry first: a dead server or a missing alias fails here, before any server starts
        if alias_version(tracking.client(uri), name, alias) is None:
            raise ConfigError(f"{name} has no version with alias {alias!r}")
        from slimflow.flows.deploy import deploy as deploy_flow

        dcfg = cfg.promote.deploy if cfg.promote and cfg.promote.deploy else None
        result = deploy_flow(
            name,
            uri,
            str(cfg.workdir_path()),
            cfg.tracking.experiment,
            alias=alias,
            host=dcfg.host if dcfg else "127.0.0.1",
            port=port or (dcfg.port if dcfg else 8088),
            server=dcfg.server if dcfg else None,
        )
    except Exception as e:
        fail(e, debug)
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
        Path, typer.Option("--input", "-i", help="CSV/TSV, JSONL or Parquet file.", show_default=False)
    ],
    output_file: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Where to write (.csv/.tsv/.jsonl/.parquet).", show_default=False
        ),
    ],
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    prefix: Annotated[
        str,
        typer.Option(help="Prefix of the prediction columns ('' -> label, score); never overwrites input."),
    ] = "",
    batch_size: Annotated[int, typer.Option(help="Texts per model call.", min=1, max=4096)] = 256,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows read, predicted and written at a time (bounds memory).", min=1)
    ] = 10_000,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow store for models:/ (default: $MLFLOW_TRACKING_URI, else ./.slimflow/mlflow.db, "
            "where `slimflow run` records)."
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Offline batch inference: every row of --input, unchanged, plus 'label' and 'score' columns.

    Streams the file in chunks (a file larger than memory is fine), refuses to overwrite an input
    column (use --prefix), and makes formula-looking CSV cells inert (a leading single quote).
    """
    apply_defaults()
    try:
        from slimflow.models.release.batch_predict import file_format, predict_file

        file_format(output_file, "--output")
        file_format(input_file, "--input")
        if not input_file.is_file():
            raise ConfigError(f"--input: file not found: {input_file}")
        if not model.startswith("models:/") and not Path(model).exists():
            raise ConfigError(f"model not found: {model}")
        import pandas as pd
        from tqdm.auto import tqdm

        from slimflow.models.release.serving import load_registered

        store = registry_store(tracking_uri) if model.startswith("models:/") else None
        pyfunc, version = load_registered(model, store)

        def run(texts: list[str]) -> pd.DataFrame:
            parts = [pyfunc.predict(pd.DataFrame({"text": texts[i : i + batch_size]}))
                     for i in range(0, len(texts), batch_size)]  # fmt: skip
            return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"label": [], "score": []})

        with tqdm(desc="predict", unit="row", disable=None) as bar:
            result = predict_file(run, input_file, output_file, text_column, prefix, chunk_rows, bar.update)
    except Exception as e:
        fail(e, debug)
    rows, labels = result["rows"], result["labels"]
    out.print(f"{rows} rows -> {output_file} (model {model}, version {version}); labels: {labels}")
