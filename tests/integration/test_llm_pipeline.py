"""The flow for the causal-lm family: chat data through Great Expectations and supervised
fine-tuning of a causal LM, recorded in MLflow (tiny model built from a config here; the packaged
SmolLM2 in the LLM quickstart)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
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
    # both quantized builds were checked against one set of PyTorch answers, computed once
    (answers,) = (tmp_path / "work" / "cache").glob("reference-answers-*.json")
    validation = summary["stages"]["validate-data"]["metrics"]["counts_validation"]
    assert len(json.loads(answers.read_text())["answers"]) == validation
    sel = search["selection"]
    assert sel["metric"] == "exact_match" and sel["best"] in rows
    assert rows[sel["best"]]["meets_bar"]
    assert summary["decision"]["outcome"] == "candidate_selected"
    client = tracking.client(summary["tracking_uri"])
    runs = client.search_runs([summary["mlflow_experiment_id"]], "tags.`slimflow.stage` = 'candidate'")
    logged = {r.data.tags["slimflow.candidate"]: r.data.metrics for r in runs}
    assert "test_exact_match" in logged["teacher/genai_fp32/cpu"]
    assert "b1_data.decode_tokens_per_s" in logged["teacher/genai_fp32/cpu"]


def test_generative_champion_is_gated_registered_served_and_answers_chat_over_http(
    tmp_path: Path, tiny_causal_lm_dir: Path
) -> None:
    import httpx

    from slimflow.models.release import deployments as serve
    from slimflow.models.release.registry import alias_version
    from tests.integration.test_promotion import free_port

    optimize = {
        "targets": ["cpu"],
        "quantize": [{"kind": "genai_int8", "block_size": 16}],
        "agreement": {"min_agreement": 0.5},
        "bench": {"batch_sizes": [1], "isolate": False},  # isolated runs: the test above (saves ~2 min)
        "generation": {"prompt_tokens": 16, "new_tokens": 4, "iterations": 3, "warmup": 1, "threads": 1},
        "accuracy_bar": {"min_retention": 0.5},
        "max_parallel": 1,
    }
    gates = {"min_retention": 0.5, "max_perplexity_ratio": 1.5, "min_decode_tokens_per_s": 1.0,
             "max_ttft_ms": 60_000, "max_size_mb": 100}  # fmt: skip
    port = free_port()
    promote = {"model_name": "tiny-chat", "gates": gates, "deploy": {"port": port}}
    distill = {"student": {"kind": "layer_drop", "keep_layers": [1]}, "alpha": 0.7,
               "train": {"epochs": 4, "batch_size": 16, "learning_rate": 1e-2, "max_length": 96,
                         "early_stopping_patience": None}}  # fmt: skip
    compress = {"steps": [{"kind": "prune_ffn", "ratio": 0.25}], "calibration_examples": 32,
                "recovery": {"train": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "max_length": 96,
                                       "early_stopping_patience": None}}}  # fmt: skip
    sections = {"optimize": optimize, "promote": promote, "distill": distill, "compress": compress}
    cfg = _config(tmp_path, tiny_causal_lm_dir, "it-llm-promote", **sections)
    try:
        s = run_pipeline(cfg, progress=False)
        assert s["status"] == "completed", s.get("error")
        d = s["decision"]
        assert d["outcome"] == "promoted" and d["champion"], d
        # the distilled 1-layer student went through the search beside the teacher
        names = {r["name"] for r in s["search"]["candidates"]}
        assert {"student/genai_fp32/cpu", "student/genai_int8/cpu", "compressed/genai_int8/cpu"} <= names
        assert s["stages"]["distill-student"]["status"] == "completed"
        assert s["stages"]["compress"]["status"] == "completed"  # the student's FFNs pruned, recovered
        dep = s["promotion"]["deployment"]
        # the smoke test asked a chat completion too (it raises when the answer differs from the model's)
        assert dep["smoke"]["requests_ok"] == 4 and dep["smoke"]["chat"]["seconds"] > 0
        assert 400 <= dep["smoke"]["chat"]["malformed"] < 500
        review = "Is this movie review fresh or rotten? Answer with one word.\n\nGreat."
        ask = {"messages": [{"role": "user", "content": review}], "max_tokens": 8}
        url = f"{dep['endpoint']}/v1/chat/completions"
        chat = httpx.post(url, json=ask, timeout=60)
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 8
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        whole = body["choices"][0]["message"]["content"]
        streamed = httpx.post(url, json={**ask, "stream": True}, timeout=60)
        events = [ln.removeprefix("data: ") for ln in streamed.text.splitlines() if ln.startswith("data: ")]
        assert streamed.status_code == 200 and events[-1] == "[DONE]"
        pieces = [json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]]
        assert "".join(pieces) == whole  # streamed == whole answer
        assert httpx.post(url, json={"messages": []}, timeout=10).status_code == 422
    finally:
        assert serve.stop(cfg.workdir_path(), "tiny-chat")
    client = tracking.client(s["tracking_uri"])
    assert alias_version(client, "tiny-chat", "champion") == d["champion"]
    mv = client.get_model_version("tiny-chat", d["champion"])
    tags = mv.tags
    assert tags["slimflow.metric"] == "exact_match"
    winner = next(r for r in s["search"]["candidates"] if r["name"] == s["promotion"]["winner"])
    assert float(tags["slimflow.test_exact_match"]) == pytest.approx(winner["test"]["exact_match"], abs=1e-6)
    assert float(tags["slimflow.test_perplexity"]) == pytest.approx(winner["test"]["perplexity"], rel=1e-5)
    assert float(tags["slimflow.decode_tokens_per_s"]) > 1.0
    judged = {g["gate"] for g in json.loads(tags["slimflow.gates"])}
    assert judged == {"min_retention", "max_perplexity_ratio", "min_decode_tokens_per_s", "max_ttft_ms",
                      "max_size_mb"}  # fmt: skip
    assert "**Generation** batch 1" in mv.description and "perplexity" in mv.description
    # what the registered model needs: the genai runtime, not torch
    tracking.use(s["tracking_uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/tiny-chat/{d['champion']}"))
    reqs = (local / "requirements.txt").read_text()
    assert "onnxruntime-genai==" in reqs and "torch==" not in reqs
    # `slimflow generate` on the registry reference answers as the server did
    from typer.testing import CliRunner

    from slimflow.cli import app

    ref = "models:/tiny-chat@champion"
    cli = CliRunner().invoke(
        app, ["generate", "-m", ref, "-p", review, "--max-tokens", "8", "--tracking-uri", s["tracking_uri"]]
    )
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.rstrip("\n") == whole

    # the same model with a decode-speed floor no CPU reaches: nothing promoted, the gate named,
    # the champion untouched
    gates_fail = {**gates, "min_decode_tokens_per_s": 1e9}
    sections2 = {**sections, "promote": {**promote, "gates": gates_fail, "deploy": None}}
    cfg2 = _config(tmp_path, tiny_causal_lm_dir, "it-llm-promote", **sections2)
    s2 = run_pipeline(cfg2, progress=False)
    d2 = s2["decision"]
    assert d2["outcome"] == "no_candidate_passes" and d2["promoted"] is False
    assert d2["failed_gates"] == ["min_decode_tokens_per_s"]
    assert alias_version(client, "tiny-chat", "champion") == d["champion"]
