"""ONNX export parity, quantization steps (integer ops really present), agreement checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from slimflow.models.optimize.config import ExportConfig
from slimflow.models.optimize.export import ParityError, export_onnx, parity
from slimflow.models.optimize.predictors import load_predictor
from slimflow.models.optimize.quantizers import QuantContext, apply_quantizer
from slimflow.models.optimize.quantizers.ort_fp16 import OrtFp16Config
from slimflow.models.optimize.quantizers.ort_int8_dynamic import OrtDynamicInt8Config
from slimflow.models.optimize.quantizers.ort_int8_static import OrtStaticInt8Config
from slimflow.models.optimize.quantizers.torch_int8 import quantize_module
from slimflow.models.optimize.targets import get_target
from tests.conftest import FAMILY, make_reviews

TEXTS = make_reviews(80)["review"].tolist()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained classifier saved the way the pipeline saves it (labels, max_length)."""
    from tests.conftest import build_tiny_model, train_tiny_teacher

    tmp = tmp_path_factory.mktemp("export")
    base = build_tiny_model(tmp / "base", layers=2, hidden=32)
    _, result = train_tiny_teacher(tmp, base, rows=160, epochs=2)
    return Path(result.model_dir)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return out, export_onnx(trained, out, ExportConfig(), get_target("cpu"), TEXTS[:16], threads=1)


