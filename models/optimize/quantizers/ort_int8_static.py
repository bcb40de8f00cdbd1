"""ONNX Runtime static INT8: activation ranges calibrated on N training examples.

Calibration runs on the plain exported graph: ORT's static quantizer fails on the fused one
(``QAttention`` has no static path; the fused pooler loses its scale). Only MatMul is quantized by
default; quantizing Add/Gather/LayerNorm statically costs a lot of accuracy on transformers.
Calibration batches are padded to ``max_length`` so Entropy/Percentile histograms share one shape.
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


class OrtStaticInt8Config(QuantizerConfig):
    kind: Literal["ort_int8_static"] = "ort_int8_static"
    calibration_examples: int = Field(
        128, ge=1, le=100_000, description="Training rows fed through the model to calibrate ranges."
    )
    calibration_batch_size: int = Field(8, ge=1, le=1024, description="Rows per calibration batch.")
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How activation ranges are chosen from the calibration data."
    )
    percentile: float = Field(99.999, gt=90, le=100, description="Kept share for method=percentile.")
    per_channel: bool = Field(True, description="One weight scale per output channel.")
    format: Literal["qoperator", "qdq"] = Field(
        "qoperator", description="QOperator (integer ops; fast on CPU) or QDQ (Q/DQ pairs; for TensorRT)."
    )
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul"], min_length=1, description="ONNX op types quantized."
    )
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="Glob patterns of ONNX node names kept in FP32 (mixed precision).",
    )


def _reader(tokenizer: object, texts: list[str], batch_size: int, length: int, names: set[str]) -> Any:
    """An onnxruntime CalibrationDataReader over tokenized training rows that counts what it fed."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.fed = 0
            self._batches = iter(range(0, len(texts), batch_size))

        def get_next(self) -> dict | None:
            start = next(self._batches, None)
            if start is None:
                return None
            enc = tokenizer(  # type: ignore[operator]
                texts[start : start + batch_size],
                truncation=True,
                max_length=length,
                padding="max_length",
                return_tensors="np",
            )
            batch = {k: v for k, v in enc.items() if k in names}
            self.fed += len(batch["input_ids"])
            return batch

    return Reader()


@register_quantizer(OrtStaticInt8Config)
def ort_int8_static(cfg: OrtStaticInt8Config, ctx: QuantContext, out_dir: Path) -> QuantReport:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    texts = list(ctx.calibration_texts)[: cfg.calibration_examples]
    if len(texts) < cfg.calibration_examples:
        raise ValueError(
            f"ort_int8_static: calibration_examples={cfg.calibration_examples} but the training "
            f"split has only {len(texts)} rows"
        )
    src = Path(ctx.onnx_unfused)
    graph = onnx.load(str(src), load_external_data=False)
    names = {i.name for i in graph.graph.input}
    exclude = match_names(cfg.keep_fp32, [n.name for n in graph.graph.node], "node of the exported graph")
    reader = _reader(ctx.tokenizer, texts, cfg.calibration_batch_size, ctx.max_length, names)
    qoperator = cfg.format == "qoperator"
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.method]
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if cfg.method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    with quiet_logs():
        quantize_static(
            str(src),
            str(Path(out_dir) / "model.onnx"),
            reader,
            quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
            op_types_to_quantize=list(cfg.op_types),
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude or None,
            calibrate_method=method,
            extra_options=extra,
        )
    return QuantReport(
        "ort_int8_static",
        {"calibration_examples": reader.fed, "nodes_kept_fp32": len(exclude)},
        [f"{cfg.method} calibration on {reader.fed} training rows, {cfg.format} format"],
    )
