"""Compression steps on tiny BERTs: real shrinking, shapes, runs on varied inputs, ratio 0 = no-op."""

import pytest
import torch
from pydantic import ValidationError

from slimflow.models.archs import ARCHS
from slimflow.models.families import batching as B
from slimflow.models.train.steps import STEPS, StepContext, apply_step
from slimflow.models.train.steps.prune_ffn import PruneFFNConfig
from slimflow.models.train.steps.prune_heads import PruneHeadsConfig
from slimflow.models.train.steps.prune_magnitude import PruneMagnitudeConfig
from tests.conftest import FAMILY, build_tiny_model, make_reviews

LABELS = ["neg", "pos"]


@pytest.fixture
def model_and_ctx(tmp_path):
    d = build_tiny_model(tmp_path / "m", layers=3)
    model, tok = FAMILY.load_pretrained(str(d), LABELS, tmp_path)
    df = make_reviews(64)
    enc = B.encode(tok, df["review"].tolist(), [LABELS.index(x) for x in df["sentiment"]], 32)
    return model, tok, StepContext(calibration=enc, pad_id=tok.pad_token_id, batch_size=16, family=FAMILY)


def logits(model, tok, n, length):
    df = make_reviews(40, seed=3)
    texts = [" ".join(t.split() * 4) for t in df["review"].tolist()[:n]]
    enc = B.encode(tok, texts, [0] * n, length)
    return B.predict_logits(model, enc, 8, tok.pad_token_id)


def test_the_registry_has_every_step():
    assert {"prune_heads", "prune_ffn", "prune_magnitude"} <= set(STEPS)


@pytest.mark.parametrize(
    "cfg", [PruneHeadsConfig(ratio=0), PruneFFNConfig(ratio=0), PruneMagnitudeConfig(sparsity=0)], ids=str
)
def test_ratio_zero_changes_nothing(model_and_ctx, cfg):
    model, tok, ctx = model_and_ctx
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_step(model, cfg, ctx)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_head_pruning_shrinks_the_matrices_and_still_runs(model_and_ctx, tmp_path):
    model, tok, ctx = model_and_ctx  # 3 layers x 4 heads of 8 dims
    report = apply_step(model, PruneHeadsConfig(ratio=0.5, min_heads_per_layer=1), ctx)
    removed = report.figures["heads_removed"]
    assert removed == 6 and report.figures["params_after"] < report.figures["params_before"]
    pruned = model.config.pruned_heads
    assert sum(len(v) for v in pruned.values()) == 6
    for i, layer in enumerate(model.bert.encoder.layer):
        kept = 4 - len(pruned.get(i, []))
        assert kept >= 1
        assert layer.attention.self.query.weight.shape == (kept * 8, 32)
        assert layer.attention.output.dense.weight.shape == (32, kept * 8)
    for n, length in ((1, 5), (7, 24), (3, 60)):
        assert logits(model, tok, n, length).shape == (n, 2)
    ref = logits(model, tok, 4, 20)  # saved and reloaded, the pruned model is the same model
    FAMILY.save(model, tok, tmp_path / "saved", {})
    again, _ = FAMILY.load_trained(tmp_path / "saved")
    assert torch.allclose(torch.from_numpy(logits(again, tok, 4, 20)), torch.from_numpy(ref), atol=1e-5)


def test_head_choice_is_global_but_keeps_a_head_per_layer():
    score = torch.tensor([[0.1, 0.2, 0.3], [5.0, 6.0, 7.0]])
    assert ARCHS.get("bert").choose_heads(None, score, ratio=0.5, min_keep=1) == {0: [0, 1], 1: [0]}


def test_explicit_head_lists_are_checked_against_the_model(model_and_ctx):
    model, _, ctx = model_and_ctx
    with pytest.raises(ValueError, match="every head of layer 0"):
        apply_step(model, PruneHeadsConfig(heads={0: [0, 1, 2, 3]}), ctx)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        apply_step(model, PruneHeadsConfig(heads={7: [0]}), ctx)
    with pytest.raises(ValueError, match="head index out of range"):
        apply_step(model, PruneHeadsConfig(heads={0: [9]}), ctx)


def test_ffn_pruning_slices_both_linears_and_reloads(model_and_ctx, tmp_path):
    model, tok, ctx = model_and_ctx  # intermediate width 64
    report = apply_step(model, PruneFFNConfig(ratio=0.25, importance="gradient"), ctx)
    assert report.figures["ffn_width_after"] == 48 and model.config.intermediate_size == 48
    for layer in model.bert.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (48, 32)
        assert layer.output.dense.weight.shape == (32, 48)
    ref = logits(model, tok, 5, 30)
    FAMILY.save(model, tok, tmp_path / "saved", {})
    again, _ = FAMILY.load_trained(tmp_path / "saved")
    assert torch.allclose(torch.from_numpy(logits(again, tok, 5, 30)), torch.from_numpy(ref), atol=1e-5)


def test_magnitude_pruning_reaches_the_sparsity_and_leaves_no_masks(model_and_ctx):
    model, _, ctx = model_and_ctx
    report = apply_step(model, PruneMagnitudeConfig(sparsity=0.4), ctx)
    assert report.figures["encoder_linear_sparsity"] == pytest.approx(0.4, abs=0.01)
    assert not any("_orig" in k or "_mask" in k for k in model.state_dict())
    assert "dense kernels run no faster" in report.notes[0]


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (PruneHeadsConfig, {"ratio": 1.0}),
        (PruneHeadsConfig, {"ratio": -0.1}),
        (PruneFFNConfig, {"ratio": 1.0}),
        (PruneMagnitudeConfig, {"sparsity": 1.5}),
        (PruneHeadsConfig, {"min_heads_per_layer": 0}),
        (PruneHeadsConfig, {"heads": {0: [1, 1]}}),
        (PruneFFNConfig, {"ratio": 0.3, "typo": 1}),
    ],
)
def test_invalid_step_configs_are_refused(cls, kw):
    with pytest.raises(ValidationError):
        cls(**kw)
