"""ONNX Runtime dynamic INT8: weights quantized ahead of time, activations at run time.

The preset (which integer types, reduce_range, which operators) is optimum's
``AutoQuantizationConfig.<preset>``; it is applied with onnxruntime's own ``quantize_dynamic``
because optimum's ``ORTQuantizer`` fails on a graph that ORT's transformer optimizer already fused
(Attention, SkipLayerNorm), and fused + INT8 is the fast combination on CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slimflow.models.core.logs import quiet_logs
from slimflow.models.optimize.quantizers.base import (
    QuantContext,
    QuantizerConfig,
    QuantReport,
    match_names,
    register_quantizer,
)

Preset = Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"]


class OrtDynamicInt8Config(QuantizerConfig):
    kind: Literal["ort_int8_dynamic"] = "ort_int8_dynamic"
    preset: Preset = Field(
        "auto",
        description="Optimum's CPU preset; 'auto' takes the target's (the cpu target: the CPU this "
        "pipeline benchmarks on).",
    )
    per_channel: bool = Field(
        True, description="One scale per output channel (better accuracy, same speed here)."
    )
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="Glob patterns of ONNX node names kept in FP32 (mixed precision), e.g. "
        "'Attention_0' or '/bert/encoder/layer.0/*'. A pattern matching nothing is an error.",
    )


def preset_config(name: str, per_channel: bool, is_static: bool = False) -> tuple[str, Any]:
    """Optimum's quantization config for the preset ``name`` (avx2, avx512, avx512_vnni, arm64)."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    return name, getattr(AutoQuantizationConfig, name)(is_static=is_static, per_channel=per_channel)


def target_preset(preset: str, target: Any) -> str:
    """The preset to use: the config's, or with 'auto' the target's (resolved where the plan was made)."""
    if preset != "auto":
        return preset
    resolved = getattr(target, "int8_preset", None)
    if not resolved or resolved == "host":
        raise ValueError(f"target {getattr(target, 'name', target)!r} has no resolved INT8 preset")
    return resolved


def ort_quant_type(dtype: object) -> Any:
    """optimum's QuantType enum -> onnxruntime's (same names)."""
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, getattr(dtype, "name", str(dtype)))


@register_quantizer(OrtDynamicInt8Config)
def ort_int8_dynamic(cfg: OrtDynamicInt8Config, ctx: QuantContext, out_dir: Path) -> QuantReport:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    name, qc = preset_config(target_preset(cfg.preset, ctx.target), cfg.per_channel)
    src = Path(ctx.onnx_fp32)
    graph = onnx.load(str(src), load_external_data=False)
    node_names = [n.name for n in graph.graph.node]
    exclude = match_names(cfg.keep_fp32, node_names, "node of the exported graph")
    ops = list(qc.operators_to_quantize) + ["Attention", "EmbedLayerNormalization"]
    with quiet_logs():
        quantize_dynamic(
            str(src),
            str(Path(out_dir) / "model.onnx"),
            per_channel=qc.per_channel,
            reduce_range=qc.reduce_range,
            weight_type=ort_quant_type(qc.weights_dtype),
            op_types_to_quantize=sorted(set(ops)),
            nodes_to_exclude=exclude or None,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return QuantReport(
        "ort_int8_dynamic",
        {"nodes_kept_fp32": len(exclude)},
        [f"preset {name}: weights {qc.weights_dtype.name}, reduce_range={qc.reduce_range}"],
        {"preset": name},
    )
