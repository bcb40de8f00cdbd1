"""``slimflow generate`` on the tiny fine-tuned causal LM: a prompt answered (PyTorch folder and
onnxruntime-genai candidate agree), a JSONL file answered into a JSONL file, bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from slimflow.cli import app


def _invoke(*args: str):
    return CliRunner().invoke(app, ["generate", *args], env={"COLUMNS": "200"})


def test_a_prompt_is_answered_alike_by_the_model_and_its_genai_build(tiny_sft, tiny_genai_candidate) -> None:
    tmp, _, prepared = tiny_sft
    turns = json.loads(pd.read_parquet(prepared.path("test"))["prompt"].iloc[0])
    question = turns[0]["content"]
    torch_run = _invoke("--model", str(tmp / "teacher"), "--prompt", question, "--max-tokens", "8")
    genai_run = _invoke("--model", str(tiny_genai_candidate), "--prompt", question, "--max-tokens", "8")
    assert torch_run.exit_code == 0, torch_run.output
    assert genai_run.exit_code == 0, genai_run.output
    answer = torch_run.stdout.strip().splitlines()[0]
    assert answer in ("fresh", "rotten")
    assert genai_run.stdout.strip().splitlines()[0] == answer
    assert "tokens/s" in torch_run.stderr


def test_a_jsonl_file_is_answered_into_a_jsonl_file(tiny_sft, tiny_genai_candidate, tmp_path: Path) -> None:
    _, _, prepared = tiny_sft
    test = pd.read_parquet(prepared.path("test")).head(6)
    src = tmp_path / "in.jsonl"
    with src.open("w") as f:
        for p in test["prompt"]:
            f.write(json.dumps({"messages": json.loads(p), "id": len(p)}) + "\n")
        f.write(json.dumps({"prompt": "the film was good and"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = _invoke("--model", str(tiny_genai_candidate), "--input", str(src), "--output", str(out))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7 and all("answer" in row and row["tokens"] >= 0 for row in rows)
    hits = sum(row["answer"] == gold for row, gold in zip(rows, test["completion"], strict=False))
    assert hits >= 4  # the tiny model answers most test chats right
    assert rows[0]["id"] == len(test["prompt"].iloc[0])  # the input's own fields come back


def test_bad_inputs_are_named(tiny_genai_candidate, tiny_model_dir, tmp_path: Path) -> None:
    both = _invoke(
        "--model", str(tiny_genai_candidate), "--prompt", "x", "--input", str(tmp_path / "a.jsonl")
    )
    assert both.exit_code == 2 and "not both" in both.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    r = _invoke("--model", str(tiny_genai_candidate), "--input", str(bad))
    assert r.exit_code == 2 and "line 1 needs 'messages'" in r.output
    clf = _invoke("--model", str(tiny_model_dir), "--prompt", "x")
    assert clf.exit_code == 2 and "sequence-classification model" in clf.output
    missing = _invoke("--model", str(tmp_path / "nope"), "--prompt", "x")
    assert missing.exit_code == 2 and "model not found" in missing.output


def test_bench_measures_a_causal_lm_as_generation(tiny_genai_candidate, tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    r = CliRunner().invoke(
        app,
        ["bench", "--model", str(tiny_genai_candidate), "--batch-sizes", "1,2", "--prompt-tokens", "16",
         "--new-tokens", "4", "--generations", "3", "--warmup", "1", "--threads", "1", "--json", str(out)],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "batch 1: decode" in r.stdout and "batch 2: decode" in r.stdout and "TTFT" in r.stdout
    result = json.loads(out.read_text())
    assert [s["batch_size"] for s in result["settings"]] == [1, 2]
    assert all(s["prompt_tokens"] == 16 and s["decode_tokens_per_s"] > 0 for s in result["settings"])
