"""The causal-lm family on a tiny Llama built from a config: chat data checked by Great
Expectations, the loss on answer tokens only, LoRA SFT that learns the synthetic task, merge
parity, exact match and perplexity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimflow.models.core.errors import DataValidationError
from slimflow.models.data.config import DataConfig
from slimflow.models.families import get_family
from slimflow.models.families.batching import IGNORE_INDEX, batches
from tests.conftest import make_chats, write_jsonl

FAMILY = get_family("causal-lm")


def _prepare(tmp_path: Path, frame: pd.DataFrame, **kw):
    src = write_jsonl(frame, tmp_path / "chats.jsonl")
    cfg = DataConfig.model_validate({"source": str(src), **kw})
    return FAMILY.prepare_data(cfg, tmp_path / "data", "sha", tmp_path / "report")


def test_chat_data_is_validated_split_and_stratified_on_the_answer(tmp_path: Path) -> None:
    prepared, report = _prepare(tmp_path, make_chats(200))
    assert report.success and prepared.task == "causal-lm"
    assert sum(prepared.counts.values()) == 200
    parts = {s: pd.read_parquet(prepared.path(s)) for s in ("train", "validation", "test")}
    assert list(parts["train"].columns) == ["prompt", "completion"]
    turns = json.loads(parts["train"]["prompt"].iloc[0])
    assert turns[0]["role"] == "user" and "Review:" in turns[0]["content"]
    for frame in parts.values():  # both answers in every split, in about equal shares
        assert set(frame["completion"]) == {"fresh", "rotten"}
    prompts = [set(f["prompt"]) for f in parts.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2])


def test_prompt_completion_pairs_are_accepted(tmp_path: Path) -> None:
    chats = make_chats(60)
    pairs = pd.DataFrame(
        {
            "question": [m[0]["content"] for m in chats["messages"]],
            "answer": [m[1]["content"] for m in chats["messages"]],
        }
    )
    prepared, report = _prepare(tmp_path, pairs, prompt_column="question", completion_column="answer")
    assert report.success and prepared.counts["train"] > 30


def test_bad_chat_rows_stop_the_run_with_a_report(tmp_path: Path) -> None:
    chats = make_chats(60)
    rows = chats["messages"].tolist()
    rows[3] = [{"role": "user", "content": "no answer here"}]  # does not end with the answer
    rows[5] = [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "fresh"}]
    rows[7] = [{"role": "user", "content": "  "}, {"role": "assistant", "content": "fresh"}]
    with pytest.raises(DataValidationError) as err:
        _prepare(tmp_path, pd.DataFrame({"messages": rows}))
    failed = {o.title for o in err.value.report.failures()}
    assert any("last turn is the assistant" in t for t in failed)
    assert any("roles within" in t for t in failed)
    assert any("no empty turn" in t for t in failed)
    assert (tmp_path / "report" / "summary.txt").is_file()


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as err:
        _prepare(tmp_path, pd.DataFrame({"text": ["a"] * 30, "label": ["b"] * 30}))
    assert "messages" in str(err.value.hint)


@pytest.fixture
def tiny_lm(tiny_causal_lm_dir: Path):
    return FAMILY.load_pretrained(str(tiny_causal_lm_dir), [], tiny_causal_lm_dir)


def test_loss_is_on_answer_tokens_only(tiny_lm) -> None:
    model, tok = tiny_lm
    frame = pd.DataFrame(
        {
            "prompt": [json.dumps([{"role": "user", "content": "Review: good fine film"}])],
            "completion": ["fresh"],
        }
    )
    data = FAMILY.encode(tok, frame, [], 128)
    f = data.features[0]
    n_prompt = len(data.prompts[0])
    assert f["input_ids"][:n_prompt] == data.prompts[0]
    assert all(t == IGNORE_INDEX for t in f["labels"][:n_prompt])
    answer = [t for t in f["labels"] if t != IGNORE_INDEX]
    assert tok.decode(answer, skip_special_tokens=True).strip() == "fresh"
    assert answer[-1] in data.eos_ids  # the model learns to stop
    # padding of a batch never trains either
    two = FAMILY.encode(tok, pd.concat([frame, frame.assign(completion="a much longer answer")]), [], 128)
    inputs, _, _ = next(batches(two, 2, tok.pad_token_id, shuffle=False))
    pad = inputs["attention_mask"] == 0
    assert pad.any() and (inputs["labels"][pad] == IGNORE_INDEX).all()


def test_token_nll_in_row_groups_under_a_memory_budget_gives_the_same_sums(tiny_lm, monkeypatch) -> None:
    from slimflow.models.families.causal_lm import chat as C

    model, tok = tiny_lm
    frame = pd.DataFrame(
        {
            "prompt": [json.dumps([{"role": "user", "content": f"Review: film number {i} " * (1 + i % 3)}])
                       for i in range(7)],
            "completion": ["fresh", "rotten"] * 3 + ["fresh"],
        }
    )  # fmt: skip
    data = FAMILY.encode(tok, frame, [], 128)
    whole = C.token_nll(model, data, 8, tok.pad_token_id)
    monkeypatch.setattr(C, "LOGITS_BUDGET_BYTES", 1)  # one row per forward pass
    rows = C.token_nll(model, data, 8, tok.pad_token_id)
    assert rows[2:] == whole[2:] and rows[2] > 0  # same token counts
    np.testing.assert_allclose(rows[:2], whole[:2], rtol=1e-5)


def test_evaluation_decodes_only_answers_it_does_not_already_know(tiny_sft, monkeypatch) -> None:
    """Rows whose gold answer is the most likely token all the way (end token included) are answered
    with it; the others are decoded. The answers equal decoding every row, and both paths ran."""
    from slimflow.models.families.causal_lm import chat as C

    tmp, _, prepared = tiny_sft
    model, tok = FAMILY.load_trained(tmp / "teacher")
    frame = pd.read_parquet(prepared.path("test"))
    frame["completion"] = [c if i % 3 else {"fresh": "rotten"}.get(c, "fresh")  # a third wrong
                           for i, c in enumerate(frame["completion"])]  # fmt: skip
    data = FAMILY.encode(tok, frame, [], 96)
    decoded: list[int] = []
    greedy = C.generate_greedy

    def counting(model, prompts, *args, **kw):
        decoded.append(len(prompts))
        return greedy(model, prompts, *args, **kw)

    monkeypatch.setattr(C, "generate_greedy", counting)
    figures = FAMILY.evaluate(model, data, 8, tok.pad_token_id)
    assert 0 < decoded[0] < len(data)  # some rows known, some decoded
    every = FAMILY.generate(model, data, 8, tok.pad_token_id)  # decodes all rows
    assert decoded[1] == len(data)
    follows = np.zeros(len(data), dtype=bool)
    C.token_nll(model, data, 8, tok.pad_token_id, follows)
    assert FAMILY._greedy_answers(model, data, 8, tok.pad_token_id, follows) == every
    assert figures["exact_match"] == FAMILY.score(every, data.answers, [])["exact_match"]
    assert 0.5 < figures["exact_match"] < 0.9  # the wrong third is missed, the rest mostly right


def test_truncation_keeps_the_answer(tiny_lm) -> None:
    model, tok = tiny_lm
    long_prompt = json.dumps([{"role": "user", "content": "the film " * 200}])
    data = FAMILY.encode(tok, pd.DataFrame({"prompt": [long_prompt], "completion": ["rotten"]}), [], 32)
    f = data.features[0]
    assert len(f["input_ids"]) == 32 and data.truncated == 1
    kept = [t for t in f["labels"] if t != IGNORE_INDEX]
    assert tok.decode(kept, skip_special_tokens=True).strip() == "rotten"


def _sft(tmp_path: Path, model_dir: Path, method: dict, epochs: int):
    from slimflow.models.train.config import FinetuneConfig
    from slimflow.models.train.finetune import finetune

    prepared, _ = _prepare(tmp_path, make_chats(240))
    ft = FinetuneConfig.model_validate(
        {
            "model": str(model_dir),
            "method": method,
            "train": {"epochs": epochs, "batch_size": 16, "learning_rate": 1e-2, "max_length": 96,
                      "early_stopping_patience": None},
        }
    )  # fmt: skip
    return prepared, finetune(ft, prepared, tmp_path / "teacher", tmp_path, progress=False)


def test_sft_learns_the_task_scored_by_exact_match(tmp_path: Path, tiny_causal_lm_dir: Path) -> None:
    prepared, result = _sft(tmp_path, tiny_causal_lm_dir, {"kind": "full"}, epochs=8)
    assert result.primary_metric == "exact_match"
    assert result.history[0]["val_exact_match"] < 0.6  # it starts at chance or below
    assert result.test["exact_match"] >= 0.8, result.history
    assert np.isfinite(result.test["perplexity"]) and result.test["perplexity"] > 1.0
    # the saved folder reloads as a causal LM of this family and answers the same
    model, tok = FAMILY.load_trained(tmp_path / "teacher")
    test = FAMILY.encode(tok, pd.read_parquet(prepared.path("test")), [], 96)
    again = FAMILY.evaluate(model, test, 16, tok.pad_token_id)
    assert again["exact_match"] == pytest.approx(result.test["exact_match"])
    assert again["perplexity"] == pytest.approx(result.test["perplexity"], rel=1e-4)
    # the answer budget a served model uses: the longest training answer ("rotten" + end of turn)
    # plus the margin, recorded with the model and carried by its candidates
    from slimflow.models.families.causal_lm.family import EXTRA_NEW_TOKENS
    from slimflow.models.optimize.predictors import describe

    longest = max(len(tok(a, add_special_tokens=False)["input_ids"]) for a in ("fresh", "rotten")) + 1
    assert describe(tmp_path / "teacher").max_new_tokens == longest + EXTRA_NEW_TOKENS


def test_lora_sft_trains_adapters_and_merges_with_parity(tmp_path: Path, tiny_causal_lm_dir: Path) -> None:
    method = {"kind": "lora", "r": 16, "alpha": 32, "dropout": 0.0}
    _, result = _sft(tmp_path, tiny_causal_lm_dir, method, epochs=3)
    assert 0 < result.trainable_share < 0.5  # adapters only: embeddings and head stay frozen
    assert result.history[-1]["train_loss"] < 0.8 * result.history[0]["train_loss"]
    assert result.merged and result.merge_max_abs_diff is not None and result.merge_max_abs_diff <= 1e-4
    assert not (tmp_path / "teacher" / "adapter_config.json").exists()  # merged, plain weights


def test_score_and_agreement_compare_normalised_answers() -> None:
    from slimflow.models.families.base import AgreementConfig

    s = FAMILY.score([" Fresh.", "rotten", "fresh"], ["fresh", "rotten", "rotten"], [])
    assert s["exact_match"] == pytest.approx(2 / 3) and s["rows"] == 3
    rep = FAMILY.agreement(["fresh", "rotten"], ["fresh", "fresh"], [], AgreementConfig(min_agreement=0.9))
    assert not rep.passed and rep.agreement == 0.5 and "0.9" in rep.message
    assert "changed: 'rotten' -> 'fresh' x1" in rep.message  # which way answers moved
    ref = ["rotten"] * 5 + ["fresh"] * 2 + ["a", "b", "c", "x" * 40]
    got = ["fresh"] * 3 + ["rotten"] * 2 + ["fresh", "rotten", "b", "a", "d", "y"]
    rep = FAMILY.agreement(ref, got, [], AgreementConfig(min_agreement=0.01))
    assert rep.passed and rep.message.endswith(
        "changed: 'rotten' -> 'fresh' x3, 'fresh' -> 'rotten' x1, 'a' -> 'b' x1, ..."
    )
    long = FAMILY.agreement(["x" * 40], ["y"], [], AgreementConfig(min_agreement=0.01))
    assert long.message.endswith(f"changed: '{'x' * 23}\u2026' -> 'y' x1")
    same = FAMILY.agreement(["fresh"], ["Fresh."], [], AgreementConfig())
    assert same.passed and "changed" not in same.message


def test_loss_from_the_earliest_answer_on_equals_the_full_loss(tiny_lm) -> None:
    import torch

    model, tok = tiny_lm
    chats = make_chats(6)
    frame = pd.DataFrame(
        {
            "prompt": [  # prompts and answers of different lengths: answers start at different places
                json.dumps([{"role": "user", "content": m[0]["content"] + " the film" * (5 - i)}])
                for i, m in enumerate(chats["messages"])
            ],
            "completion": [m[1]["content"] + " indeed" * i for i, m in enumerate(chats["messages"])],
        }
    )
    data = FAMILY.encode(tok, frame, [], 128)
    inputs, _, _ = next(batches(data, 6, tok.pad_token_id, shuffle=False))
    starts = (inputs["labels"] != IGNORE_INDEX).float().argmax(1)
    assert len(set(starts.tolist())) > 1
    with torch.no_grad():
        full = model(**inputs).loss
        ours = FAMILY.loss(model, inputs, None)
    assert float(ours) == pytest.approx(float(full), rel=1e-5)


def test_a_layer_drop_student_is_distilled_token_by_token_with_the_teacher_online(
    tiny_sft, tmp_path: Path
) -> None:
    """Minitron-style on a tiny model: drop a layer, then distil on the teacher's per-token
    distributions over the answer (alpha 1: no hard labels at all), computed beside the student on
    every batch -- nothing cached, the student learns the task from the teacher alone."""
    from slimflow.models.optimize.predictors import describe
    from slimflow.models.train.config import DistillConfig
    from slimflow.models.train.distill import distill

    _, teacher, prepared = tiny_sft
    cfg = DistillConfig.model_validate(
        {"student": {"kind": "layer_drop", "keep_layers": [1]}, "temperature": 1.0, "alpha": 1.0,
         "train": {"epochs": 8, "batch_size": 16, "learning_rate": 1e-2, "max_length": 96,
                   "early_stopping_patience": None}}
    )  # fmt: skip
    res = distill(
        cfg, prepared, teacher.model_dir, "sha", tmp_path / "student", tmp_path / "cache", progress=False
    )
    assert res.teacher_logits_cached is False and res.teacher_logits_path == ""
    assert not list((tmp_path / "cache").glob("teacher-logits-*"))  # per-token targets are never stored
    assert res.student_params < res.teacher_params
    assert res.primary_metric == "exact_match" and res.teacher_test == teacher.test
    assert res.test["exact_match"] >= 0.8, res.history  # the 1-layer student answers like the teacher
    model, _ = FAMILY.load_trained(tmp_path / "student")
    assert model.config.num_hidden_layers == 1
    assert describe(tmp_path / "student").max_new_tokens == describe(teacher.model_dir).max_new_tokens


def test_an_online_distillation_loss_is_the_kl_to_the_teachers_tokens(tiny_sft) -> None:
    """The per-batch teacher targets equal what kd_loss gets from the teacher's own logits: zero
    against itself, positive against another model."""
    import torch

    from slimflow.models.train.loop import batches

    _, teacher, prepared = tiny_sft
    model, tok = FAMILY.load_trained(teacher.model_dir)
    data = FAMILY.encode(tok, pd.read_parquet(prepared.path("validation")).head(8), [], 96)
    inputs, rows, _ = next(batches(data, 8, tok.pad_token_id, shuffle=False, seed=0))
    inputs, y = FAMILY.kd_batch(inputs, rows)
    assert "labels" not in inputs and y.shape == inputs["input_ids"].shape
    with torch.no_grad():
        logits = model(**inputs).logits
        assert float(FAMILY.kd_loss(logits, logits, y, 2.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
        other = logits + torch.randn_like(logits)
        assert float(FAMILY.kd_loss(other, logits, y, 2.0, 1.0)) > 0.01


def test_width_pruning_then_online_recovery_and_the_pruned_model_builds_for_genai(
    tiny_sft, tmp_path: Path
) -> None:
    """Minitron's width axis on a tiny model: half the attention heads (whole key/value groups) and
    half the FFN neurons by gradient importance, then recovery distilled from the teacher online;
    the pruned model still builds with onnxruntime-genai and reproduces PyTorch."""
    from slimflow.models.optimize import genai as G
    from slimflow.models.optimize.predictors import CandidateInfo, load_predictor
    from slimflow.models.train.compress import compress
    from slimflow.models.train.config import CompressConfig

    _, teacher, prepared = tiny_sft
    cfg = CompressConfig.model_validate(
        {"steps": [{"kind": "prune_heads", "ratio": 0.5}, {"kind": "prune_ffn", "ratio": 0.5}],
         "calibration_examples": 64,
         "recovery": {"temperature": 1.0, "alpha": 0.7,
                      "train": {"epochs": 3, "batch_size": 16, "learning_rate": 5e-3, "max_length": 96,
                                "early_stopping_patience": None}}}
    )  # fmt: skip
    model_dir = teacher.model_dir
    out = compress(
        cfg, prepared, model_dir, model_dir, "sha", tmp_path / "c", tmp_path / "cache", progress=False
    )
    heads, ffn = out.steps
    assert (
        heads["heads_removed"] == heads["heads_total"] // 2
        and ffn["ffn_width_after"] == ffn["ffn_width_before"] // 2
    )
    assert not list((tmp_path / "cache").glob("teacher-logits-*"))  # per-token targets: never stored
    assert out.test["exact_match"] > out.test_pruned["exact_match"]  # recovery repaired the pruning
    assert out.test["exact_match"] >= 0.75, out.history
    from slimflow.models.optimize.predictors import describe

    assert describe(tmp_path / "c").max_new_tokens == describe(teacher.model_dir).max_new_tokens
    built = G.build(tmp_path / "c", tmp_path / "g", G.GenaiBuildConfig(precision="fp32"), tmp_path / "gc")
    CandidateInfo("onnxruntime-genai", variant="genai_fp32", source="compressed", task="causal-lm",
                  max_new_tokens=8).save(built)  # fmt: skip
    ref, cand = load_predictor(tmp_path / "c", 1), load_predictor(built, 1)
    ids = [ref.prompt_ids(p) for p in pd.read_parquet(prepared.path("validation"))["prompt"].head(4)]
    report = G.parity(ref.runner, cand.runner, ids, new_tokens=8, stop=ref.ends)
    assert report["greedy_token_agreement"] == 1.0 and report["max_abs_logit_diff"] < 1e-3


def _varied_batch(tok, rows: int = 6):
    """A right-padded batch of chats with different prompt and answer lengths that share the
    question's leading tokens."""
    chats = make_chats(rows, seed=3)
    frame = pd.DataFrame(
        {
            "prompt": [json.dumps([{"role": "user", "content": m[0]["content"] + " the film" * (i % 4)}])
                       for i, m in enumerate(chats["messages"])],
            "completion": [m[1]["content"] + " indeed" * (i % 3) for i, m in enumerate(chats["messages"])],
        }
    )  # fmt: skip
    data = FAMILY.encode(tok, frame, [], 128)
    return data, next(batches(data, rows, tok.pad_token_id, shuffle=False))[0]


