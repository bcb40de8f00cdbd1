"""``slimflow ui``: the MLflow UI on the configured store, bound to 127.0.0.1."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from slimflow.cli.app import DebugOpt, SetOpt, WorkdirConfigOpt, app, err, fail, load


@app.command()
def ui(
    config: WorkdirConfigOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Open the MLflow UI on the configured store, bound to 127.0.0.1."""
    try:
        from slimflow.models.core.errors import ConfigError
        from slimflow.models.pipeline_config import PipelineConfig
        from slimflow.models.release.tracking import artifact_root, tracking_uri

        if set_ and not config:
            raise ConfigError("--set overrides a config's fields: pass the config with -c")
        cfg = load(config, set_) if config else PipelineConfig()
        workdir = cfg.workdir_path()
        uri = tracking_uri(cfg.tracking, workdir)
    except Exception as e:
        fail(e, debug)
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
