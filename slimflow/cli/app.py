"""The Typer application, the consoles, the options every command shares and the error exit."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.redact import redact


def _flags_without_a_type() -> None:
    """typer 0.29 shows ``<bool>`` after every flag (``--debug <bool>``, even ``--help <bool>``),
    which reads as if the flag took a value: flags show no type, options keep theirs."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_slimflow", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._slimflow = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_a_type()

app = typer.Typer(
    name="slimflow",
    help="Fine-tune a teacher, shrink it, validate it and promote it only when it meets its gates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion for bash, zsh, fish, PowerShell
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
# Commands that only need a config's workdir and tracking store, and default to ./.slimflow.
WorkdirConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Use this config's workdir and tracking store (default: ./.slimflow).",
        show_default=False,
    ),
]  # fmt: skip


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("slimflow")
        except PackageNotFoundError:  # run from a source tree without installing
            v = "unknown (not installed)"
        out.print(f"slimflow {v}", highlight=False)
        raise typer.Exit()


def _exit_on_sigterm(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a scheduler's timeout, ``kill``, a service manager stopping the job) unwinds the
    command like Ctrl-C does, then exits with status 143: stages close their MLflow runs as FAILED,
    the run's summary says what was interrupted, and exit handlers run. Python's default action
    ends the process at once: Prefect's temporary API server (a child process, stopped by an exit
    handler) kept running, and the MLflow run stayed RUNNING until its lease lapsed. While a flow
    runs, Prefect's own handler comes first (it marks the flow run crashed) and hands the signal
    on to this one. Left alone where something else already handles SIGTERM."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Fine-tune a teacher, shrink it, validate it and promote it only when it meets its gates."""
    exit_cleanly_on_sigterm()


def fail(exc: BaseException, debug: bool) -> NoReturn:
    """Print an expected failure as one message (a traceback with --debug) and exit with its code."""
    if debug:
        err.print_exception(show_locals=False)
    from slimflow.models.release import tracking

    if tracking.server_silent(exc):  # a dead or hung server: one line, within the documented bound
        err.print(
            f"[bold red]error:[/] {escape(tracking.silent_server_message())}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1)
    if isinstance(exc, SlimflowError):
        report = getattr(exc, "report", None)
        detail = report.summary() if report is not None and report.outcomes else str(exc)
        if report is not None and getattr(exc, "hint", None):
            detail += f"\n  {exc.hint}"
        err.print(f"[bold red]error:[/] {escape(redact(detail))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    err.print(
        f"[bold red]unexpected error:[/] {type(exc).__name__}: {escape(redact(str(exc)))}",
        highlight=False,
        soft_wrap=True,
    )
    if not debug:
        err.print("(run again with --debug for the traceback)")
    raise typer.Exit(1)


def registry_store(tracking_uri: str | None) -> str:
    """The MLflow store for ``models:/`` references: the option, else $MLFLOW_TRACKING_URI, else the
    default workdir's store (where `slimflow run` writes without a config's tracking.uri)."""
    from slimflow.models.pipeline_config import PipelineConfig
    from slimflow.models.release.tracking import tracking_uri as resolve

    if tracking_uri:
        return tracking_uri
    cfg = PipelineConfig()
    return resolve(cfg.tracking, cfg.workdir_path())


def load(config: Path, overrides: list[str] | None) -> Any:
    from slimflow.models.pipeline_config import load_config

    return load_config(config, overrides or [])
