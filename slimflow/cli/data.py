"""``slimflow validate-data``: the Great Expectations gate alone, with its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from slimflow.cli.app import ConfigOpt, DebugOpt, SetOpt, app, fail, load, out
from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import DataValidationError


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
        cfg = load(config, set_)
        prepared = validate_and_report(cfg, report_dir or cfg.workdir_path() / "validate")
        out.print(
            f"rows: {prepared.rows_raw} raw, {prepared.duplicates_dropped} repeats and "
            f"{prepared.blank_dropped} blank dropped; split {prepared.counts}; "
            f"fingerprint {prepared.data_fingerprint[:16]}"
        )
    except Exception as e:
        fail(e, debug)


def validate_and_report(cfg: Any, report_dir: Path) -> Any:
    """Run the Great Expectations gate on ``cfg.data`` alone (the split written to a temporary
    folder), print its report, also when it fails (then re-raise); return the PreparedData."""
    import tempfile

    from slimflow.models.data.tables import source_digest
    from slimflow.models.families import get_family

    digest = source_digest(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            prepared, report = get_family(cfg.task).prepare_data(cfg.data, tmp, digest, report_dir)
        except DataValidationError as e:
            if e.report is not None:
                _print_report(e.report)
            raise
    _print_report(report)
    return prepared


def _print_report(report) -> None:
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
