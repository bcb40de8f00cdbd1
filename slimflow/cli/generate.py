"""``slimflow generate``: answers of a causal LM (a fine-tuned model folder, a candidate such as an
onnxruntime-genai build, or a registered model) to prompts given on the command line or in a file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from slimflow.cli.app import DebugOpt, app, err, fail, registry_store
from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import ConfigError


@app.command()
def generate(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            show_default=False,
            help="A causal-LM model or candidate folder, or models:/NAME@ALIAS (MLflow registry).",
        ),
    ],  # fmt: skip
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt", "-p", help="A user prompt (repeat for several); answered with the chat template."
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="JSONL file: one object per line with 'messages' (chat turns) or 'prompt' (text).",
        ),
    ] = None,  # fmt: skip
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write one JSON line per prompt (its fields plus 'answer')."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens generated per answer.")] = 256,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: every core).")] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow store for models:/ references (default: $MLFLOW_TRACKING_URI, else "
            "./.slimflow/mlflow.db, where `slimflow run` records)."
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Greedy answers of a causal LM; a single prompt streams to the terminal as it is generated."""
    apply_defaults()
    try:
        rows = _rows(prompt or [], input_file)
        from slimflow.models.families import get_family
        from slimflow.models.optimize.predictors import describe, load_predictor
        from slimflow.models.release.registry import resolve_candidate

        path = resolve_candidate(
            model, registry_store(tracking_uri) if model.startswith("models:/") else None
        )
        info = describe(path)
        if not get_family(info.task).generative:
            raise ConfigError(
                f"{model} is a {info.task} model; `slimflow generate` answers with causal LMs "
                "(task causal-lm): use `slimflow predict` or the model server's /predict"
            )
        predictor = load_predictor(path, threads)
    except FileNotFoundError as e:
        fail(ConfigError(str(e)), debug)
    except Exception as e:
        fail(e, debug)
    live = len(rows) == 1 and output is None
    sink = output.open("w", encoding="utf-8") if output else None
    t0, tokens = time.perf_counter(), 0
    try:
        for i, row in enumerate(rows, 1):
            ids = predictor.prompt_ids(row.get("messages") or row["prompt"])
            answer, count = "", 0
            for piece, so_far in predictor.stream(ids, max_tokens):
                answer, count = answer + piece, so_far
                if live:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            tokens += count
            if live:
                sys.stdout.write("\n")
            elif sink is not None:
                sink.write(json.dumps({**row, "answer": answer, "tokens": count}, ensure_ascii=False) + "\n")
                if i % 10 == 0 or i == len(rows):
                    err.print(f"{i}/{len(rows)} answered")
            else:
                typer.echo(json.dumps({"prompt": row.get("prompt") or row["messages"], "answer": answer},
                                      ensure_ascii=False))  # fmt: skip
    except Exception as e:
        fail(e, debug)
    finally:
        if sink is not None:
            sink.close()
    seconds = time.perf_counter() - t0
    rate = tokens / max(seconds, 1e-9)
    err.print(f"{len(rows)} answer(s), {tokens} tokens in {seconds:.1f} s ({rate:.1f} tokens/s)")
    if output:
        err.print(f"written to {output}")


def _rows(prompts: list[str], path: Path | None) -> list[dict[str, Any]]:
    if bool(prompts) == bool(path):
        raise ConfigError("give --prompt (one or more) or --input FILE.jsonl, not both")
    if not path:
        return [{"prompt": p} for p in prompts]
    if not path.is_file():
        raise ConfigError(f"--input: file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: line {n} is not valid JSON: {e.msg}") from None
            ok_messages = isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]
            if not (ok_messages or (isinstance(row, dict) and isinstance(row.get("prompt"), str))):
                raise ConfigError(f"{path}: line {n} needs 'messages' (a list of turns) or 'prompt' (text)")
            rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no prompts")
    return rows
