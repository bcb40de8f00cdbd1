"""Fine-tuning on a tiny BERT built from a config: methods, merging, saving, early stopping."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from slimflow.models.data.prepare import prepare
from slimflow.models.families import batching as B
from slimflow.models.train import loop as T
from slimflow.models.train.config import FewShotConfig, FinetuneConfig, TrainConfig
from slimflow.models.train.finetune import few_shot_rows, finetune, merge
from slimflow.models.train.methods import apply_method as _apply_method
from tests.conftest import FAMILY, data_cfg, make_reviews

LABELS = ["neg", "pos"]


def method(kind: str, **kw):
    return FinetuneConfig.model_validate({"method": {"kind": kind, **kw}}).method


def tiny(tiny_model_dir: Path, tmp_path: Path):
    return FAMILY.load_pretrained(str(tiny_model_dir), LABELS, tmp_path)


def apply_method(model, cfg, total_steps):
    return _apply_method(model, cfg, total_steps, FAMILY)


def encoded(tok, n=64, seed=0):
    df = make_reviews(n, seed)
    return B.encode(tok, df["review"].tolist(), [LABELS.index(x) for x in df["sentiment"]], 32)


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("lora", {"r": 4, "target_modules": ["query", "value"]}),
        ("lora", {"r": 4, "target_modules": ["query", "value"], "use_dora": True}),
        ("adalora", {"init_r": 6, "target_r": 2, "target_modules": ["query", "value"]}),
        (
            "ia3",
            {"target_modules": ["key", "value", "output.dense"], "feedforward_modules": ["output.dense"]},
        ),
        ("prefix_tuning", {"num_virtual_tokens": 4}),
        ("freeze", {"train_top_layers": 1}),
        ("full", {}),
    ],
)
def test_every_method_trains_a_step_and_freezes_what_it_should(tiny_model_dir, tmp_path, kind, kw):
    model, tok = tiny(tiny_model_dir, tmp_path)
    m = apply_method(model, method(kind, **kw), total_steps=10)
    from slimflow.models.archs import count_parameters

    trainable, total = count_parameters(m)
    base_total = sum(
        p.numel() for p in FAMILY.load_pretrained(str(tiny_model_dir), LABELS, tmp_path)[0].parameters()
    )
    if kind == "full":
        assert trainable == total == base_total
    else:
        assert 0 < trainable < base_total
    before = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    cfg = TrainConfig(
        epochs=1, batch_size=16, learning_rate=1e-2, early_stopping_patience=None, warmup_ratio=0
    )
    data = encoded(tok)
    T.train(m, data, data, cfg, tok.pad_token_id, family=FAMILY, progress=False)
    changed = [n for n, p in m.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "no trainable parameter moved"
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if not p.requires_grad)


def test_freeze_trains_only_the_top_layers_head_and_pooler(tiny_model_dir, tmp_path):
    model, _ = tiny(tiny_model_dir, tmp_path)
    m = apply_method(model, method("freeze", train_top_layers=1), 10)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names and all(
        n.startswith(("bert.encoder.layer.1.", "classifier.", "bert.pooler.")) for n in names
    )
    assert any(n.startswith("bert.encoder.layer.1.") for n in names)
    with pytest.raises(ValueError, match="has 2 layers"):
        apply_method(tiny(tiny_model_dir, tmp_path)[0], method("freeze", train_top_layers=3), 10)


@pytest.mark.parametrize("family", ["sequence-classification", "causal-lm"])
def test_lora_on_the_top_layers_adapts_only_them_and_stops_backpropagation_there(
    tiny_model_dir, tiny_causal_lm_dir, tmp_path, family
):
    """``adapt_top_layers``: LoRA weights only in the top layers (BERT's ``layer``, Llama's
    ``layers``), the layers below run without building a graph (no gradient reaches them)."""
    from slimflow.models.archs import adapter_of
    from slimflow.models.families import get_family

    fam = get_family(family)
    folder, labels = (
        (tiny_model_dir, LABELS) if family == "sequence-classification" else (tiny_causal_lm_dir, [])
    )
    model, _ = fam.load_pretrained(str(folder), labels, tmp_path)
    layers = list(adapter_of(model).layers(model))  # the same modules once peft wraps the model
    blocks = len(layers)
    cfg = FinetuneConfig.model_validate({"method": {"kind": "lora", "r": 4, "adapt_top_layers": 1}}).method
    m = _apply_method(model, cfg, 10, fam)
    adapted = {re.search(r"\.layers?\.(\d+)\.", n).group(1) for n, _ in m.named_parameters() if "lora_" in n}
    assert adapted == {str(blocks - 1)}  # the top block only
    seen: list[bool] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad)) for b in layers]  # fmt: skip
    m.train()
    m(input_ids=torch.tensor([[1, 2, 3, 4]]))
    for h in hooks:
        h.remove()
    assert seen == [False] * (blocks - 1) + [True]  # the graph starts at the adapted block
    with pytest.raises(ValueError, match=f"has {blocks} layers"):
        model, _ = fam.load_pretrained(str(folder), labels, tmp_path)
        _apply_method(model, cfg.model_copy(update={"adapt_top_layers": blocks + 1}), 10, fam)


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("lora", {"r": 4, "target_modules": ["query", "value"]}),
        ("ia3", {}),
        ("adalora", {"init_r": 4, "target_r": 2}),
    ],
)
def test_merged_model_matches_the_adapter_model(tiny_model_dir, tmp_path, kind, kw):
    model, tok = tiny(tiny_model_dir, tmp_path)
    m = apply_method(model, method(kind, **kw), 20)
    with torch.no_grad():  # move the adapters away from their identity init
        for _, p in m.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    data = encoded(tok, 32)
    before = T.predict_logits(m, data, 8, tok.pad_token_id)
    merged, did_merge = merge(m)
    assert did_merge
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_modules())
    after = T.predict_logits(merged, data, 8, tok.pad_token_id)
    assert np.abs(before - after).max() < 1e-5
    assert np.abs(before).max() > 0  # not a trivially-zero comparison


def test_training_learns_the_synthetic_task(tiny_model_dir, tmp_path):
    model, tok = tiny(tiny_model_dir, tmp_path)
    T.set_seed(0)
    m = apply_method(model, method("full"), 10)
    train, val = encoded(tok, 200, 1), encoded(tok, 60, 2)
    start = FAMILY.evaluate(m, val, 32, tok.pad_token_id)
    cfg = TrainConfig(epochs=6, batch_size=16, learning_rate=3e-3, early_stopping_patience=None)
    res = T.train(m, train, val, cfg, tok.pad_token_id, family=FAMILY, progress=False)
    end = FAMILY.evaluate(m, val, 32, tok.pad_token_id)
    assert res.history[-1].train_loss < res.history[0].train_loss
    assert end["loss"] < start["loss"] and end["accuracy"] >= 0.9
    assert res.best_metric == max(h.val["accuracy"] for h in res.history)


def test_early_stopping_stops_and_restores_the_best_epoch(tiny_model_dir, tmp_path):
    model, tok = tiny(tiny_model_dir, tmp_path)
    m = apply_method(model, method("full"), 10)
    data = encoded(tok)
    # a zero learning rate never improves the metric: stop after `patience` flat epochs
    cfg = TrainConfig(
        epochs=10, learning_rate=1e-12, warmup_ratio=0, early_stopping_patience=2, batch_size=32
    )
    res = T.train(m, data, data, cfg, tok.pad_token_id, family=FAMILY, progress=False)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1
    # the kept epoch's validation figures are those of the restored weights: no second evaluation
    assert T.kept_epoch_validation(res) == FAMILY.evaluate(m, data, 32, tok.pad_token_id)


def test_few_shot_takes_k_per_class():
    df = make_reviews(100).rename(columns={"review": "text", "sentiment": "label"})
    out = few_shot_rows(df, FewShotConfig(k=7, seed=1))
    assert out["label"].value_counts().to_dict() == {"pos": 7, "neg": 7}
    assert out.equals(few_shot_rows(df, FewShotConfig(k=7, seed=1)))


def _prepared(tmp_path):
    df = make_reviews(160)
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    prepared, _ = prepare(
        data_cfg(p, validation={"min_per_class": 10}), tmp_path / "data", "sha", tmp_path / "rep"
    )
    return prepared


def _ft_cfg(tiny_model_dir, kind="lora", **kw):
    return FinetuneConfig.model_validate(
        {
            "model": str(tiny_model_dir),
            "method": {"kind": kind, **kw},
            "train": {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "max_length": 32},
        }
    )


def test_finetune_saves_a_merged_safetensors_model_that_reloads_identically(tiny_model_dir, tmp_path):
    prepared = _prepared(tmp_path)
    epochs = []
    res = finetune(
        _ft_cfg(tiny_model_dir, r=4, target_modules=["query", "value"]),
        prepared,
        tmp_path / "teacher",
        tmp_path,
        on_epoch=epochs.append,
        progress=False,
    )
    out = Path(res.model_dir)
    assert res.merged and res.merge_max_abs_diff is not None and res.merge_max_abs_diff < 1e-4
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not list(out.glob("*.bin"))
    assert [e.epoch for e in epochs] == [1, 2]
    assert 0 < res.trainable_share < 1
    assert set(res.test) == {"loss", "accuracy", "f1", "precision", "recall", "f1_weighted"}
    model, tok = FAMILY.load_trained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    import pandas as pd

    test = pd.read_parquet(prepared.path("test"))
    enc = B.encode(tok, test["text"].tolist(), [LABELS.index(x) for x in test["label"]], 32)
    again = FAMILY.evaluate(model, enc, 16, tok.pad_token_id)
    assert again["accuracy"] == pytest.approx(res.test["accuracy"])


def test_prefix_tuning_is_saved_as_an_adapter_and_reloads(tiny_model_dir, tmp_path):
    prepared = _prepared(tmp_path)
    res = finetune(
        _ft_cfg(tiny_model_dir, "prefix_tuning", num_virtual_tokens=4),
        prepared,
        tmp_path / "t",
        tmp_path,
        progress=False,
    )
    assert not res.merged and res.merge_max_abs_diff is None
    assert (Path(res.model_dir) / "adapter_config.json").is_file()
    model, _ = FAMILY.load_trained(res.model_dir)
    assert hasattr(model, "peft_config")


def test_keep_initial_never_returns_worse_than_the_start(tiny_model_dir, tmp_path):
    model, tok = tiny(tiny_model_dir, tmp_path)
    T.set_seed(0)
    m = apply_method(model, method("full"), 10)
    train, val = encoded(tok, 200, 1), encoded(tok, 60, 2)
    good = TrainConfig(epochs=6, batch_size=16, learning_rate=3e-3, early_stopping_patience=None)
    T.train(m, train, val, good, tok.pad_token_id, family=FAMILY, progress=False)
    start = FAMILY.evaluate(m, val, 32, tok.pad_token_id)["accuracy"]
    assert start >= 0.9
    ruin = TrainConfig(epochs=2, batch_size=16, learning_rate=1.0, warmup_ratio=0, max_grad_norm=None)
    res = T.train(m, train, val, ruin, tok.pad_token_id, family=FAMILY, progress=False, keep_initial=True)
    assert max(h.val["accuracy"] for h in res.history) < start  # training really made it worse...
    assert res.best_epoch == 0  # ...so the starting weights were kept
    assert T.kept_epoch_validation(res) is None  # (not scored in full by the loop: evaluated afresh)
    assert FAMILY.evaluate(m, val, 32, tok.pad_token_id)["accuracy"] == start
