"""Benchmark statistics, timing loop, thread settings, isolation; targets; candidate choice."""

from __future__ import annotations

import os

import numpy as np
import pytest

from slimflow.models.optimize.bench import bench, bench_model, setting, summarize, time_calls
from slimflow.models.optimize.candidates import CandidateSpec, pareto_front, plan, select
from slimflow.models.optimize.config import BenchConfig, ExportConfig, OptimizeConfig
from slimflow.models.optimize.targets import TARGETS, _probe, cpu_int8_preset, get_target
from tests.conftest import make_reviews

TEXTS = make_reviews(60)["review"].tolist()
FAST = {"warmup": 2, "iterations": 12, "min_iterations": 5, "time_budget_s": None, "bootstrap": 200,
        "tune": None}  # fmt: skip


@pytest.fixture(scope="module")
def onnx_candidate(tmp_path_factory):
    """A tiny model exported to ONNX (a runnable folder: model.onnx + tokenizer + config)."""
    from slimflow.models.optimize.export import export_onnx
    from tests.conftest import build_tiny_model, train_tiny_teacher

    tmp = tmp_path_factory.mktemp("bench")
    _, res = train_tiny_teacher(tmp, build_tiny_model(tmp / "base"), rows=120, epochs=1)
    export_onnx(res.model_dir, tmp / "onnx", ExportConfig(), get_target("cpu"), TEXTS[:8], threads=1)
    return tmp / "onnx", res.model_dir


# ------------------------------------------------------------------------------------- statistics
def test_summary_percentiles_are_ordered_and_cis_bracket_them():
    rng = np.random.default_rng(1)
    times = rng.lognormal(mean=np.log(0.005), sigma=0.4, size=500)
    s = summarize(times, batch_size=4, n_boot=500, seed=0)
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert s["p50_ci_low_ms"] <= s["p50_ms"] <= s["p50_ci_high_ms"]
    assert s["p95_ci_low_ms"] <= s["p95_ms"] <= s["p95_ci_high_ms"]
    assert s["p50_ci_high_ms"] - s["p50_ci_low_ms"] < 0.2 * s["p50_ms"]  # 500 samples: a tight CI
    assert s["throughput_eps"] == pytest.approx(4 * 500 / times.sum())
    assert s["p50_ms"] == pytest.approx(np.median(times) * 1e3)
    assert s["iterations"] == 500


def test_timing_loop_warms_up_then_stops_at_iterations_or_budget():
    calls = []
    t = time_calls(calls.append, ["a", "b", "c"], warmup=4, iterations=10, budget_s=None, min_iterations=5)
    assert len(t) == 10 and len(calls) == 14
    assert calls[:4] == ["a", "b", "c", "a"]  # inputs cycled from the warm-up on

    import time as _time

    def slow(_):
        _time.sleep(0.01)

    t = time_calls(slow, [0], warmup=0, iterations=1000, budget_s=0.05, min_iterations=3)
    assert 3 <= len(t) < 20  # cut by the budget, never under min_iterations
    t = time_calls(slow, [0], warmup=0, iterations=1000, budget_s=1e-9, min_iterations=6)
    assert len(t) == 6


# ------------------------------------------------------------------------------------- measuring
def test_bench_in_process_honours_threads_and_reports_every_setting(onnx_candidate):
    onnx_dir, torch_dir = onnx_candidate
    cfg = BenchConfig(
        batch_sizes=[1, 4], lengths=["data", 128], threads=1, pin_cores=False, isolate=False, **FAST
    )
    for path in (onnx_dir, torch_dir):
        r = bench_model(path, TEXTS, cfg)
        assert r["threads"] == 1 and r["threads_effective"] == 1, path
        assert [(s["batch_size"], s["length"]) for s in r["settings"]] == [
            (1, "data"),
            (1, 128),
            (4, "data"),
            (4, 128),
        ]
        fixed = setting(r, 4, 128)
        assert fixed["length_used"] == 64  # the tiny model has 64 positions; recorded, not hidden
        assert setting(r, 1)["p50_ms"] <= setting(r, 1)["p99_ms"]
        assert r["file_bytes"] > 0 and r["peak_rss_mb"] > 0 and r["hardware_fingerprint"]
    assert bench_model(onnx_dir, TEXTS, cfg)["runtime"] == "onnxruntime"
    if hasattr(os, "sched_setaffinity"):  # pinned while measuring in-process, unpinned after
        before = os.sched_getaffinity(0)
        r = bench_model(onnx_dir, TEXTS, cfg.model_copy(update={"pin_cores": True}))
        assert len(r["pinned_cores"]) == 1 and os.sched_getaffinity(0) == before


