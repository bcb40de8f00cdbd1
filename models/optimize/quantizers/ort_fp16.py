"""FP16 graph for GPU targets (CUDA, TensorRT), converted with onnxruntime's float16 tool.

Inputs and outputs stay in their original types (int64 ids in, FP32 logits out), so callers do not
change. On a CPU FP16 kernels are slow or missing: this step only makes candidates for GPU targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from slimflow.models.optimize.quantizers.base import (
    QuantContext,
    QuantizerConfig,
    QuantReport,
    match_names,
    register_quantizer,
)


class OrtFp16Config(QuantizerConfig):
    kind: Literal["ort_fp16"] = "ort_fp16"
    devices: ClassVar[tuple[str, ...]] = ("gpu",)
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="Glob patterns of ONNX node names kept in FP32 (mixed precision), e.g. the softmax "
        "or the classifier.",
    )
    keep_fp32_ops: list[str] = Field(
        default_factory=list, description="ONNX op types kept in FP32 everywhere (e.g. 'LayerNormalization')."
    )


@register_quantizer(OrtFp16Config)
def ort_fp16(cfg: OrtFp16Config, ctx: QuantContext, out_dir: Path) -> QuantReport:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(ctx.onnx_fp32))
    exclude = match_names(cfg.keep_fp32, [n.name for n in model.graph.node], "node of the exported graph")
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(cfg.keep_fp32_ops)),
        node_block_list=exclude or None,
    )
    onnx.save(converted, str(Path(out_dir) / "model.onnx"))
    n16 = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return QuantReport(
        "ort_fp16", {"fp16_initializers": n16, "nodes_kept_fp32": len(exclude)}, ["inputs/outputs kept FP32"]
    )
