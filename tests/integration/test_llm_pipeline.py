"""The flow for the causal-lm family: chat data through Great Expectations and supervised
fine-tuning of a causal LM, recorded in MLflow (tiny model built from a config here; the packaged
SmolLM2 in the LLM quickstart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimflow.flows.pipeline import run_pipeline
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from tests.conftest import make_chats, write_jsonl

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, model_dir: Path, name: str, **sections: object) -> PipelineConfig:
    """Synthetic chats and full fine-tuning of the tiny causal LM (enough for the task), plus ``sections``."""
    src = write_jsonl(make_chats(240), tmp_path / "chats.jsonl")
    return PipelineConfig.model_validate(
        {
            "name": name,
            "workdir": str(tmp_path / "work"),
            "task": "causal-lm",
            "data": {"source": str(src)},
            "finetune": {
                "model": str(model_dir),
                "method": {"kind": "full"},
                "train": {"epochs": 8, "batch_size": 16, "learning_rate": 1e-2, "max_length": 96,
                          "early_stopping_patience": None},
            },
            **sections,
        }
    )  # fmt: skip


def test_chat_data_and_sft_run_as_a_flow(tmp_path: Path, tiny_causal_lm_dir: Path) -> None:
    cfg = _config(tmp_path, tiny_causal_lm_dir, "it-llm")
    summary = run_pipeline(cfg, progress=False)
    stages = summary["stages"]
    assert stages["validate-data"]["status"] == "completed"
    assert stages["validate-data"]["metrics"]["expectations_met"] == 9
    ft = stages["finetune-teacher"]["metrics"]
    assert ft["test_exact_match"] >= 0.8 and ft["test_perplexity"] > 1
    assert summary["decision"]["outcome"] == "teacher_ready"
    assert summary["decision"]["test_exact_match"] == ft["test_exact_match"]
    client = tracking.client(summary["tracking_uri"])
    run = client.get_run(stages["finetune-teacher"]["mlflow_run_id"])
    assert run.data.metrics["test_exact_match"] == pytest.approx(ft["test_exact_match"])
    assert run.data.params["finetune.train.metric"] == "null"  # the family's own: exact_match
    history = client.get_metric_history(run.info.run_id, "val_exact_match")  # one point per epoch
    assert len(history) == 8 and all(0.0 <= m.value <= 1.0 for m in history)


def test_generative_candidates_are_built_scored_measured_and_chosen(
    tmp_path: Path, tiny_causal_lm_dir: Path
) -> None:
    optimize = {
        "targets": ["cpu"],
        "quantize": [
            {"kind": "genai_int8", "block_size": 16},
            {"kind": "genai_int4", "block_size": 16},
            {"kind": "ort_int8_dynamic"},
        ],
        "include_torch_fp32": True,
        "agreement": {"min_agreement": 0.5},
        "bench": {"batch_sizes": [1]},
        "generation": {"prompt_tokens": 16, "new_tokens": 4, "iterations": 3, "warmup": 1, "threads": 1},
        "accuracy_bar": {"min_retention": 0.5},
        "max_parallel": 1,
    }
    cfg = _config(tmp_path, tiny_causal_lm_dir, "it-llm-search", optimize=optimize)
    summary = run_pipeline(cfg, progress=False)
    search = summary["search"]
    rows = {r["name"]: r for r in search["candidates"]}
    assert set(rows) == {"teacher/genai_fp32/cpu", "teacher/torch_fp32/cpu", "teacher/genai_int8/cpu",
                         "teacher/genai_int4/cpu"}  # fmt: skip
    skipped = {s["name"]: s["reason"] for s in search["skipped"]}
    assert "does not support the causal-lm task family" in skipped["teacher/ort_int8_dynamic/cpu"]
    fp32 = rows["teacher/genai_fp32/cpu"]
    assert fp32["status"] == "ok" and fp32["build"]["parity"]["greedy_token_agreement"] == 1.0
    teacher_em = summary["stages"]["finetune-teacher"]["metrics"]["test_exact_match"]
    assert fp32["test"]["exact_match"] == pytest.approx(teacher_em)
    assert fp32["test"]["perplexity"] == pytest.approx(
        summary["stages"]["finetune-teacher"]["metrics"]["test_perplexity"], rel=1e-3
    )
    for name, r in rows.items():
        if r["status"] != "ok":
            assert r["status"] == "rejected" and "greedy answers" in r["reason"], (name, r)
            continue
        s = r["bench"]["settings"][0]
        assert s["decode_tokens_per_s"] > 0 and s["ttft_p50_ms"] > 0 and s["p50_ms"] == s["token_p50_ms"]
    quantized = [rows[n] for n in ("teacher/genai_int8/cpu", "teacher/genai_int4/cpu")]
    assert all(r["file_bytes"] < fp32["file_bytes"] for r in quantized if r.get("file_bytes"))
    sel = search["selection"]
    assert sel["metric"] == "exact_match" and sel["best"] in rows
    assert rows[sel["best"]]["meets_bar"]
    assert summary["decision"]["outcome"] == "candidate_selected"
    client = tracking.client(summary["tracking_uri"])
    runs = client.search_runs([summary["mlflow_experiment_id"]], "tags.`slimflow.stage` = 'candidate'")
    logged = {r.data.tags["slimflow.candidate"]: r.data.metrics for r in runs}
    assert "test_exact_match" in logged["teacher/genai_fp32/cpu"]
    assert "b1_data.decode_tokens_per_s" in logged["teacher/genai_fp32/cpu"]