def test_isolated_bench_runs_in_a_pinned_child_process(onnx_candidate):
    onnx_dir, _ = onnx_candidate
    cfg = BenchConfig(batch_sizes=[1], lengths=["data"], threads=1, isolate=True, **FAST)
    ballast = np.ones((400, 2**20 // 8))  # 400 MB in this process: not the child's memory
    r = bench(onnx_dir, TEXTS, cfg)
    assert r["isolated"] is True and r["threads_effective"] == 1
    assert r["peak_rss_mb"] < 400, r["peak_rss_mb"]  # getrusage would report the parent's peak
    del ballast
    if hasattr(os, "sched_setaffinity"):
        assert len(r["pinned_cores"]) == 1
    assert len(os.sched_getaffinity(0)) >= 1  # this (parent) process was not pinned


def test_isolated_bench_failure_says_why(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not an onnx graph")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="benchmark of .* failed"):
        bench(tmp_path, TEXTS, BenchConfig(batch_sizes=[1], lengths=["data"], **FAST))


# ----------------------------------------------------------------------------------------- targets
def test_gpu_targets_are_reported_unavailable_with_a_reason_here():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's onnxruntime has CUDA")
    ok, why = get_target("cuda").availability()
    assert not ok and "CUDAExecutionProvider" in why
    ok, why = get_target("tensorrt").availability()
    assert not ok and "TensorrtExecutionProvider" in why
    assert get_target("cpu").availability() == (True, "")


def test_a_listed_but_unusable_provider_is_unavailable_not_silently_cpu(monkeypatch):
    """onnxruntime-gpu lists CUDA on machines without a GPU: the probe must run a graph on it."""
    import onnxruntime as ort

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["FakeGpuExecutionProvider", "CPUExecutionProvider"]
    )
    _probe.cache_clear()
    try:
        ok, why = _probe("FakeGpuExecutionProvider", ())
    finally:
        _probe.cache_clear()
    assert not ok and "FakeGpuExecutionProvider" in why


def test_unknown_target_and_presets():
    with pytest.raises(ValueError, match="known targets: cpu, cpu-avx2, .*cuda, tensorrt"):
        get_target("tpu")
    assert {"cpu", "cuda", "tensorrt", "cpu-avx2", "cpu-avx512-vnni", "cpu-arm64"} <= set(TARGETS)
    assert cpu_int8_preset() in ("avx2", "avx512", "avx512_vnni", "arm64")
    # quantizers read the preset from the target: 'cpu' is this machine's, resolved once where the
    # plan is made; a named CPU family is that family's whatever machine builds the candidate
    assert get_target("cpu").int8_preset == "host"
    assert get_target("cpu").resolved().int8_preset == cpu_int8_preset()
    assert get_target("cpu-avx2").resolved().int8_preset == "avx2"
    assert get_target("cuda").resolved().int8_preset is None


def test_plan_skips_unavailable_targets_and_wrong_device_variants_with_reasons(monkeypatch):
    import slimflow.models.optimize.targets as T

    monkeypatch.setattr(T.Target, "availability", lambda self: (self.device == "cpu", "no GPU here"))
    cfg = OptimizeConfig.model_validate(
        {
            "targets": ["cpu", "cuda"],
            "sources": ["student", "compressed"],
            "quantize": [{"kind": "ort_int8_dynamic"}, {"kind": "ort_fp16"}, {"kind": "torch_int8"}],
        }
    )
    specs, skipped = plan(cfg, ["teacher", "student"])
    names = {s.name for s in specs}
    assert names == {
        "student/onnx_fp32/cpu",
        "student/torch_fp32/cpu",  # the reference torch_int8 is compared with
        "student/ort_int8_dynamic/cpu",
        "student/torch_int8/cpu",
    }
    reasons = {s.name: s.reason for s in skipped}
    assert "made no compressed model" in reasons["compressed/*/*"]
    assert reasons["student/ort_fp16/cpu"] == "ort_fp16 is for gpu targets, not cpu"
    assert all("no GPU here" in reasons[f"student/{v}/cuda"] for v in ("onnx_fp32", "ort_fp16"))
    assert CandidateSpec("student", "torch_int8", "cpu", "torch").reference == "student/torch_fp32/cpu"


def test_one_quantizer_kind_twice_under_its_own_names_makes_two_candidates():
    cfg = OptimizeConfig.model_validate(
        {
            "targets": ["cpu"],
            "quantize": [
                {"kind": "ort_int8_dynamic"},
                {"kind": "ort_int8_dynamic", "name": "int8_per_tensor", "per_channel": False},
            ],
        }
    )
    specs, _ = plan(cfg, ["student"])
    assert {s.name: s.runtime for s in specs} == {
        "student/onnx_fp32/cpu": "onnxruntime",
        "student/ort_int8_dynamic/cpu": "onnxruntime",
        "student/int8_per_tensor/cpu": "onnxruntime",
    }
    named = next(s for s in specs if s.variant == "int8_per_tensor")
    assert named.reference == "student/onnx_fp32/cpu"
    assert [q.variant for q in cfg.quantize] == ["ort_int8_dynamic", "int8_per_tensor"]


# ----------------------------------------------------------------------------------------- choosing
def row(name: str, acc: float, p50_b1: float, p50_b32: float = 100.0, ref: str | None = None) -> dict:
    def st(b, p):
        return {
            "batch_size": b,
            "length": "data",
            "p50_ms": p,
            "p95_ms": p * 1.2,
            "p50_ci_low_ms": p * 0.9,
            "p50_ci_high_ms": p * 1.1,
        }

    src, variant, target = name.split("/")
    return {
        "name": name,
        "source": src,
        "variant": variant,
        "target": target,
        "status": "ok",
        "reference": ref,
        "test": {"accuracy": acc},
        "file_bytes": 1,
        "bench": {"settings": [st(1, p50_b1), st(32, p50_b32)]},
    }


def test_pareto_front():
    pts = {"a": (0.80, 1.0), "b": (0.85, 2.0), "c": (0.84, 3.0), "d": (0.85, 2.5), "e": (0.90, 9.0)}
    assert pareto_front(pts) == ["a", "b", "e"]  # c and d are beaten by b


def test_select_best_under_bar_flags_slower_quantized_and_names_no_winner():
    cfg = OptimizeConfig(accuracy_bar={"min_retention": 0.98})
    rows = [
        row("student/onnx_fp32/cpu", 0.84, 3.0, 100),
        row("student/ort_int8_dynamic/cpu", 0.835, 1.5, 120, ref="student/onnx_fp32/cpu"),  # slower at b32
        row("compressed/ort_int8_dynamic/cpu", 0.80, 1.0, 50),  # fastest, below the bar
        {"name": "x/ort_int8_static/cpu", "status": "failed", "reason": "parity failed"},
    ]
    sel = select(rows, teacher_accuracy=0.845, cfg=cfg)
    assert sel["best"] == "student/ort_int8_dynamic/cpu"
    assert sel["accuracy_floor"] == pytest.approx(0.98 * 0.845)
    assert sel["slower_than_reference"] == ["student/ort_int8_dynamic/cpu"]
    assert rows[1]["slower_at_batch_sizes"] == [32] and rows[1]["speedup_vs_reference"] == pytest.approx(2.0)
    assert not rows[2]["meets_bar"] and rows[2]["pareto"]
    assert sel["pareto_front"] == [
        "compressed/ort_int8_dynamic/cpu",
        "student/ort_int8_dynamic/cpu",
        "student/onnx_fp32/cpu",
    ]

    none = select([row("a/onnx_fp32/cpu", 0.5, 1.0)], teacher_accuracy=0.9, cfg=cfg)
    assert none["best"] is None and "no candidate reaches test accuracy 0.8820" in none["reason"]


def test_select_breaks_latency_ties_by_accuracy():
    cfg = OptimizeConfig(accuracy_bar={"min_retention": None, "min_accuracy": 0.5})
    sel = select([row("a/onnx_fp32/cpu", 0.80, 2.0), row("b/onnx_fp32/cpu", 0.82, 2.0)], 0.9, cfg)
    assert sel["best"] == "b/onnx_fp32/cpu"


def test_optimize_config_errors_name_the_problem():
    from slimflow.models.core.errors import ConfigError
    from slimflow.models.pipeline_config import load_config

    with pytest.raises(ConfigError, match="unknown target.*'tpu'"):
        load_config(None, ["optimize.targets=[cpu, tpu]"])
    with pytest.raises(ConfigError, match="rank_batch_size 8 is not among bench.batch_sizes"):
        load_config(None, ["optimize.rank_batch_size=8"])
    with pytest.raises(ConfigError, match=r"variant\(s\) \['torch_int8'\] listed twice: give each entry"):
        load_config(None, ["optimize.quantize=[{kind: torch_int8}, {kind: torch_int8}]"])
    with pytest.raises(ConfigError, match="are other quantizers' kinds"):
        load_config(None, ["optimize.quantize=[{kind: torch_int8, name: ort_fp16}]"])
    with pytest.raises(ConfigError, match="are the FP32 candidates' names"):
        load_config(None, ["optimize.quantize=[{kind: torch_int8, name: onnx_fp32}]"])
    with pytest.raises(ConfigError, match="optimize.quantize.0.name"):
        load_config(None, ["optimize.quantize=[{kind: torch_int8, name: 'a/b'}]"])
    with pytest.raises(ConfigError, match="optimize.quantize.0.method"):
        load_config(None, ["optimize.quantize=[{kind: ort_int8_static, method: kl}]"])
    with pytest.raises(ConfigError, match="must include 'data'"):
        load_config(None, ["optimize.bench.lengths=[128]"])


def test_other_processes_cpu_use_is_seen_and_a_busy_or_wide_setting_is_flagged():
    import subprocess
    import sys
    import time

    from slimflow.models.optimize.bench import CpuWatch, reliability_problems
    from slimflow.models.optimize.config import BenchConfig

    burner = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"]
    )
    try:
        time.sleep(0.3)
        watch = CpuWatch()
        time.sleep(1.5)  # we sleep; the burner keeps one CPU busy
        share = watch.others_share()
    finally:
        burner.kill()
        burner.wait()
    import psutil

    assert share > 0.6 / (psutil.cpu_count() or 1), share  # about one CPU's worth of the machine
    cfg = BenchConfig(max_other_load=0.25, max_ci_width=0.5)
    ok = {"p95_ms": 10.0, "p95_ci_low_ms": 9.0, "p95_ci_high_ms": 11.0}
    assert reliability_problems(ok, 0.05, cfg) == []
    assert reliability_problems(ok, 0.6, cfg) == ["other processes used 60% of the CPU (> 25%)"]
    wide = {"p95_ms": 10.0, "p95_ci_low_ms": 5.0, "p95_ci_high_ms": 16.0}
    assert reliability_problems(wide, 0.0, cfg) == ["p95 95% CI is 110% of p95 wide (> 50%)"]


def test_one_benchmark_per_host_at_a_time(tmp_path):
    import subprocess
    import sys

    from slimflow.models.core.locks import LockTimeout
    from slimflow.models.optimize.bench import bench, host_lock_path
    from slimflow.models.optimize.config import BenchConfig

    hold = (
        "import sys, time\nfrom pathlib import Path\nfrom slimflow.models.core.locks import file_lock\n"
        "with file_lock(Path(sys.argv[1]), 10):\n    print('held', flush=True)\n    time.sleep(20)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(host_lock_path())], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="slimflow-bench"):
            bench(tmp_path / "any-model", ["x"], BenchConfig(host_lock_timeout_s=0.5))
    finally:
        holder.kill()
        holder.wait()