def ops(path: Path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def ctx(exported_dir: Path, model_dir: Path, calibration=TEXTS) -> QuantContext:
    from transformers import AutoTokenizer

    return QuantContext(
        onnx_fp32=exported_dir / "model.onnx",
        onnx_unfused=exported_dir / "unfused" / "model.onnx",
        torch_dir=model_dir,
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        calibration_texts=list(calibration),
        max_length=32,
        target=get_target("cpu").resolved(),
        family=FAMILY,
    )


# ------------------------------------------------------------------------------------------ export
def test_export_matches_pytorch_at_every_shape_and_keeps_dynamic_axes(trained, exported):
    out, res = exported
    assert res.parity["passed"] and res.parity_unfused["passed"]
    shapes = {(s["batch"], s["length"]) for s in res.parity["shapes"]}
    # tiny model has 64 positions: the 128-token shape is capped to 64, never silently skipped
    assert shapes == {(b, n) for b in (1, 8, 32) for n in (8, 64)}
    assert all(s["max_abs_diff"] <= 1e-4 for s in res.parity["shapes"])
    assert res.fused_ops.get("Attention") == 2 and not res.fused_ops.get("SkipLayerNormalization")
    # an unseen batch size and length still run (no axis fixed at trace time), same outputs
    ref, onnx_model = load_predictor(trained, 1), load_predictor(out, 1)
    batch = ref.encode(TEXTS[:5], length=17)
    np.testing.assert_allclose(onnx_model.logits(batch), ref.logits(batch), atol=1e-4)


def test_skip_layer_norm_is_fused_by_the_session_unless_its_settings_turn_the_fusion_off(
    trained, exported, tmp_path
):
    from slimflow.models.optimize.targets import SessionSettings

    out, _ = exported
    assert ops(out / "model.onnx")["SkipLayerNormalization"] == 0  # left to the runtime (the default)
    assert ops(out / "model.onnx")["LayerNormalization"] >= 4
    cpu = get_target("cpu")
    fused, unfused = tmp_path / "fused.onnx", tmp_path / "unfused.onnx"
    on = cpu.session(out / "model.onnx", settings=SessionSettings(1), save_optimized=fused)
    off_settings = SessionSettings(1, disabled_fusions=("SkipLayerNormFusion",))
    off = cpu.session(out / "model.onnx", settings=off_settings, save_optimized=unfused)
    assert ops(fused)["SkipLayerNormalization"] >= 4  # what ONNX Runtime really runs by default
    assert ops(unfused)["SkipLayerNormalization"] == 0 and ops(unfused)["LayerNormalization"] >= 4
    batch = load_predictor(out, 1).encode(TEXTS[:8], length=24)
    feed = {k: v for k, v in batch.items() if k in {i.name for i in on.get_inputs()}}
    np.testing.assert_allclose(off.run(None, feed)[0], on.run(None, feed)[0], atol=1e-5)

    graph = tmp_path / "graph"  # skip_layer_norm: graph fuses them in the saved file
    res = export_onnx(trained, graph, ExportConfig(skip_layer_norm="graph"), cpu, TEXTS[:8], threads=1)
    assert res.fused_ops.get("SkipLayerNormalization") and ops(graph / "model.onnx")["SkipLayerNormalization"]


def test_parity_failure_names_the_worst_shape(trained):
    ref = load_predictor(trained, 1)

    class Noisy:
        def logits(self, batch):
            out = ref.logits(batch)
            return out + (0.5 if batch["input_ids"].shape[1] == 64 else 0.0)

    rep = parity(ref, Noisy(), TEXTS, [1, 4], [8, 64], atol=1e-3)
    assert not rep.passed
    assert "64 tokens" in rep.message and "> 1e-03" in rep.message
    assert rep.max_abs_diff == pytest.approx(0.5, abs=1e-5)


def test_export_with_impossible_tolerance_fails_with_a_message(trained, tmp_path):
    with pytest.raises(ParityError, match="parity failed"):
        export_onnx(trained, tmp_path, ExportConfig(atol=1e-12), get_target("cpu"), TEXTS[:8], threads=1)


# ------------------------------------------------------------------------------------ quantization
def test_dynamic_int8_graph_has_integer_ops_and_keeps_named_nodes_fp32(trained, exported, tmp_path):
    out, _ = exported
    q = tmp_path / "q"
    q.mkdir()
    rep = apply_quantizer(OrtDynamicInt8Config(), ctx(out, trained), q)
    counts = ops(q / "model.onnx")
    assert counts["DynamicQuantizeLinear"] > 0
    assert counts["MatMulInteger"] + counts["QAttention"] >= 4, counts
    assert rep.recipe["preset"] in ("avx2", "avx512", "avx512_vnni", "arm64")

    keep = "/bert/encoder/layer.1/output/dense/MatMul"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rep = apply_quantizer(OrtDynamicInt8Config(keep_fp32=[keep]), ctx(out, trained), mixed)
    import onnx

    nodes = {n.name: n.op_type for n in onnx.load(str(mixed / "model.onnx")).graph.node}
    assert nodes[keep] == "MatMul" and rep.figures["nodes_kept_fp32"] == 1
    assert ops(mixed / "model.onnx")["MatMulInteger"] == counts["MatMulInteger"] - 1

    with pytest.raises(ValueError, match="matches no node"):
        apply_quantizer(OrtDynamicInt8Config(keep_fp32=["/no/such/node*"]), ctx(out, trained), tmp_path)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_calibrates_on_the_configured_number_of_examples(trained, exported, tmp_path, method):
    out, _ = exported
    cfg = OrtStaticInt8Config(calibration_examples=24, calibration_batch_size=8, method=method)
    rep = apply_quantizer(cfg, ctx(out, trained), tmp_path)
    assert rep.figures["calibration_examples"] == 24
    counts = ops(tmp_path / "model.onnx")
    assert counts["QLinearMatMul"] + counts["MatMulInteger"] > 0, counts
    assert counts["QuantizeLinear"] > 0


def test_static_int8_sensitivity_pass_keeps_the_fewest_nodes_fp32_that_meet_the_bar(
    trained, exported, tmp_path
):
    """The bar is set between the fully quantized model's error and FP32's (0): the pass must keep
    nodes in FP32, the most helpful first, and stop as soon as the bar is met."""
    import onnx

    from slimflow.models.families.base import AgreementReport
    from slimflow.models.optimize.predictors import OrtPredictor

    out, _ = exported
    ref = load_predictor(out, 1)
    want = ref.predict(TEXTS)
    scored: list[float] = []

    def error(path: Path) -> float:
        got = OrtPredictor(Path(path), ref.tokenizer, ref.info, 1, tuned=False).predict(TEXTS)
        return float(np.abs(got - want).mean())

    plain = tmp_path / "plain"
    plain.mkdir()
    cfg = OrtStaticInt8Config(calibration_examples=24, calibration_batch_size=8, sensitivity=None)
    apply_quantizer(cfg, ctx(out, trained), plain)
    bar = error(plain / "model.onnx") / 2
    assert bar > 0

    def agreement(path: Path) -> AgreementReport:
        e = error(path)
        scored.append(e)
        return AgreementReport(e <= bar, 1 - e, len(TEXTS), {}, {}, f"mean |logit diff| {e:.4f}")

    c = ctx(out, trained)
    c.agreement = agreement
    cfg = OrtStaticInt8Config(
        calibration_examples=24, calibration_batch_size=8, sensitivity={"max_kept_fp32": 100}
    )
    rep = apply_quantizer(cfg, c, tmp_path)
    kept = int(rep.figures["nodes_kept_fp32"])
    assert kept >= 1 and rep.figures["agreement_after_sensitivity"] > rep.figures["agreement_all_quantized"]
    assert error(tmp_path / "model.onnx") <= bar  # the saved model is the one that met the bar
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    fp32_matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    assert len(fp32_matmuls) == kept and any("kept in FP32" in n for n in rep.notes)
    tried = int(rep.figures["nodes_tried_alone"])
    unfused = onnx.load(str(out / "unfused" / "model.onnx")).graph
    assert tried == len([n for n in unfused.node if n.op_type == "MatMul"])
    # the greedy steps stop at the first that passes: every step before the last missed the bar
    steps = scored[1 + tried :]
    assert len(steps) == kept and all(e > bar for e in steps[:-1]) and steps[-1] <= bar

    # a model that already meets the bar is left fully quantized
    c.agreement = lambda path: AgreementReport(True, 1.0, 1, {}, {}, "fine")
    (tmp_path / "ok").mkdir()
    rep = apply_quantizer(OrtStaticInt8Config(calibration_examples=24), c, tmp_path / "ok")
    assert rep.figures["nodes_kept_fp32"] == 0 and rep.figures["agreement_all_quantized"] == 1.0


def test_static_int8_refuses_more_calibration_rows_than_exist(trained, exported, tmp_path):
    out, _ = exported
    with pytest.raises(ValueError, match="calibration_examples=500"):
        apply_quantizer(
            OrtStaticInt8Config(calibration_examples=500), ctx(out, trained, TEXTS[:50]), tmp_path
        )


def test_fp16_graph_has_half_precision_weights_and_fp32_io(trained, exported, tmp_path):
    import onnx

    out, _ = exported
    rep = apply_quantizer(OrtFp16Config(), ctx(out, trained), tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert rep.figures["fp16_initializers"] > 0
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert OrtFp16Config.devices == ("gpu",)


def test_torch_int8_quantizes_linear_layers_except_kept_ones(trained):
    import torch

    model, tok = FAMILY.load_trained(trained)
    batch = tok(TEXTS[:8], padding=True, return_tensors="pt")
    with torch.inference_mode():
        before = model(**batch).logits
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    n = quantize_module(model, {"keep_fp32": ["classifier"]})
    assert n == n_linear - 1
    assert type(model.classifier.weight) is torch.nn.Parameter  # kept FP32
    assert type(model.bert.encoder.layer[0].attention.self.query.weight).__name__ != "Parameter"
    with torch.inference_mode():
        after = model(**batch).logits
    assert (after.argmax(-1) == before.argmax(-1)).float().mean() >= 0.75
    assert not torch.equal(after, before)  # it really changed the arithmetic


def test_candidate_identity_tells_torch_fp32_from_torch_int8_on_the_same_weights(trained, tmp_path):
    import shutil

    from slimflow.models.optimize.candidates import CandidateSpec, fp32_candidate, identity
    from slimflow.models.optimize.predictors import CandidateInfo

    fp32, int8, copy = (tmp_path / n for n in ("fp32", "int8", "copy"))
    for d in (fp32, int8):
        d.mkdir()
    base = CandidateInfo("torch", max_length=32, labels=["neg", "pos"])
    fp32_candidate(trained, CandidateSpec("s", "torch_fp32", "cpu", "torch"), fp32, base)
    fp32_candidate(trained, CandidateSpec("s", "torch_int8", "cpu", "torch"), int8, base)
    CandidateInfo("torch", "cpu", "torch_int8", "s", None, 32, ["neg", "pos"], {"kind": "torch_int8"}).save(
        int8
    )
    shutil.copytree(fp32, copy)
    assert identity(fp32) == identity(copy)  # same weights, same way of running them
    assert identity(fp32) != identity(int8)  # same weights, quantized on load
