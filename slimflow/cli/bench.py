"""``slimflow bench``: one model's latency and throughput, measured as the pipeline measures candidates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from slimflow.cli.app import DebugOpt, app, err, fail, out
from slimflow.models.core.env import apply_defaults
from slimflow.models.core.errors import ConfigError


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
    prompt_tokens: Annotated[
        int, typer.Option(help="Causal LMs: prompt length of each timed generation.")
    ] = 64,
    new_tokens: Annotated[int, typer.Option(help="Causal LMs: tokens generated per timed generation.")] = 64,
    generations: Annotated[int, typer.Option(help="Causal LMs: timed generations per batch size.")] = 8,
    isolate: Annotated[bool, typer.Option(help="Measure in a fresh process.")] = True,
    tune: Annotated[
        bool,
        typer.Option(
            help="ONNX models: first search intra-op threads, spinning, fusions and denormals per batch "
            "size (predictions checked against the defaults), save the best "
            "beside the model (runtime.json, used on this hardware by later loads and the server) and "
            "measure with them. Without it, a runtime.json tuned on this hardware is still used."
        ),
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store for models:/ references (default: $MLFLOW_TRACKING_URI).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full result here.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Measure one model's latency and throughput (p50/p90/p95/p99 with 95% CIs, examples/s)."""
    apply_defaults()
    try:
        from slimflow.models.optimize.config import BenchConfig, TuneConfig

        cfg = BenchConfig(
            batch_sizes=[int(x) for x in batch_sizes.split(",") if x.strip()],
            lengths=[x.strip() if x.strip() == "data" else int(x) for x in lengths.split(",") if x.strip()],
            threads=threads,
            iterations=iterations,
            warmup=warmup,
            time_budget_s=time_budget,
            min_iterations=min(20, iterations),
            isolate=isolate,
            tune=TuneConfig() if tune else None,
        )
    except ValueError as e:
        from pydantic import ValidationError

        from slimflow.models.config.loading import format_validation_error

        if isinstance(e, ValidationError):
            fail(ConfigError(format_validation_error(e, "bench options")), debug)
        fail(ConfigError(f"bench options: {e}"), debug)
    try:
        import json

        from slimflow.models.optimize.bench import bench as run_bench
        from slimflow.models.optimize.bench import format_table
        from slimflow.models.optimize.predictors import describe
        from slimflow.models.release.registry import resolve_candidate as resolve_model

        inputs = _bench_texts(texts, text_column)
        path = resolve_model(model, tracking_uri)
        info = describe(path)  # a clear error now rather than from the benchmark process
        from slimflow.models.families import get_family

        if get_family(info.task).generative:
            _bench_generation(path, inputs, cfg, prompt_tokens, new_tokens, generations, warmup, json_out)
            return
        err.print(f"measuring {path} on {len(inputs)} texts, threads={cfg.threads or 'all'}")
        result = run_bench(path, inputs, cfg, progress=not isolate)
    except FileNotFoundError as e:
        fail(ConfigError(str(e)), debug)
    except Exception as e:
        fail(e, debug)
    typer.echo(format_table([(Path(str(path)).name, result)]))
    _print_tuning(result)
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


def _print_tuning(result: dict[str, Any]) -> None:
    """The runtime settings search (``--tune``) and the settings each batch size ran with."""
    from slimflow.models.optimize.runtime_tuning import SessionSettings, TunedRuntime, format_trials

    for part, t in (result.get("runtime_tuning") or {}).items():
        where = "" if part == "." else f" ({part})"
        if not t.get("tuned"):
            err.print(f"not tuned{where}: {t.get('reason', '')}")
            continue
        if "cascade" in t.get("by_batch", {}):  # the two parts' spinning, timed together
            typer.echo("cascade parts' spinning searched together:")
            for trial in t["trials"]:
                figures = ", ".join(
                    f"{k[:-7]} p50 {v:.3f} ms" for k, v in trial.items() if k.endswith("_p50_ms")
                )
                mark = "  <- chosen" if trial["chosen"] else ""
                typer.echo(f"  {trial['spinning']:<48} {figures} ({trial['vs_own']:.2f}x){mark}")
            continue
        if t.get("copied_from"):  # an early exit's second part: no search of its own
            got = "; ".join(f"{b}: {label}" for b, label in t["by_batch"].items())
            typer.echo(f"runtime settings{where}: the {t['copied_from']} part's ({got})")
            continue
        tuned = TunedRuntime("", 0, {1: SessionSettings()}, t["trials"])
        typer.echo(f"runtime settings searched{where}:\n{format_trials(tuned)}")
    for s in result.get("settings", []):
        if s.get("session"):
            out.print(f"b{s['batch_size']} {s['length']}: ran with {s['session']}", highlight=False)


def _bench_generation(
    path: Path, texts: list[str], cfg: Any, prompt_tokens: int, new_tokens: int, generations: int,
    warmup: int, json_out: Path | None,
) -> None:  # fmt: skip
    """A causal LM: time to first token, per-token latency and decode tokens/s (gen_bench)."""
    import json

    from slimflow.models.optimize.gen_bench import GenBenchConfig, bench_candidate

    gcfg = GenBenchConfig(
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_sizes=cfg.batch_sizes,
        warmup=min(warmup, 100), iterations=generations, threads=cfg.threads,
    )  # fmt: skip
    err.print(
        f"generating with {path}: {prompt_tokens}-token prompt of the texts, {new_tokens} new tokens, "
        f"batch {','.join(map(str, gcfg.batch_sizes))}, threads={cfg.threads or 'all'}"
    )
    result = bench_candidate(path, texts, gcfg, cfg.isolate, cfg.host_lock_timeout_s, cfg.quiet_timeout_s)
    for s in result["settings"]:
        lo, hi = s["decode_tokens_per_s_ci"]
        out.print(
            f"batch {s['batch_size']}: decode {s['decode_tokens_per_s']:.1f} tokens/s [{lo:.1f}, {hi:.1f}], "
            f"per token p50 {s['token_p50_ms']:.2f} ms p95 {s['token_p95_ms']:.2f} ms, "
            f"TTFT p50 {s['ttft_p50_ms']:.1f} ms p95 {s['ttft_p95_ms']:.1f} ms, "
            f"prefill {s['prefill_tokens_per_s']:.0f} tokens/s",
            highlight=False,
        )
    out.print(f"threads {result['threads']}, pinned cores {result['cores'] or 'none'}, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB", highlight=False)  # fmt: skip
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        err.print(f"written to {json_out}")


def _bench_texts(path: Path | None, column: str) -> list[str]:
    from slimflow.models.data.config import DataConfig
    from slimflow.models.data.tables import load_raw

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
