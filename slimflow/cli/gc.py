"""``slimflow gc``: free a workdir's disk from old models and candidates, keeping what is in use."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from slimflow.cli.app import DebugOpt, WorkdirConfigOpt, app, err, fail, load, out


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


@app.command()
def gc(
    config: WorkdirConfigOpt = None,
    keep_runs: Annotated[
        int,
        typer.Option(
            help="Keep everything the newest N runs used (their cached stages stay instant).", min=0
        ),
    ] = 3,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    show_kept: Annotated[bool, typer.Option("--show-kept", help="Also list what is kept, and why.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Delete old fine-tuned models, exports and candidates from the workdir.

    Keeps what the newest --keep-runs runs used, what a registered model version names and anything
    changed in the last hour (a run in progress). Never touches the MLflow store, the registry, the
    run summaries or a running model server. Everything deleted can be rebuilt by running again.
    """
    try:
        from slimflow.models.pipeline_config import PipelineConfig
        from slimflow.models.release import housekeeping
        from slimflow.models.release.tracking import tracking_uri

        cfg = load(config, []) if config else PipelineConfig()
        workdir = cfg.workdir_path()
        if not workdir.is_dir():
            out.print(f"nothing to clean: {workdir} does not exist", highlight=False)
            return
        refs: list[str] = []
        try:
            refs = housekeeping.registry_refs(tracking_uri(cfg.tracking, workdir))
        except Exception as e:  # no store yet, or a server that is down: say so, keep going safely
            err.print(
                f"[yellow]note:[/] registry not read ({escape(type(e).__name__)}); keeping more to be safe"
            )
            keep_runs = max(keep_runs, 10**6)
        plan = housekeeping.plan(workdir, keep_runs=keep_runs, registry_refs=refs)
    except Exception as e:
        fail(e, debug)
    t = Table(title=f"{'would delete' if dry_run else 'deleting'} in {workdir}")
    for col in ("folder", "size", "why"):
        t.add_column(col, justify="right" if col == "size" else "left")
    rows = [(i, "delete") for i in plan.delete] + ([(i, "keep") for i in plan.keep] if show_kept else [])
    for item, what in rows:
        rel = item.path.relative_to(workdir)
        colour = "red" if what == "delete" else "green"
        t.add_row(f"[{colour}]{escape(str(rel))}[/]", _mb(item.bytes), escape(item.why))
    if rows:
        out.print(t)
    kept = sum(i.bytes for i in plan.keep)
    if dry_run:
        out.print(
            f"would free {_mb(plan.freed)} ({len(plan.delete)} folders); keeping {_mb(kept)}", highlight=False
        )
        return
    freed = housekeeping.apply(plan)
    out.print(f"freed {_mb(freed)} ({len(plan.delete)} folders); kept {_mb(kept)}", highlight=False)
