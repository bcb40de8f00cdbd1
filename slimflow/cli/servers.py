"""``slimflow servers start|stop|status``: local Prefect and MLflow servers (and PostgreSQL, a worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slimflow.cli import local_servers as servers
from slimflow.cli.app import DebugOpt, app, err, fail, out
from slimflow.models.core.env import apply_defaults

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
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            help="Require an auth string on the Prefect API: PREFECT_SERVER_API_AUTH_STRING if set, else one"
            " generated into STATE/prefect/auth (0600; `source STATE/env` exports it). --no-auth leaves the"
            " API open to anyone who can reach the port.",
        ),
    ] = True,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Extra Host header MLflow accepts (DNS-rebinding guard). Repeatable."),
    ] = None,
    state_dir: StateOpt = DEFAULT_STATE,
    debug: DebugOpt = False,
) -> None:
    """Start the servers (skipping those already running) and write STATE/env to `source`."""
    apply_defaults()

    if not auth:
        where = "this machine" if host == servers.LOOPBACK else f"{host}"
        err.print(f"[yellow]warning:[/] --no-auth: anyone who can reach {where} can use the Prefect API")
    if host != servers.LOOPBACK:
        err.print(
            f"[yellow]warning:[/] binding {host}: MLflow has no authentication here; put an authenticating"
            " proxy in front of it"
        )
    plan = servers.ServerPlan(
        state_dir=state_dir, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
        postgres=postgres, postgres_port=postgres_port, worker_pool=pool if worker else None,
        allowed_hosts=list(allowed_host or []), auth=auth,
    )  # fmt: skip
    try:
        with err.status("starting servers (PostgreSQL ~5 s, MLflow ~10 s, Prefect ~10 s)..."):
            info = servers.start(plan, Path.cwd())
    except Exception as e:
        fail(e, debug)
    _print_servers(servers.status(state_dir))
    out.print(f"started: {', '.join(info['started']) or 'nothing (all running)'}")
    if info["auth"] == "file":
        out.print(f"Prefect API auth string: in {servers.auth_file(state_dir)} (0600; the UI asks for it)")
    elif info["auth"] == "env":
        out.print("Prefect API auth string: from PREFECT_SERVER_API_AUTH_STRING (clients need it too)")
    out.print(f"use them:  source {info['env_file']}   (stop: slimflow servers stop)", highlight=False)


@servers_app.command("stop")
def servers_stop(state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Stop exactly the processes `servers start` recorded (worker, Prefect, MLflow, PostgreSQL)."""

    stopped = servers.stop(state_dir)
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@servers_app.command("status")
def servers_status(state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Which recorded servers are running, their URLs and logs."""

    st = servers.status(state_dir)
    if not st:
        err.print(f"no servers were started from {state_dir} (start them: slimflow servers start)")
        raise typer.Exit(1)
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
