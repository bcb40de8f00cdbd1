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


def test_chat_data_and_sft_run_as_a_flow(tmp_path: Path, tiny_causal_lm_dir: Path) -> None:
    src = write_jsonl(make_chats(240), tmp_path / "chats.jsonl")
    cfg = PipelineConfig.model_validate(
        {
            "name": "it-llm",
            "workdir": str(tmp_path / "work"),
            "task": "causal-lm",
            "data": {"source": str(src)},
            "finetune": {
                "model": str(tiny_causal_lm_dir),
                "method": {"kind": "full"},
                "train": {"epochs": 8, "batch_size": 16, "learning_rate": 1e-2, "max_length": 96,
                          "early_stopping_patience": None},
            },
        }
    )  # fmt: skip
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
    assert "val_exact_match" in client.get_metric_history(run.info.run_id, "val_exact_match")[0].key
