"""ONNX Runtime dynamic INT8: weights quantized ahead of time, activations at run time.

The preset (which integer types, reduce_range, which operators) is optimum's
``AutoQuantizationConfig.<preset>``; it is applied with onnxruntime's own ``quantize_dynamic``
because optimum's ``ORTQuantizer`` fails on a graph that ORT's transformer optimizer already fused
(Attention, SkipLayerNorm), and fused + INT8 is the fast combination on CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from models.steps.base import QuantContext, QuantizerConfig, QuantReport, match_names, register_quantizer

Preset = Literal["auto", "avx2", "avx512", "avx512_vnni", "arm64"]


class OrtDynamicInt8Config(QuantizerConfig):
    kind: Literal["ort_int8_dynamic"] = "ort_int8_dynamic"
    preset: Preset = Field(
        "auto", description="Optimum's CPU preset; 'auto' picks it from this CPU's instruction set."
    )
    per_channel: bool = Field(
        True, description="One scale per output channel (better accuracy, same speed here)."
    )
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="Glob patterns of ONNX node names kept in FP32 (mixed precision), e.g. "
        "'Attention_0' or '/bert/encoder/layer.0/*'. A pattern matching nothing is an error.",
    )


def preset_config(preset: str, per_channel: bool, is_static: bool = False):  # noqa: ANN201
    """Optimum's quantization config for ``preset`` ('auto' resolved for this CPU)."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig  # noqa: PLC0415

    from models.targets import cpu_int8_preset  # noqa: PLC0415

    name = cpu_int8_preset() if preset == "auto" else preset
    return name, getattr(AutoQuantizationConfig, name)(is_static=is_static, per_channel=per_channel)


def ort_quant_type(dtype: object):  # noqa: ANN201
    """optimum's QuantType enum -> onnxruntime's (same names)."""
    from onnxruntime.quantization import QuantType  # noqa: PLC0415

    return getattr(QuantType, getattr(dtype, "name", str(dtype)))


@register_quantizer(OrtDynamicInt8Config)
def ort_int8_dynamic(cfg: OrtDynamicInt8Config, ctx: QuantContext, out_dir: Path) -> QuantReport:
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import quantize_dynamic  # noqa: PLC0415

    name, qc = preset_config(cfg.preset, cfg.per_channel)
    src = Path(ctx.onnx_fp32)
    graph = onnx.load(str(src), load_external_data=False)
    node_names = [n.name for n in graph.graph.node]
    exclude = match_names(cfg.keep_fp32, node_names, "node of the exported graph")
    ops = list(qc.operators_to_quantize) + ["Attention", "EmbedLayerNormalization"]
    from models.export import quiet_logs  # noqa: PLC0415

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
