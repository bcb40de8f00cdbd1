"""ONNX Runtime static INT8: activation ranges calibrated on N training examples.

Calibration runs on the plain exported graph: ORT's static quantizer fails on the fused one
(``QAttention`` has no static path; the fused pooler loses its scale). Only MatMul is quantized by
default; quantizing Add/Gather/LayerNorm statically costs a lot of accuracy on transformers.
Calibration batches are padded to ``max_length`` so Entropy/Percentile histograms share one shape.

**Sensitivity pass** (on by default): when the fully quantized graph disagrees with FP32 on the
validation split, each quantized node is tried alone in FP32 (activation ranges calibrated once,
cached as JSON and reused), the nodes are ranked by how much agreement that buys, and the most
helpful are kept in FP32 one by one until the agreement bar is met (or ``max_kept_fp32`` is spent).
Every variant's agreement is in the report. The search and the build's check both read the
validation split; the test split, which reports the candidate, is never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from slimflow.models.config.base import Strict
from slimflow.models.core.logs import quiet_logs
from slimflow.models.optimize.quantizers.base import (
    QuantContext,
    QuantizerConfig,
    QuantReport,
    match_names,
    register_quantizer,
)


class SensitivityConfig(Strict):
    max_kept_fp32: int = Field(
        8, ge=1, le=1000, description="Most nodes the pass may keep in FP32 before giving up."
    )
    candidates: int | None = Field(
        None,
        ge=1,
        description="Try only this many nodes alone (the first in graph order); None = every quantized node.",
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
    symmetric_activations: bool = Field(
        False, description="Activation ranges symmetric around 0 (ORT's ActivationSymmetric)."
    )
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul"], min_length=1, description="ONNX op types quantized."
    )
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="Glob patterns of ONNX node names kept in FP32 (mixed precision).",
    )
    sensitivity: SensitivityConfig | None = Field(
        default_factory=SensitivityConfig,
        description="Keep the fewest agreement-sensitive nodes in FP32 that bring the candidate over "
        "the agreement bar (measured on validation rows); null = quantize every node of op_types.",
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
    import tempfile

    import onnx

    texts = list(ctx.calibration_texts)[: cfg.calibration_examples]
    if len(texts) < cfg.calibration_examples:
        raise ValueError(
            f"ort_int8_static: calibration_examples={cfg.calibration_examples} but the training "
            f"split has only {len(texts)} rows"
        )
    src = Path(ctx.onnx_unfused)
    graph = onnx.load(str(src), load_external_data=False)
    names = {i.name for i in graph.graph.input}
    nodes = [n.name for n in graph.graph.node]
    exclude = match_names(cfg.keep_fp32, nodes, "node of the exported graph")
    reader = _reader(ctx.tokenizer, texts, cfg.calibration_batch_size, ctx.max_length, names)
    out = Path(out_dir) / "model.onnx"
    notes = [f"{cfg.method} calibration on {len(texts)} training rows, {cfg.format} format"]
    figures: dict[str, float] = {"calibration_examples": len(texts)}
    with tempfile.TemporaryDirectory(prefix="static-int8-") as tmp:
        cache = Path(tmp) / "calibration.json"  # ranges measured once, reused by every variant
        _quantize(cfg, src, out, reader, exclude, cache)
        if cfg.sensitivity is not None and ctx.agreement is not None:
            ops = set(cfg.op_types)
            quantized = [n.name for n in graph.graph.node if n.op_type in ops and n.name not in exclude]
            exclude = _sensitivity(cfg, ctx, src, out, cache, exclude, quantized, Path(tmp), notes, figures)
    figures["nodes_kept_fp32"] = len(exclude)
    if exclude:
        notes.append("kept in FP32: " + ", ".join(exclude))
    return QuantReport("ort_int8_static", figures, notes)


def _quantize(
    cfg: OrtStaticInt8Config, src: Path, out: Path, reader: Any, exclude: list[str], cache: Path
) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    qoperator = cfg.format == "qoperator"
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.method]
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if cfg.method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    if cfg.symmetric_activations:
        extra["ActivationSymmetric"] = True
    with quiet_logs():
        quantize_static(
            str(src),
            str(out),
            reader if not cache.exists() else None,
            quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
            op_types_to_quantize=list(cfg.op_types),
            per_channel=cfg.per_channel,
            activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude or None,
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=cache,
        )


def _sensitivity(
    cfg: OrtStaticInt8Config,
    ctx: QuantContext,
    src: Path,
    out: Path,
    cache: Path,
    exclude: list[str],
    quantized: list[str],
    tmp: Path,
    notes: list[str],
    figures: dict[str, float],
) -> list[str]:
    """Keep the fewest nodes in FP32 that bring agreement over the bar; ``out`` holds the result."""
    assert cfg.sensitivity is not None and ctx.agreement is not None
    first = ctx.agreement(out)
    figures["agreement_all_quantized"] = first.agreement
    if first.passed:
        notes.append(f"every {'/'.join(cfg.op_types)} node quantized: {first.message}")
        return exclude
    trial = tmp / "trial.onnx"
    alone: dict[str, float] = {}
    for name in quantized[: cfg.sensitivity.candidates]:
        _quantize(cfg, src, trial, None, [*exclude, name], cache)
        alone[name] = ctx.agreement(trial).agreement
    ranked = sorted(alone, key=lambda n: -alone[n])
    notes.append(
        f"all quantized: agreement {first.agreement:.4f} ({first.message}); one node in FP32 at a time, "
        "best: " + ", ".join(f"{n} {alone[n]:.4f}" for n in ranked[:5])
    )
    kept = list(exclude)
    steps = []
    report = first
    for name in ranked[: cfg.sensitivity.max_kept_fp32]:
        kept.append(name)
        _quantize(cfg, src, trial, None, kept, cache)
        report = ctx.agreement(trial)
        steps.append(f"{len(kept) - len(exclude)} in FP32 -> {report.agreement:.4f}")
        if report.passed:
            break
    if steps:
        trial.replace(out)
    notes.append("greedy: " + "; ".join(steps) + ("" if report.passed else " (bar not reached)"))
    figures["agreement_after_sensitivity"] = report.agreement
    figures["nodes_tried_alone"] = len(alone)
    return kept
