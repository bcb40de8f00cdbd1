"""Latency and throughput of one model, measured so the numbers can be trusted.

- Inputs are real test texts (lengths as they come, padded to the longest in the batch) and a fixed
  length (e.g. 128 tokens); tokenization happens before timing and is not measured.
- Warm-up calls first; then a fixed number of timed calls, cut short by a time budget (never below
  ``min_iterations``).
- Threads are set on the runtime and read back; the process can be pinned to as many cores.
- By default each model runs in a fresh process: its own memory peak, no thread pools or caches
  shared with the pipeline or the previous model.
- Figures: p50/p90/p95/p99, mean, std, throughput (examples/s), bootstrap 95% CIs of p50 and p95,
  model file size, peak RSS, and the hardware they were measured on.
- One measurement per host at a time (a file lock shared by every pipeline of this user), and each
  setting records how much CPU *other* processes used meanwhile and the load average before and
  after. A setting measured while others were busy, or whose p95 CI is too wide, is measured again;
  if it stays so, it is marked unreliable with the reason, and gates neither pass nor fail on it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from slimflow.models.core.provenance import hardware, hardware_fingerprint
from slimflow.models.optimize.config import BenchConfig
from slimflow.models.optimize.predictors import load_predictor
from slimflow.models.optimize.timing import time_calls

PERCENTILES = (50, 90, 95, 99)


def visible_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def resolve_threads(threads: int | None) -> int:
    return threads or len(visible_cores())


def pin(threads: int) -> list[int]:
    """Pin this process to ``threads`` of the cores it may use; returns them ([] if unsupported)."""
    cores = visible_cores()[:threads]
    try:
        os.sched_setaffinity(0, cores)
    except (AttributeError, OSError):
        return []
    return cores


def summarize(times_s: np.ndarray, batch_size: int, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Percentiles (ms), mean/std, throughput and bootstrap 95% CIs of p50 and p95."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings to summarize")
    out: dict[str, float] = {f"p{q}_ms": float(np.percentile(ms, q)) for q in PERCENTILES}
    out.update(
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()),
        iterations=int(ms.size),
        throughput_eps=float(batch_size * ms.size / (ms.sum() / 1e3)),
    )
    rng = np.random.default_rng(seed)
    samples = rng.choice(ms, size=(n_boot, ms.size), replace=True)
    for q in (50, 95):
        stats = np.percentile(samples, q, axis=1)
        out[f"p{q}_ci_low_ms"] = float(np.percentile(stats, 2.5))
        out[f"p{q}_ci_high_ms"] = float(np.percentile(stats, 97.5))
    return out


def make_inputs(
    predictor: Any, texts: list[str], batch_size: int, length: str | int, count: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """``count`` distinct batches of random test texts (cycled during timing)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        idx = rng.choice(len(texts), size=batch_size, replace=len(texts) < batch_size)
        chunk = [texts[i] for i in idx]
        out.append(predictor.encode(chunk, length=None if length == "data" else int(length)))
    return out


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    """Peak RSS of this process image. Linux's getrusage ru_maxrss is inherited through fork+exec
    (a child of a 4 GB pipeline would report 4 GB), so read VmHWM, which exec resets."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def effective_threads(predictor: Any) -> int:
    """Intra-op threads the runtime reports it will use (read back, not what we asked for)."""
    session = getattr(predictor, "session", None)
    if session is not None:
        return int(session.get_session_options().intra_op_num_threads)
    import torch

    return int(torch.get_num_threads())


def bench_model(
    path: str | Path, texts: list[str], cfg: BenchConfig, progress: bool = False
) -> dict[str, Any]:
    """Measure the model at ``path`` in this process (see ``bench`` for the isolated version)."""

    threads = resolve_threads(cfg.threads)
    before = visible_cores()
    cores = pin(threads) if cfg.pin_cores else []
    try:
        return _measure(path, texts, cfg, threads, cores, progress)
    finally:
        if cores:  # in-process use (isolate: false) must not leave the caller pinned
            os.sched_setaffinity(0, before)


def _measure(
    path: str | Path, texts: list[str], cfg: BenchConfig, threads: int, cores: list[int], progress: bool
) -> dict[str, Any]:
    tuning = tune_folder(path, texts, cfg, threads) if cfg.tune is not None else {}
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    predictor = load_predictor(path, threads)  # with the settings just tuned (runtime.json)
    load_s = time.perf_counter() - t0
    settings = []
    combos = [(b, n) for b in cfg.batch_sizes for n in cfg.lengths]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(combos), desc=f"bench {Path(path).name}", unit="setting", leave=False)
    for b, n in combos:
        used = n
        if n != "data" and int(n) > predictor.position_limit:
            used = predictor.position_limit  # the model has no positions beyond this; recorded below
        inputs = make_inputs(predictor, texts, b, used, min(cfg.iterations, 50), cfg.seed)
        attempt = 0
        while True:  # measured again once if others were busy or the CI is wide
            attempt += 1
            watch = CpuWatch()
            times = time_calls(
                predictor.logits, inputs, cfg.warmup, cfg.iterations, cfg.time_budget_s, cfg.min_iterations,
                cfg.target_ci,
            )  # fmt: skip
            others = watch.others_share()
            stats = summarize(times, b, cfg.bootstrap, cfg.seed)
            problems = reliability_problems(stats, others, cfg)
            if not problems or attempt == 2:
                break
        tokens = float(np.mean([x["input_ids"].shape[1] for x in inputs]))
        settings.append(
            {
                "batch_size": b,
                "length": n,
                "length_used": used,
                "mean_tokens": tokens,
                **stats,
                "others_cpu_share": others,
                "attempts": attempt,
                "reliable": not problems,
                "unreliable_reason": "; ".join(problems),
                "session": session_label(predictor, b),
            }
        )
        if bar:
            bar.update()
    if bar:
        bar.close()
    hw = hardware()
    return {
        "model": str(path),
        "runtime": predictor.info.runtime,
        "target": predictor.info.target,
        "variant": predictor.info.variant,
        "threads": threads,
        "threads_effective": effective_threads(predictor),
        "pinned_cores": cores,
        "isolated": False,
        "file_bytes": predictor.file_bytes,
        "load_seconds": load_s,
        "rss_before_load_mb": rss0,
        "peak_rss_mb": _peak_rss_mb(),
        "hardware": hw,
        "hardware_fingerprint": hardware_fingerprint(hw),
        "settings": settings,
        "runtime_tuning": tuning,
    }


def session_label(predictor: Any, rows: int) -> str:
    """The ONNX Runtime settings a batch of ``rows`` runs with ("" for other runtimes); a cascade
    names both parts'."""
    if hasattr(predictor, "settings_for"):
        return str(predictor.settings_for(rows).label())
    parts = [(n, getattr(predictor, n, None)) for n in ("fast", "fallback")]
    labels = [f"{n}: {session_label(p, rows)}" for n, p in parts if p is not None and session_label(p, rows)]
    return "; ".join(labels)


