"""The INT4/INT8 screen of a causal LM: its emulated weights are the ones onnxruntime-genai's builder
writes, plans are scored against FP32 and leave the model as they found it, and
benchmarks/llm_sensitivity.py reports bounds, single kinds and the greedy order consistently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimflow.models.families import get_family
from slimflow.models.families.causal_lm.chat import prompt_ids
from slimflow.models.optimize import genai as G
from slimflow.models.optimize.llm_sensitivity import Emulator, builder_name, fake_quantize

FAMILY = get_family("causal-lm")
SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "llm_sensitivity.py"


def _dequantized(folder: Path) -> dict[str, tuple[int, np.ndarray]]:
    """Every MatMulNBits of a build, dequantized to [N, K] (symmetric: zero point 2^(bits-1))."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        bits, block, k, nn = at["bits"], at["block_size"], at["K"], at["N"]
        packed = numpy_helper.to_array(inits[n.input[1]]).reshape(nn, -1)
        if bits == 4:  # two codes a byte, low nibble first
            codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(nn, -1)
        else:
            codes = packed
        scales = numpy_helper.to_array(inits[n.input[2]]).reshape(nn, -1)
        q = codes[:, :k].astype(np.float32) - 2 ** (bits - 1)
        w = q.reshape(nn, -1, block) * scales[:, :, None]
        out[n.name.rsplit("_Q", 1)[0]] = (bits, w.reshape(nn, -1)[:, :k])
    return out


def test_the_emulated_weights_are_the_builders_int4_and_int8_weights(tiny_sft) -> None:
    import torch

    tmp, _, _ = tiny_sft
    model, _ = FAMILY.load_trained(tmp / "teacher")
    int8 = ["/model/layers.0/mlp/down_proj/MatMul", "/model/layers.1/attn/qkv_proj/MatMul"]
    cfg = G.GenaiBuildConfig(precision="int4", block_size=16, int8_nodes=int8)
    built = _dequantized(G.build(tmp / "teacher", tmp / "int4-emulated", cfg, tmp / "cache"))
    weights: dict[str, list] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and builder_name(name):
            weights.setdefault(builder_name(name), []).append(mod.weight.detach())  # q, k, v in order
    assert set(weights) == set(built) == set(G.decoder_matmuls(model.config.num_hidden_layers))
    for name, parts in weights.items():
        bits, got = built[name]
        assert bits == (8 if name in int8 else 4), name
        want = fake_quantize(torch.cat(parts), bits, 16).numpy()
        step = np.abs(got).max() / 2 ** (bits - 1)
        assert np.abs(got - want).max() <= 1e-3 * step, name  # the same codes and scales
        assert np.abs(got - torch.cat(parts).numpy()).max() > 0  # and really rounded


def test_plans_are_scored_against_fp32_and_restore_the_weights(tiny_sft) -> None:
    tmp, _, prepared = tiny_sft
    model, tok = FAMILY.load_trained(tmp / "teacher")
    frame = pd.read_parquet(prepared.path("validation"))
    ids = [prompt_ids(tok, p) for p in frame["prompt"].tolist()[:24]]
    emu = Emulator(model, ids, tok.pad_token_id or 0, block_size=16, batch_size=5)
    assert emu.matmuls() == G.decoder_matmuls(model.config.num_hidden_layers)
    # the tiny model ties its embedding to the head, as SmolLM2 does: it stays tied (the builder
    # shares the head's INT4 weights with the embedding lookup)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    before = emu._logits()
    assert np.allclose(before.numpy(), emu.reference.numpy(), atol=1e-5)  # batching keeps row order
    int4, int8 = emu.score([]), emu.score(["*"])
    assert int4.int8_matmuls == 0 and int8.int8_matmuls == len(emu.matmuls()) and int8.int8_weight_share == 1
    assert 0 <= int8.kl < int4.kl and 0 <= int4.agreement <= int8.agreement <= 1
    attn = emu.score(["*/attn/*"])
    assert 0 < attn.int8_weight_share < 1 and attn.int8_matmuls == 2 * model.config.num_hidden_layers
    assert np.allclose(emu._logits().numpy(), before.numpy(), atol=1e-6)  # FP32 weights back
    with pytest.raises(ValueError, match="at least one prompt"):
        Emulator(model, [], 0)


def test_the_sensitivity_script_reports_bounds_kinds_and_a_consistent_greedy_order(tiny_sft, tmp_path):
    tmp, _, prepared = tiny_sft
    out = tmp_path / "s.json"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tmp / "teacher"), "--prompts-file",
           str(prepared.path("train")), "--prompts", "16", "--block-size", "16", "--threads", "1",
           "--plan", "*/attn/*, /lm_head/*", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    plans = report["plans"]
    sections = [p["section"] for p in plans]
    assert sections == ["bounds"] * 2 + ["asked"] + ["alone"] * 6 + ["greedy"] * 6
    assert report["rows_scored"] == 16
    all4, all8, asked = plans[0], plans[1], plans[2]
    layers = json.loads((tmp / "teacher" / "config.json").read_text())["num_hidden_layers"]
    assert asked["int8_globs"] == ["*/attn/*", "/lm_head/*"] and asked["int8_matmuls"] == 2 * layers + 1
    greedy = [p for p in plans if p["section"] == "greedy"]
    assert [len(p["int8_globs"]) for p in greedy] == [1, 2, 3, 4, 5, 6]
    assert greedy[-1]["kl"] == pytest.approx(all8["kl"], rel=1e-6, abs=1e-9)  # every kind = all INT8
    alone = {p["int8_globs"][0]: p["kl"] for p in plans if p["section"] == "alone"}
    assert greedy[0]["kl"] == pytest.approx(min(alone.values()))  # step 1 = the best kind alone
    assert all8["kl"] < all4["kl"] and "all INT4" in proc.stdout
