"""A Llama classifier as search candidates: ONNX export with parity (pad = eos, last real token
scored), weight-only INT4/INT8 through MatMulNBits, and the PyTorch predictor."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from slimflow.models.optimize.config import ExportConfig
from slimflow.models.optimize.export import export_onnx
from slimflow.models.optimize.predictors import OrtPredictor, describe, load_predictor
from slimflow.models.optimize.quantizers import QuantContext, apply_quantizer
from slimflow.models.optimize.quantizers.ort_weight_only import (
    OrtWeightInt4Config,
    OrtWeightInt8Config,
    fold_transposed_weights,
)
from slimflow.models.optimize.targets import get_target
from tests.conftest import FAMILY, build_tiny_llama, make_reviews

TEXTS = make_reviews(40)["review"].tolist()


@pytest.fixture(scope="module")
def llama_clf(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("llama")
    model, tok = FAMILY.load_pretrained(str(build_tiny_llama(tmp / "base")), ["neg", "pos"], tmp)
    out = tmp / "clf"
    FAMILY.save(model, tok, out, {"stage": "teacher", "labels": ["neg", "pos"], "max_length": 32})
    return out


@pytest.fixture(scope="module")
def llama_onnx(llama_clf, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-onnx")
    res = export_onnx(llama_clf, out, ExportConfig(opset=18), get_target("cpu"), TEXTS[:12], threads=1)
    return out, res


def test_llama_export_matches_pytorch_at_every_shape(llama_clf, llama_onnx):
    out, res = llama_onnx
    assert res.parity["passed"] and res.parity_unfused["passed"]
    assert {(s["batch"], s["length"]) for s in res.parity["shapes"]} == {
        (b, n) for b in (1, 8, 32) for n in (8, 64)
    }
    ref, onnx_model = load_predictor(llama_clf, 1), load_predictor(out, 1)
    assert ref.input_names == {"input_ids", "attention_mask"}  # read through transformers' decorators
    # texts of different lengths in one batch: the score comes from each row's last real token
    texts = [" ".join(TEXTS[:k]) for k in (1, 3, 2, 4)]
    batch = ref.encode(texts)
    assert (batch["attention_mask"] == 0).any()
    np.testing.assert_allclose(onnx_model.logits(batch), ref.logits(batch), atol=1e-4)
    one = np.stack([ref.logits(ref.encode([t]))[0] for t in texts])
    np.testing.assert_allclose(ref.logits(batch), one, atol=1e-4)


@pytest.mark.parametrize(
    "cfg, tol", [(OrtWeightInt8Config(block_size=16), 0.01), (OrtWeightInt4Config(), 0.1)]
)
def test_weight_only_quantization_stores_matmul_weights_in_n_bits(llama_clf, llama_onnx, tmp_path, cfg, tol):
    import onnx
    from transformers import AutoTokenizer

    out, _ = llama_onnx
    ctx = QuantContext(
        onnx_fp32=out / "model.onnx",
        onnx_unfused=out / "unfused" / "model.onnx",
        torch_dir=llama_clf,
        tokenizer=AutoTokenizer.from_pretrained(llama_clf),
        calibration_texts=TEXTS,
        max_length=32,
        target=get_target("cpu").resolved(),
        family=FAMILY,
    )
    rep = apply_quantizer(cfg, ctx, tmp_path)
    graph = onnx.load(str(tmp_path / "model.onnx"))
    ops = Counter(n.op_type for n in graph.graph.node)
    # 3 layers x (q, k, v, o, gate, up, down) + the score head
    assert ops["MatMulNBits"] == rep.figures["matmul_nbits"] == 22
    bits = {
        a.i for n in graph.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"
    }
    assert bits == {cfg.bits}
    assert (tmp_path / "model.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    ref = load_predictor(llama_clf, 1)
    q = OrtPredictor(tmp_path / "model.onnx", ref.tokenizer, describe(out), 1)
    batch = ref.encode(TEXTS[:8], length=16)
    diff = np.abs(q.logits(batch) - ref.logits(batch)).max()
    assert 0 < diff < tol  # really quantized, and still close


def test_weight_only_keeps_named_matmuls_and_refuses_unknown_names(llama_clf, llama_onnx, tmp_path):
    import onnx
    from transformers import AutoTokenizer

    out, _ = llama_onnx
    names = [n.name for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMul"]
    head = next(n for n in names if "score" in n)
    ctx = QuantContext(
        out / "model.onnx", out / "unfused" / "model.onnx", llama_clf,
        AutoTokenizer.from_pretrained(llama_clf), TEXTS, 32, get_target("cpu").resolved(), FAMILY,
    )  # fmt: skip
    rep = apply_quantizer(OrtWeightInt4Config(keep_fp32=[head]), ctx, tmp_path)
    kept = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.name == head]
    assert kept and kept[0].op_type == "MatMul" and rep.figures["nodes_kept_fp32"] == 1
    with pytest.raises(ValueError, match="matches no MatMul node"):
        apply_quantizer(OrtWeightInt4Config(keep_fp32=["/nope/*"]), ctx, tmp_path)


def test_block_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        OrtWeightInt4Config(block_size=48)


def test_a_transposed_constant_weight_is_folded_for_the_quantizer():
    """Optimum writes a tied LM head as MatMul(x, Transpose(embedding)): the quantizer needs a constant."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    emb = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0], name="t"),
            helper.make_node("MatMul", ["x", "emb_t"], ["y"], name="head"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])],
        [numpy_helper.from_array(emb, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((2, 4), np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert fold_transposed_weights(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6)
