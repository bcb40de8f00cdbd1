"""benchmarks/compare.py runs end to end on tiny models and writes its rows, ratios and goals: the
classifier comparison (PyTorch teacher, Optimum's dynamic-INT8 recipe, the candidate) and, for a
causal LM, the generative one (PyTorch eager, Optimum's ONNX export with past, the genai build).
Figures from tiny models on a busy machine mean nothing: only the shape and the choices are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--summary", "/nonexistent.json", *args],
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_classifier_comparison_runs_and_writes_ratios(tmp_path: Path, tiny_model_dir: Path) -> None:
    from slimflow.models.optimize.candidates import CandidateSpec, fp32_candidate
    from slimflow.models.optimize.predictors import describe
    from tests.conftest import train_tiny_teacher

    prepared, res = train_tiny_teacher(tmp_path, tiny_model_dir, rows=160, epochs=2)
    best = tmp_path / "cand"
    best.mkdir()
    fp32_candidate(Path(res.model_dir), CandidateSpec("teacher", "torch_fp32", "cpu", "torch"), best,
                   describe(res.model_dir))  # fmt: skip
    out = tmp_path / "compare.json"
    _run("--teacher", res.model_dir, "--best", str(best), "--test", str(prepared.path("test")),
         "--threads", "1", "--iterations", "5", "--time-budget", "1", "--out", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["roles"]) == {"teacher", "recipe", "best"}
    assert {"best_vs_teacher", "best_vs_recipe"} <= set(report["ratios"])
    for row in report["rows"].values():
        assert 0.0 <= row["test"]["accuracy"] <= 1.0 and row["bench"]["file_bytes"] > 0
    # the candidate is the teacher's own weights in PyTorch: same test accuracy
    t, b = (report["rows"][report["roles"][k]]["test"]["accuracy"] for k in ("teacher", "best"))
    assert b == pytest.approx(t)


def test_a_causal_lm_summary_gets_the_generative_comparison(
    tmp_path: Path, tiny_sft, tiny_genai_candidate
) -> None:
    folder, result, prepared = tiny_sft
    out = tmp_path / "compare.json"
    proc = _run("--teacher", result.model_dir, "--best", str(tiny_genai_candidate), "--test",
                str(prepared.path("test")), "--threads", "1", "--rows", "12", "--prompt-tokens", "8",
                "--new-tokens", "4", "--gen-iterations", "2", "--rounds", "2", "--out", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    assert report["task"] == "causal-lm"
    assert list(report["roles"]) == ["teacher", "optimum", "best"]
    rows = report["rows"]
    assert len(rows) == 3
    for row in rows.values():
        s = row["speed"]["settings"][0]
        assert s["decode_tokens_per_s"] > 0 and s["ttft_p50_ms"] > 0 and row["rows"] == 12
        assert len(row["speed_rounds"]) == 2 and row["speed"] in row["speed_rounds"]
    teacher, optimum, best = (rows[report["roles"][k]] for k in ("teacher", "optimum", "best"))
    # the Optimum export and the genai FP32 build are the same model: same answers, same perplexity
    assert optimum["exact_match"] == teacher["exact_match"] == best["exact_match"]
    assert optimum["perplexity"] == pytest.approx(teacher["perplexity"], rel=1e-3)
    r = report["ratios"]["best_vs_teacher"]
    assert len(r["decode_speedup_rounds"]) == 2 and "decode tok/s by round" in proc.stdout
    assert r["perplexity_ratio"] == pytest.approx(1.0, abs=1e-3) and r["exact_match_delta"] == 0.0
    goals = {">= 6x the decode tokens/s of PyTorch FP32 eager", "perplexity ratio <= 1.15",
             "exact match within 1 point of the FP32 model"}  # fmt: skip
    assert set(report["goals"]) == goals
    assert "decode tokens/s" in proc.stdout and "[met] perplexity ratio <= 1.15" in proc.stdout
