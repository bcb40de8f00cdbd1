"""Compression and quantization steps, one file each, registered where defined (see base.py)."""

from models.steps import (  # noqa: F401  (registration)
    prune_ffn,
    prune_heads,
    prune_magnitude,
    quant_fp16,
    quant_ort_dynamic,
    quant_ort_static,
    quant_torch_int8,
)
from models.steps.base import (
    QUANTIZERS,
    STEPS,
    QuantContext,
    QuantizerConfig,
    QuantReport,
    StepConfig,
    StepContext,
    StepReport,
    apply_quantizer,
    apply_step,
    register_quantizer,
    register_step,
)

__all__ = [
    "QUANTIZERS",
    "STEPS",
    "QuantContext",
    "QuantReport",
    "QuantizerConfig",
    "StepConfig",
    "StepContext",
    "StepReport",
    "apply_quantizer",
    "apply_step",
    "register_quantizer",
    "register_step",
]