def _tune_cascade_spinning(folder: Path, texts: list[str], cfg: BenchConfig, threads: int) -> dict[str, Any]:
    """Two ONNX Runtime sessions on the same cores: pool threads one part leaves spinning slow the
    other part down (measured: a cascade's p95 7.0 ms with both parts spinning, 3.6 ms with the
    fallback's spinning off). Each part was tuned alone; this times the whole cascade on test texts
    with every spinning pair and keeps the parts' own choice unless a pair is ``min_gain`` faster
    (geometric mean of the p50 ratios over the tuned batch sizes)."""
    import dataclasses

    from slimflow.models.optimize.runtime_tuning import load_tuned

    assert cfg.tune is not None
    own = {p: load_tuned(folder / p) for p in ("fast", "fallback")}
    if any(t is None for t in own.values()):
        return {
            "tuned": False,
            "reason": "both parts must be ONNX Runtime models to tune their spinning together",
        }
    base = {p: t for p, t in own.items() if t is not None}

    def apply(spins: tuple[bool, bool] | None) -> None:
        for (p, t), spin in zip(base.items(), spins or (None, None), strict=True):
            by = {
                b: s if spin is None else dataclasses.replace(s, spinning=spin) for b, s in t.by_batch.items()
            }
            dataclasses.replace(t, by_batch=by).save(folder / p)

    sizes = cfg.tune.batch_sizes or cfg.batch_sizes
    combos: list[tuple[bool, bool] | None] = [None] + [
        (f, b) for f in cfg.tune.spinning for b in cfg.tune.spinning
    ]
    inputs: dict[int, list[dict[str, np.ndarray]]] = {}
    p50: dict[int, dict[int, float]] = {}
    for i, combo in enumerate(combos):
        apply(combo)
        predictor = load_predictor(folder, threads)
        if not inputs:
            inputs = {b: make_inputs(predictor, texts, b, "data", 20, cfg.seed) for b in sizes}
        for b, batches in inputs.items():
            times = time_calls(predictor.logits, batches, 3, 100_000, cfg.tune.seconds, 5)
            p50.setdefault(i, {})[b] = float(np.median(times))
        del predictor
    score = {i: float(np.exp(np.mean([np.log(p50[i][b] / p50[0][b]) for b in sizes]))) for i in p50}
    best = min(score, key=score.get)
    chosen = best if 1 - score[best] >= cfg.tune.min_gain else 0
    apply(combos[chosen])

    def label(c: tuple[bool, bool] | None) -> str:
        if c is None:
            return "each part's own"
        return f"fast spinning {'on' if c[0] else 'off'}, fallback spinning {'on' if c[1] else 'off'}"

    trials = [
        {"spinning": label(c), **{f"b{b}_p50_ms": p50[i][b] * 1e3 for b in sizes}, "vs_own": score[i],
         "chosen": i == chosen}
        for i, c in enumerate(combos)
    ]  # fmt: skip
    return {"tuned": True, "by_batch": {"cascade": label(combos[chosen])}, "trials": trials}


