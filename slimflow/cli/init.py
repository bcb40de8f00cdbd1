"""``slimflow init --data FILE``: a commented config for your own data, validated, and the next command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from slimflow.cli.app import DebugOpt, app, err, fail, out
from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import ConfigError, DataValidationError

DEFAULT_TEACHER = "packaged:all-MiniLM-L6-v2"  # the packaged teacher: works offline


@app.command()
def init(
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Your labeled text: .csv/.tsv, .jsonl or .parquet.", show_default=False
        ),
    ],
    text_column: Annotated[
        str | None, typer.Option(help="Column holding the text (default: detected).", show_default=False)
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option(help="Column holding the class label (default: detected).", show_default=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Config file to write (default: NAME.yaml here).", show_default=False
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Pipeline and registered-model name (default: from the file name).", show_default=False
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Teacher to fine-tune: packaged:NAME, a folder or a hub id.")
    ] = DEFAULT_TEACHER,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure", help="Time a few teacher training steps here to size the run (~10 s)."
        ),
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config file.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a commented pipeline config for your own data file, validate the data, print the next command.

    Finds the text and label columns (or checks the ones given), the classes and their counts, the
    text lengths in the teacher's tokens, and this machine's training speed; sizes epochs, sequence
    length and (on a slow machine with a large file) a row cap from them.
    """
    apply_defaults()
    try:
        from slimflow.models.core.names import check_name
        from slimflow.models.pipeline_config import load_config
        from slimflow.models.starter import default_name, profile, render, size_run

        prof = profile(data, text_column, label_column)
        pipeline = check_name(name, "--name") if name else default_name(data)
        dest = output or Path(f"{pipeline}.yaml")
        if dest.exists() and not force:
            raise ConfigError(f"{dest} exists; choose another --output or pass --force to overwrite it")
        if dest.suffix.lower() not in (".yaml", ".yml"):
            raise ConfigError(f"--output {dest}: the config is YAML; name it *.yaml")
        err.print(
            f"{escape(str(data))}: {prof.rows} rows, text column [cyan]{escape(prof.text_column)}[/], "
            f"label column [cyan]{escape(prof.label_column)}[/], classes "
            + ", ".join(f"{escape(k)} ({v})" for k, v in prof.counts.items()),
            highlight=False,
        )
        for note in prof.notes:
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        cache = Path(".slimflow").resolve()
        if measure:
            err.print("timing a few training steps of the teacher on this machine ...")
        sizing = size_run(prof, model, cache, measure=measure)
        # data.source is read relative to the folder `slimflow run` starts in: this one
        data_abs = data.resolve()
        data_ref = (
            str(data_abs.relative_to(Path.cwd())) if data_abs.is_relative_to(Path.cwd()) else str(data_abs)
        )
        text = render(prof, sizing, pipeline, model, data_ref)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(tmp)  # what was written must load, or nothing is left behind
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)
        out.print(f"wrote {dest}", highlight=False)

        from slimflow.cli.data import validate_and_report

        try:
            prepared = validate_and_report(cfg, cfg.workdir_path() / "validate")
        except DataValidationError:
            err.print(f"[yellow]the data fails its checks: edit {escape(str(dest))} or the data[/]")
            raise
        out.print(f"split: {prepared.counts}", highlight=False)
        if sizing.teacher_minutes is not None:
            out.print(
                f"fine-tuning the teacher should take about {sizing.teacher_minutes:.0f} min here",
                highlight=False,
            )
        out.print(f"next: [bold]slimflow run -c {escape(str(dest))}[/]", highlight=False)
    except Exception as e:
        fail(e, debug)