def test_a_shared_prompt_prefix_runs_once_with_the_same_loss_and_gradients(tiny_lm, monkeypatch) -> None:
    """The training loss of a LoRA model with the rows' common leading tokens run once (their keys
    and values repeated across the batch) equals the plain forward pass's, and so do the adapters'
    gradients: the split really ran, on a prefix of the question's tokens."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slimflow.models.families.causal_lm import chat as C

    base, tok = tiny_lm
    torch.manual_seed(0)
    model = get_peft_model(
        FAMILY.load_pretrained(str(base.name_or_path), [], base.name_or_path)[0],
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                   init_lora_weights=False, task_type="CAUSAL_LM"),
    )  # fmt: skip
    model.train()
    _, inputs = _varied_batch(tok)
    calls = []
    real = C.split_forward
    monkeypatch.setattr(C, "split_forward", lambda *a, **k: calls.append(a[3]) or real(*a, **k))

    def loss_and_grads() -> tuple[float, list]:
        model.zero_grad()
        loss = FAMILY.loss(model, inputs, None)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    split_loss, split_grads = loss_and_grads()
    assert len(calls) == 1 and calls[0] >= C.SHARED_PREFIX_MIN_TOKENS
    assert (inputs["input_ids"][:, : calls[0]] == inputs["input_ids"][0, : calls[0]]).all()
    monkeypatch.setattr(C, "SHARED_PREFIX_MIN_TOKENS", 10**6)  # the plain pass
    plain_loss, plain_grads = loss_and_grads()
    assert len(calls) == 1
    assert split_loss == pytest.approx(plain_loss, rel=1e-5)
    assert len(plain_grads) > 0 and max(float(g.abs().max()) for g in plain_grads) > 1e-4
    for a, b in zip(split_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_token_nll_with_the_shared_prefix_run_once_gives_the_same_sums(tiny_lm, monkeypatch) -> None:
    from slimflow.models.families.causal_lm import chat as C

    model, tok = tiny_lm
    data, _ = _varied_batch(tok)
    follows = np.zeros(len(data), dtype=bool)
    calls = []
    real = C.split_forward
    monkeypatch.setattr(C, "split_forward", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    split = C.token_nll(model, data, 8, tok.pad_token_id, follows)
    assert len(calls) == 1 and calls[0] >= C.SHARED_PREFIX_MIN_TOKENS
    monkeypatch.setattr(C, "SHARED_PREFIX_MIN_TOKENS", 10**6)
    plain_follows = np.ones(len(data), dtype=bool)
    plain = C.token_nll(model, data, 8, tok.pad_token_id, plain_follows)
    assert split[2:] == plain[2:] and split[3] > split[2] > 0
    np.testing.assert_allclose(split[:2], plain[:2], rtol=1e-5)
    assert (follows == plain_follows).all()


def test_a_prefix_tuning_model_keeps_the_plain_forward_pass(tiny_lm) -> None:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    from slimflow.models.families.causal_lm import chat as C

    base, tok = tiny_lm
    fresh = lambda: FAMILY.load_pretrained(str(base.name_or_path), [], base.name_or_path)[0]  # noqa: E731
    assert C.shares_prefix(fresh())
    assert C.shares_prefix(get_peft_model(fresh(), LoraConfig(r=2, task_type="CAUSAL_LM")))
    prefix = get_peft_model(fresh(), PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    assert not C.shares_prefix(prefix)
    _, inputs = _varied_batch(tok)
    assert float(FAMILY.loss(prefix, inputs, None).detach()) > 0  # the virtual tokens' cache, not ours


def test_a_data_parallel_model_keeps_the_plain_forward_pass(tiny_lm, tmp_path: Path) -> None:
    """DistributedDataParallel takes one forward pass per backward: no split under it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from slimflow.models.families.causal_lm import chat as C

    base, _ = tiny_lm
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = FAMILY.load_pretrained(str(base.name_or_path), [], base.name_or_path)[0]
        assert not C.shares_prefix(DistributedDataParallel(model))
    finally:
        dist.destroy_process_group()