def _cascade_spec(folder: Path) -> dict[str, Any]:
    """The cascade's ``cascade.json`` ({} when unreadable: its parts are then tuned from scratch)."""
    from slimflow.models.optimize.cascade import read_spec

    try:
        return read_spec(folder)
    except (OSError, ValueError):
        return {}


def _copy_tuning(fast: Path, fallback: Path) -> dict[str, Any]:
    """The fast part's settings for a second part that cannot be timed on texts alone (it reads the
    fast part's outputs): two cuts of one graph, the same shapes per batch size. Their spinning is
    then searched together with the whole route."""
    from slimflow.models.optimize.runtime_tuning import load_tuned

    tuned = load_tuned(fast)
    if tuned is None:
        return {"tuned": False, "reason": "the fast part was not tuned"}
    tuned.save(fallback)
    return {"tuned": True, "copied_from": "fast", "by_batch": tuned.summary(), "trials": []}


def _reuse_tuning(source: Path | None, part: Path, threads: int) -> dict[str, Any] | None:
    """A cascade part is a copy of a candidate the benchmark usually tuned just before: when that
    candidate's settings were measured here, with this thread budget, on a byte-identical model
    file, they are copied instead of searched again. None: tune the part."""
    from slimflow.models.core.modelfiles import file_sha256
    from slimflow.models.optimize.predictors import describe
    from slimflow.models.optimize.runtime_tuning import load_tuned

    if source is None or not source.is_dir():
        return None
    tuned = load_tuned(source)
    if tuned is None or tuned.thread_budget != threads:
        return None
    try:
        name = describe(part).model_file or "model.onnx"
        a, b = source / name, part / name
        if a.stat().st_size != b.stat().st_size or file_sha256(a) != file_sha256(b):
            return None
    except (OSError, ValueError):
        return None
    tuned.save(part)
    return {"tuned": True, "reused_from": str(source), "by_batch": tuned.summary(), "trials": tuned.trials}


