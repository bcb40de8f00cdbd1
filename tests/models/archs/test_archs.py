"""Architecture adapters on tiny BERT, MPNet and Llama models built from configs: the same library
code (layer dropping, head and FFN pruning, layer freezing, LoRA heads, padding) works on all three
through them."""

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
from tests.conftest import FAMILY, build_tiny_llama, build_tiny_model, build_tiny_mpnet, make_reviews

LABELS = ["neg", "pos"]
BUILDERS = {"bert": build_tiny_model, "mpnet": build_tiny_mpnet, "llama": build_tiny_llama}


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
    assert position_limit(folder) == {"bert": 64, "mpnet": 66, "llama": 64}[name]
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
    elif name == "llama":  # half of the key/value groups: one group (2 query heads) per layer
        heads = apply_step(model, PruneHeadsConfig(ratio=0.5), ctx)
        assert heads.figures["heads_removed"] == 6
        assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)
    else:  # MPNet's shared relative-position bias cannot lose heads: refused before touching weights
        with pytest.raises(ValueError, match="prune_heads does not apply to mpnet models"):
            apply_step(model, PruneHeadsConfig(ratio=0.5), ctx)
    ffn = apply_step(model, PruneFFNConfig(ratio=0.5), ctx)
    assert ffn.figures["ffn_width_after"] == 32
    assert sum(p.numel() for p in model.parameters()) < before
    arch = adapter_of(model)
    ins, down = arch.ffn(arch.layers(model)[0])
    assert all(up.out_features == 32 for up in ins) and down.in_features == 32
    assert len(ins) == (2 if name == "llama" else 1)  # Llama's gate and up projections both shrink
    logits = run(model, tok)
    FAMILY.save(model, tok, tmp_path / "pruned", {"labels": LABELS})
    again, _ = FAMILY.load_trained(tmp_path / "pruned")
    torch.testing.assert_close(torch.from_numpy(run(again, tok)), torch.from_numpy(logits))


def test_default_lora_heads_come_from_the_architecture(tiny):
    """BERT trains its classifier and pooler beside the adapter; MPNet has no pooler, and the same
    default config works for it (it needed modules_to_save: [classifier] before adapters); Llama
    adapts every attention and MLP projection and trains its ``score`` head."""
    name, _, model, _ = tiny
    cfg = FinetuneConfig.model_validate({"method": {"kind": "lora", "r": 2}}).method
    wrapped = apply_method(model, cfg, 10, FAMILY)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    head = "score" if name == "llama" else "classifier"
    assert any("lora_" in n for n in trainable) and any(head in n for n in trainable)
    assert any("pooler" in n for n in trainable) == (name == "bert")
    if name == "llama":
        adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
        assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_freezing_keeps_the_top_layers_and_the_head_trainable(tiny):
    name, _, model, _ = tiny
    cfg = FinetuneConfig.model_validate({"method": {"kind": "freeze", "train_top_layers": 1}}).method
    frozen = apply_method(model, cfg, 10, FAMILY)
    arch = adapter_of(frozen)
    top = {id(p) for p in arch.layers(frozen)[-1].parameters()}
    for n, p in frozen.named_parameters():
        in_head = n.split(".")[0] in ("classifier", "score") or ".pooler." in f".{n}"
        assert p.requires_grad == (id(p) in top or in_head), n


# ------------------------------------------------------------------------------------- Llama only
@pytest.fixture
def llama(tmp_path):
    folder = build_tiny_llama(tmp_path / "llama")
    model, tok = FAMILY.load_pretrained(str(folder), LABELS, tmp_path)
    return model.eval(), tok


def test_llama_pads_with_eos_and_scores_the_last_real_token_on_either_side(llama):
    model, tok = llama
    assert tok.pad_token == tok.eos_token == "</s>" and model.config.pad_token_id == tok.eos_token_id
    texts = ["good film", "the plot was dull and the cast was very boring"]
    alone = [model(**tok([t], return_tensors="pt")).logits for t in texts]
    for side in ("right", "left"):
        tok.padding_side = side
        batch = tok(texts, padding=True, return_tensors="pt")
        assert (batch["input_ids"][0] == tok.pad_token_id).any()  # the short text really is padded
        with torch.no_grad():
            out = model(**batch).logits
        for i in range(2):
            torch.testing.assert_close(out[i], alone[i][0].detach(), atol=1e-5, rtol=1e-4)


def test_llama_head_pruning_removes_whole_kv_groups_keeps_the_rest_and_reloads(llama, tmp_path):
    """Pruning key/value group 0 gives what the unpruned model gives with that group's query heads
    silenced; the pruned config (2 query heads, 1 key/value head, head_dim 8) reloads."""
    model, tok = llama
    arch = adapter_of(model)
    batch = tok(["good film", "dull plot"], padding=True, return_tensors="pt")
    mask = torch.ones(3, 4)
    mask[:, :2] = 0  # group 0 = query heads 0 and 1
    extra, hooks = arch.head_mask_inputs(model, mask)
    with torch.no_grad():
        silenced = model(**batch, **extra).logits
    for h in hooks:
        h.remove()
    arch.prune_heads(model, {i: [0, 1] for i in range(3)})
    with torch.no_grad():
        pruned = model(**batch).logits
    torch.testing.assert_close(pruned, silenced, atol=1e-5, rtol=1e-4)
    attn = arch.layers(model)[0].self_attn
    assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 8 and attn.o_proj.in_features == 16
    FAMILY.save(model, tok, tmp_path / "pruned", {"labels": LABELS})
    again, _ = FAMILY.load_trained(tmp_path / "pruned")
    assert (again.config.num_attention_heads, again.config.num_key_value_heads, again.config.head_dim) == (
        2,
        1,
        8,
    )
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, pruned, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        ({0: [0], 1: [0], 2: [0]}, "not whole key/value groups"),
        ({0: [0, 1]}, "same number of key/value groups"),
        ({i: [0, 1, 2, 3] for i in range(3)}, "every key/value head"),
    ],
)
def test_llama_head_plans_that_break_the_grouping_are_refused(llama, plan, why):
    model, _ = llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=why):
        adapter_of(model).prune_heads(model, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-pruned