def test_batched_answers_and_prompt_end_logits_run_the_shared_prefix_once(tiny_sft, monkeypatch) -> None:
    """Greedy answers and next-token logits of prompts batched as [shared prefix][pads][own tokens]
    (the prefix run once) equal those of plain left-padded batches, and equal a prompt run alone."""
    import torch

    from slimflow.models.families.causal_lm import chat as C
    from slimflow.models.optimize.genai import TorchModel

    tmp, _, _ = tiny_sft
    model, tok = FAMILY.load_trained(tmp / "teacher")
    data = FAMILY.encode(tok, pd.read_parquet(next((tmp / "data").rglob("test.parquet"))), [], 96)
    prompts = [list(p) for p in data.prompts[:12]]
    prompts[3] = prompts[3] + prompts[5][-4:]  # lengths differ within a batch
    pad, ends = tok.pad_token_id, C.end_ids(tok)
    made = []
    real = C.prompt_batch
    monkeypatch.setattr(C, "prompt_batch", lambda *a: made.append(real(*a)) or made[-1])
    shared = C.generate_greedy(model, prompts, 6, 5, pad, ends)
    shared_logits = C.prompt_end_logits(model, prompts, 5, pad)
    assert made and all(b.prefix >= C.SHARED_PREFIX_MIN_TOKENS and b.cache is not None for b in made)
    assert any(bool((b.mask[:, b.prefix :] == 0).any()) for b in made)  # pads between prefix and rows
    monkeypatch.setattr(C, "SHARED_PREFIX_MIN_TOKENS", 10**6)
    plain = C.generate_greedy(model, prompts, 6, 5, pad, ends)
    plain_logits = C.prompt_end_logits(model, prompts, 5, pad)
    assert made[-1].prefix == 0 and made[-1].cache is None
    assert shared == plain and any(len(a) > 0 for a in shared)
    np.testing.assert_allclose(shared_logits, plain_logits, atol=1e-4, rtol=1e-4)
    alone = TorchModel(model, threads=1)
    for i in (0, 3):
        assert shared[i] == alone.generate(prompts[i], 6, ends)
        np.testing.assert_allclose(shared_logits[i], alone.logits(prompts[i])[-1], atol=1e-4, rtol=1e-4)
    b = made[0]  # the pads between the prefix and a row's own tokens take no position
    row = int((b.mask[:, b.prefix :] == 0).sum(1).argmax())
    own = b.mask[row, b.prefix :].bool()
    assert torch.equal(b.positions[row][own], torch.arange(b.prefix, b.prefix + int(own.sum())))