def tune_folder(path: str | Path, texts: list[str], cfg: BenchConfig, threads: int) -> dict[str, Any]:
    """Search the ONNX Runtime settings of the model at ``path`` (each part of a cascade) per batch
    size and save the best beside it (``runtime.json``). Returns, per tuned folder, the choice and
    every trial; models of other runtimes are left alone (listed with the reason)."""
    from slimflow.models.optimize.predictors import OrtPredictor, describe
    from slimflow.models.optimize.runtime_tuning import tune
    from slimflow.models.optimize.targets import get_target

    assert cfg.tune is not None
    p = Path(path)
    folder = p.parent if p.is_file() else p
    info = describe(p)
    if info.runtime == "cascade":
        out: dict[str, Any] = {}
        spec = _cascade_spec(folder)
        sources = {k: Path(v) for k, v in (spec.get("sources") or {}).items() if isinstance(v, str)}
        for part in ("fast", "fallback"):
            # an early exit's second part runs on the first part's hidden state, not on texts
            if part == "fallback" and spec.get("fallback_reads") == "fast":
                out[part] = _copy_tuning(folder / "fast", folder / part)
                continue
            reused = _reuse_tuning(sources.get(part), folder / part, threads)
            if reused is not None:
                out[part] = reused
                continue
            for k, v in tune_folder(folder / part, texts, cfg, threads).items():
                out[f"{part}/{k}" if k != "." else part] = v
        out["."] = _tune_cascade_spinning(folder, texts, cfg, threads)
        return out
    if info.runtime != "onnxruntime":
        return {".": {"tuned": False, "reason": f"{info.runtime} models are not tuned (ONNX Runtime only)"}}
    model_path = p if p.is_file() else folder / (info.model_file or "model.onnx")
    from slimflow.models.optimize.predictors import load_tokenizer

    predictor = OrtPredictor(model_path, load_tokenizer(folder, info.runtime), info, threads, tuned=False)
    names = predictor.input_names
    sizes = cfg.tune.batch_sizes or cfg.batch_sizes
    inputs = {b: make_inputs(predictor, texts, b, "data", 20, cfg.seed) for b in sizes}
    target = get_target(info.target)

    class _Run:
        def __init__(self, settings: Any) -> None:
            self.session = target.session(model_path, settings=settings)

        def run(self, x: dict[str, np.ndarray]) -> Any:
            return self.session.run(None, {k: v for k, v in x.items() if k in names})

    del predictor
    tuned = tune(_Run, inputs, cfg.tune, threads, hardware_fingerprint(hardware()))
    tuned.save(folder)
    return {".": {"tuned": True, "by_batch": tuned.summary(), "trials": tuned.trials}}


class CpuWatch:
    """CPU time other processes use while this one measures: the machine's busy time minus our own."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.t0 = time.perf_counter()
        self.sys0 = self._busy()
        self.own0 = self._own()

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def _own(self) -> float:
        t = self._me.cpu_times()
        return float(t.user + t.system)

    def others_share(self) -> float:
        """Share of all the machine's CPUs that other processes kept busy since the start (0..1)."""
        wall = time.perf_counter() - self.t0
        cpus = self._psutil.cpu_count() or 1
        other = (self._busy() - self.sys0) - (self._own() - self.own0)
        return max(0.0, min(1.0, other / (wall * cpus))) if wall > 0 else 0.0


def reliability_problems(stats: dict[str, float], others: float, cfg: BenchConfig) -> list[str]:
    problems = []
    if others > cfg.max_other_load:
        problems.append(f"other processes used {others:.0%} of the CPU (> {cfg.max_other_load:.0%})")
    width = (stats["p95_ci_high_ms"] - stats["p95_ci_low_ms"]) / max(stats["p95_ms"], 1e-9)
    if width > cfg.max_ci_width:
        problems.append(f"p95 95% CI is {width:.0%} of p95 wide (> {cfg.max_ci_width:.0%})")
    return problems


def host_lock_path() -> Path:
    """One lock per host and user: every pipeline's benchmarks queue on it."""
    from slimflow.models.core.locks import bench_lock_path

    return bench_lock_path()


