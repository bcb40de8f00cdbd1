"""Generation speed of a causal LM, measured as users feel it.

One generation = a fixed prompt of ``prompt_tokens`` tokens (real test text, cut or repeated to
that length), then exactly ``new_tokens`` greedy tokens (end tokens do not stop it), at each batch
size. Per setting: warm-up generations, then timed ones; figures:

- time to first token (TTFT: the prefill plus the first token) p50/p95 with bootstrap 95% CIs,
- per-token decode latency p50/p95 with CIs (every later token of every timed generation),
- decode tokens/s = batch / p50 per-token latency, with the CI that follows from the p50's,
- prefill tokens/s = batch * prompt tokens / p50 TTFT,
- peak RSS of the process, the CPU share other processes used meanwhile.

Threads are set on the runtime and the process is pinned to as many cores; runners share the
``timed(batch, new_tokens)`` interface of ``slimflow.models.optimize.genai``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from slimflow.models.optimize.bench import CpuWatch, _peak_rss_mb, pin, resolve_threads, summarize
from slimflow.models.optimize.config import GenBenchConfig

__all__ = ["GenBenchConfig", "bench_candidate", "bench_generation", "fixed_prompt", "setting"]


def fixed_prompt(texts_ids: list[list[int]], length: int) -> list[int]:
    """``length`` tokens of real text: the given token lists joined, repeated if too short."""
    flat = [t for ids in texts_ids for t in ids]
    if not flat:
        raise ValueError("no text to build a prompt from")
    while len(flat) < length:
        flat = flat + flat
    return flat[:length]


def bench_generation(runner: Any, prompt: list[int], cfg: GenBenchConfig) -> dict[str, Any]:
    """Figures per batch size (``settings``), plus threads, cores and peak RSS."""
    threads = resolve_threads(cfg.threads)
    cores = pin(threads) if cfg.pin_cores else []
    settings = []
    for b in cfg.batch_sizes:
        batch = [list(prompt) for _ in range(b)]
        for _ in range(cfg.warmup):
            runner.timed(batch, cfg.new_tokens)
        watch = CpuWatch()
        ttft, steps = [], []
        for _ in range(cfg.iterations):
            first, rest = runner.timed(batch, cfg.new_tokens)
            ttft.append(first)
            steps += rest
        t = summarize(np.asarray(ttft), b, cfg.bootstrap, cfg.seed)
        s = summarize(np.asarray(steps), b, cfg.bootstrap, cfg.seed)
        settings.append(
            {
                "batch_size": b,
                "prompt_tokens": len(prompt),
                "new_tokens": cfg.new_tokens,
                "generations": cfg.iterations,
                "ttft_p50_ms": t["p50_ms"],
                "ttft_p95_ms": t["p95_ms"],
                "ttft_p50_ci_ms": [t["p50_ci_low_ms"], t["p50_ci_high_ms"]],
                "ttft_p95_ci_ms": [t["p95_ci_low_ms"], t["p95_ci_high_ms"]],
                "token_p50_ms": s["p50_ms"],
                "token_p95_ms": s["p95_ms"],
                "token_p50_ci_ms": [s["p50_ci_low_ms"], s["p50_ci_high_ms"]],
                "token_p95_ci_ms": [s["p95_ci_low_ms"], s["p95_ci_high_ms"]],
                "decode_tokens_per_s": b * 1e3 / s["p50_ms"],
                # the CI of a rate follows from its latency's: low rate <- high latency
                "decode_tokens_per_s_ci": [b * 1e3 / s["p50_ci_high_ms"], b * 1e3 / s["p50_ci_low_ms"]],
                "prefill_tokens_per_s": b * len(prompt) * 1e3 / t["p50_ms"],
                "other_cpu_share": watch.others_share(),
                # the candidate search's latency keys: a generator's latency is per decoded token
                "length": "data",
                "p50_ms": s["p50_ms"],
                "p95_ms": s["p95_ms"],
                "p50_ci_low_ms": s["p50_ci_low_ms"],
                "p50_ci_high_ms": s["p50_ci_high_ms"],
                "p95_ci_low_ms": s["p95_ci_low_ms"],
                "p95_ci_high_ms": s["p95_ci_high_ms"],
                "throughput_eps": b * 1e3 / s["p50_ms"],
            }
        )
    return {"threads": threads, "cores": cores, "peak_rss_mb": _peak_rss_mb(), "settings": settings}


def setting(result: dict[str, Any], batch_size: int) -> dict[str, Any]:
    for s in result["settings"]:
        if s["batch_size"] == batch_size:
            return s
    raise KeyError(f"no benchmark at batch size {batch_size}")


def measure(path: str | Path, prompts: list[str], cfg: GenBenchConfig) -> dict[str, Any]:
    """Load the generative model at ``path`` here and time it on a prompt built from ``prompts``
    (chat turns as JSON, or text); adds its size and the hardware."""
    from slimflow.models.core.provenance import hardware, hardware_fingerprint
    from slimflow.models.optimize.predictors import load_predictor

    threads = resolve_threads(cfg.threads)
    predictor = load_predictor(path, threads)
    prompt = fixed_prompt([predictor.prompt_ids(p) for p in prompts[:200]], cfg.prompt_tokens)
    result = bench_generation(predictor.runner, prompt, cfg)
    return {**result, "file_bytes": predictor.file_bytes, "hardware": hardware(),
            "hardware_fingerprint": hardware_fingerprint()}  # fmt: skip


def bench_candidate(
    path: str | Path, prompts: list[str], cfg: GenBenchConfig, isolate: bool = True,
    lock_timeout_s: float = 3600, quiet_timeout_s: float = 1800,
) -> dict[str, Any]:  # fmt: skip
    """``measure`` in a fresh process (``isolate``: no thread pools, caches or other threads of the
    pipeline's process share the cores; the classifier benchmark does the same), holding the host's
    benchmark lock and after other pipelines' heavy work on this host has ended."""
    from slimflow.models.core.locks import measuring_alone

    with measuring_alone(lock_timeout_s, quiet_timeout_s) as alone:
        if not isolate:
            result = measure(path, prompts, cfg)
        else:
            threads = resolve_threads(cfg.threads)
            with tempfile.TemporaryDirectory(prefix="slimflow-genbench-") as d:
                pfile, cfile, ofile = (Path(d) / n for n in ("prompts.json", "config.json", "out.json"))
                pfile.write_text(json.dumps(prompts[:200]), encoding="utf-8")
                cfile.write_text(
                    cfg.model_copy(update={"threads": threads}).model_dump_json(), encoding="utf-8"
                )
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                       "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
                cmd = [sys.executable, "-m", "slimflow.models.optimize.gen_bench", str(path), str(pfile),
                       str(cfile), str(ofile)]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0 or not ofile.exists():
                    lines = (proc.stderr or proc.stdout or "").strip().splitlines() or ["(no output)"]
                    raise RuntimeError(
                        f"generation benchmark of {path} failed (exit {proc.returncode}): {lines[-1]}\n"
                        + "\n".join(lines[-12:])
                    )
                result = json.loads(ofile.read_text(encoding="utf-8"))
    result.update(alone, isolated=isolate)
    return result


def _child(argv: list[str]) -> None:
    path, prompts_file, cfg_file, out_file = argv
    cfg = GenBenchConfig.model_validate_json(Path(cfg_file).read_text(encoding="utf-8"))
    prompts = json.loads(Path(prompts_file).read_text(encoding="utf-8"))
    Path(out_file).write_text(json.dumps(measure(path, prompts, cfg)), encoding="utf-8")


if __name__ == "__main__":
    from slimflow.models.core.env import apply_defaults

    apply_defaults()
    _child(sys.argv[1:])
