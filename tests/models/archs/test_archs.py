"""Architecture adapters on tiny BERT and MPNet models built from configs: the same library code
(layer dropping, head and FFN pruning, layer freezing, LoRA heads) works on both through them."""

from __future__ import annotations

import pytest
import torch

from slimflow.models.archs import ARCHS, UnsupportedArchitecture, adapter_for, adapter_of, position_limit
from slimflow.models.families import batching as B
from slimflow.models.train.config import FinetuneConfig
from slimflow.models.train.methods import apply_method
from slimflow.models.train.steps import StepContext, apply_step
from slimflow.models.train.steps.prune_ffn import PruneFFNConfig
from slimflow.models.train.steps.prune_heads import PruneHeadsConfig
from slimflow.models.train.students import layer_drop
from tests.conftest import FAMILY, build_tiny_model, build_tiny_mpnet, make_reviews

LABELS = ["neg", "pos"]
BUILDERS = {"bert": build_tiny_model, "mpnet": build_tiny_mpnet}


@pytest.fixture(params=sorted(BUILDERS))
def tiny(request, tmp_path):
    folder = BUILDERS[request.param](tmp_path / request.param, layers=3)
    model, tok = FAMILY.load_pretrained(str(folder), LABELS, tmp_path)
    return request.param, folder, model, tok


def encoded(tok, n=32):
    df = make_reviews(n)
    return B.encode(tok, df["review"].tolist(), [LABELS.index(x) for x in df["sentiment"]], 24)


def run(model, tok, n=6):
    return B.predict_logits(model, encoded(tok, n), 4, adapter_of(model).pad_id(tok))


def test_adapters_are_found_by_model_type(tiny):
    name, folder, model, _ = tiny
    arch = adapter_of(model)
    assert arch.name == name and arch is ARCHS.get(name)
    assert len(arch.layers(model)) == 3 and arch.num_heads(model) == 4
    assert position_limit(folder) == {"bert": 64, "mpnet": 66}[name]
    with pytest.raises(UnsupportedArchitecture, match="no architecture adapter for model type 'gpt2'"):
        adapter_for("gpt2")


def test_layer_drop_keeps_weights_and_runs(tiny):
    name, _, model, tok = tiny
    student = layer_drop(model, [0, 2])
    arch = adapter_of(student)
    assert len(arch.layers(student)) == 2 and student.config.num_hidden_layers == 2
    assert len(arch.layers(model)) == 3  # the teacher is untouched
    for i, j in ((0, 0), (1, 2)):
        a, b = arch.layers(student)[i].state_dict(), arch.layers(model)[j].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert run(student, tok).shape == (6, 2)


def test_head_and_ffn_pruning_shrink_the_weights_and_the_model_still_runs_and_reloads(tiny, tmp_path):
    name, _, model, tok = tiny
    ctx = StepContext(
        calibration=encoded(tok), pad_id=adapter_of(model).pad_id(tok), batch_size=8, family=FAMILY
    )
    before = sum(p.numel() for p in model.parameters())
    if name == "bert":
        heads = apply_step(model, PruneHeadsConfig(ratio=0.5), ctx)
        assert heads.figures["heads_removed"] == 6
    else:  # MPNet's shared relative-position bias cannot lose heads: refused before touching weights
        with pytest.raises(ValueError, match="prune_heads does not apply to mpnet models"):
            apply_step(model, PruneHeadsConfig(ratio=0.5), ctx)
    ffn = apply_step(model, PruneFFNConfig(ratio=0.5), ctx)
    assert ffn.figures["ffn_width_after"] == 32
    assert sum(p.numel() for p in model.parameters()) < before
    arch = adapter_of(model)
    up, down = arch.ffn(arch.layers(model)[0])
    assert up.out_features == down.in_features == 32
    logits = run(model, tok)
    FAMILY.save(model, tok, tmp_path / "pruned", {"labels": LABELS})
    again, _ = FAMILY.load_trained(tmp_path / "pruned")
    torch.testing.assert_close(torch.from_numpy(run(again, tok)), torch.from_numpy(logits))


def test_default_lora_heads_come_from_the_architecture(tiny):
    """BERT trains its classifier and pooler beside the adapter; MPNet has no pooler, and the same
    default config works for it (it needed modules_to_save: [classifier] before adapters)."""
    name, _, model, _ = tiny
    cfg = FinetuneConfig.model_validate({"method": {"kind": "lora", "r": 2}}).method
    wrapped = apply_method(model, cfg, 10, FAMILY)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert any("pooler" in n for n in trainable) == (name == "bert")