def bench(path: str | Path, texts: list[str], cfg: BenchConfig, progress: bool = False) -> dict[str, Any]:
    """Measure ``path``; in a fresh process when ``cfg.isolate`` (the default). Holds the host's
    benchmark lock (two pipelines never time models at once on one machine) and waits for heavy
    work of other pipelines on this host (training, export, quantization) to end first."""
    from slimflow.models.core.locks import measuring_alone

    load_before = os.getloadavg()
    with measuring_alone(cfg.host_lock_timeout_s, cfg.quiet_timeout_s) as alone:
        result = _bench(path, texts, cfg, progress)
    result.update(alone)
    result["load_avg_before"] = list(load_before)
    result["load_avg_after"] = list(os.getloadavg())
    return result


def _bench(path: str | Path, texts: list[str], cfg: BenchConfig, progress: bool = False) -> dict[str, Any]:
    if not cfg.isolate:
        return bench_model(path, texts, cfg, progress)
    threads = resolve_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="slimflow-bench-") as d:
        tfile, cfile, ofile = (Path(d) / n for n in ("texts.json", "config.json", "out.json"))
        tfile.write_text(json.dumps(texts), encoding="utf-8")
        cfile.write_text(cfg.model_dump_json(), encoding="utf-8")
        env = {
            **os.environ,
            # set before the child imports torch/onnxruntime, so their pools start at this size
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        cmd = [
            sys.executable,
            "-m",
            "slimflow.models.optimize.bench",
            str(path),
            str(tfile),
            str(cfile),
            str(ofile),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not ofile.exists():
            lines = (proc.stderr or proc.stdout or "").strip().splitlines() or ["(no output)"]
            raise RuntimeError(
                f"benchmark of {path} failed (exit {proc.returncode}): {lines[-1]}\n" + "\n".join(lines[-12:])
            )
        result = json.loads(ofile.read_text(encoding="utf-8"))
    result["isolated"] = True
    return result


def setting(result: dict[str, Any], batch_size: int, length: str | int = "data") -> dict[str, Any]:
    """The figures of one (batch size, length) setting of a bench result."""
    for s in result["settings"]:
        if s["batch_size"] == batch_size and s["length"] == length:
            return s
    raise KeyError(f"no setting batch={batch_size} length={length} in this benchmark")


def flat_metrics(result: dict[str, Any], prefix: str = "bench.") -> dict[str, float]:
    """MLflow metric names like ``bench.b1_data.p50_ms``."""
    out = {f"{prefix}file_mb": result["file_bytes"] / 2**20, f"{prefix}peak_rss_mb": result["peak_rss_mb"]}
    for s in result["settings"]:
        key = f"{prefix}b{s['batch_size']}_{s['length']}."
        out.update(
            {
                key + k: float(v)
                for k, v in s.items()
                if k not in ("batch_size", "length", "length_used") and isinstance(v, int | float)
            }
        )
    return out


def format_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """A plain-text table of several bench results (one row per model and setting)."""
    head = (
        f"{'model':<28} {'setting':<12} {'p50 ms':>8} {'p50 95% CI':>17} "
        f"{'p95 ms':>8} {'p99 ms':>8} {'ex/s':>9}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results:
        for s in r["settings"]:
            ci = f"[{s['p50_ci_low_ms']:.2f}, {s['p50_ci_high_ms']:.2f}]"
            lines.append(
                f"{name[:28]:<28} {'b' + str(s['batch_size']) + ' ' + str(s['length']):<12} "
                f"{s['p50_ms']:>8.2f} {ci:>17} {s['p95_ms']:>8.2f} {s['p99_ms']:>8.2f} "
                f"{s['throughput_eps']:>9.1f}"
            )
    return "\n".join(lines)


def _child(argv: list[str]) -> None:
    model, texts_file, cfg_file, out_file = argv
    cfg = BenchConfig.model_validate_json(Path(cfg_file).read_text(encoding="utf-8"))
    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    result = bench_model(model, texts, cfg)
    Path(out_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    from slimflow.models.core.env import apply_defaults

    apply_defaults()
    _child(sys.argv[1:])
