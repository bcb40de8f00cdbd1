"""The step registry: each compression step is one file with a config class and a function.

Step modules import torch inside their functions, so importing the registry (which the config
loader does to validate ``steps:``) stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StepConfig(BaseModel):
    """Base of every step config: strict, immutable, discriminated by ``kind``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    kind: str


@dataclass
class StepContext:
    """What a step may use besides the model: a few tokenized training batches, for importance."""

    calibration: Any  # models.training.Encoded
    pad_id: int
    batch_size: int = 32


@dataclass
class StepReport:
    kind: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


StepFn = Callable[[Any, Any, StepContext], StepReport]
STEPS: dict[str, tuple[type[StepConfig], StepFn]] = {}


def _registrar(registry: dict[str, Any], config_cls: type[StepConfig]) -> Callable[[Any], Any]:
    """Decorator putting ``fn`` in ``registry`` under ``config_cls``'s ``kind`` default. Kinds are
    unique across both registries: one YAML ``kind`` must name one step."""
    kind = config_cls.model_fields["kind"].default

    def deco(fn: Any) -> Any:
        if kind in STEPS or kind in QUANTIZERS:
            raise ValueError(f"step {kind!r} registered twice")
        registry[kind] = (config_cls, fn)
        return fn

    return deco


def register_step(config_cls: type[StepConfig]) -> Callable[[StepFn], StepFn]:
    """Register ``fn(model, cfg, ctx) -> StepReport`` for the compression step ``config_cls``."""
    return _registrar(STEPS, config_cls)


def apply_step(model: Any, cfg: StepConfig, ctx: StepContext) -> StepReport:
    return STEPS[cfg.kind][1](model, cfg, ctx)


# ------------------------------------------------------------------------------------ quantizers
# Quantization steps act on an exported model (ONNX) or on the saved PyTorch weights, not on a
# model in memory, so they have their own registry; the plug-in shape is the same.
Runtime = str  # "onnxruntime" | "torch"


class QuantizerConfig(StepConfig):
    """Base of every quantization step config.

    ``runtime`` says what the candidate runs on; ``devices`` which target devices it makes sense
    for (an FP16 graph is for GPUs; ORT's INT8 kernels and torchao's dynamic INT8 are for CPUs).
    """

    runtime: ClassVar[Runtime] = "onnxruntime"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)


@dataclass
class QuantContext:
    """What a quantizer may use: the exported FP32 graphs, the saved PyTorch model, calibration text."""

    onnx_fp32: Any  # Path of the optimised (fused) FP32 graph
    onnx_unfused: Any  # Path of the plain exported FP32 graph (static quantization needs it)
    torch_dir: Any  # Path of the saved PyTorch model (safetensors + tokenizer)
    tokenizer: Any
    calibration_texts: list[str]
    max_length: int
    target: Any  # models.targets.Target


@dataclass
class QuantReport:
    kind: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)  # how the runtime must load it (torch side)


QuantFn = Callable[[Any, QuantContext, Any], QuantReport]
QUANTIZERS: dict[str, tuple[type[QuantizerConfig], QuantFn]] = {}


def register_quantizer(config_cls: type[QuantizerConfig]) -> Callable[[QuantFn], QuantFn]:
    """Register ``fn(cfg, ctx, out_dir) -> QuantReport`` for the quantization step ``config_cls``."""
    return _registrar(QUANTIZERS, config_cls)


def apply_quantizer(cfg: QuantizerConfig, ctx: QuantContext, out_dir: Any) -> QuantReport:
    return QUANTIZERS[cfg.kind][1](cfg, ctx, out_dir)


def match_names(patterns: list[str], names: list[str], what: str) -> list[str]:
    """Names matching any glob in ``patterns``; a pattern that matches nothing is an error
    (a typo in a keep-in-FP32 list would otherwise silently quantize the layer it meant to protect)."""
    import fnmatch  # noqa: PLC0415

    out: list[str] = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise ValueError(f"keep_fp32 pattern {pat!r} matches no {what} (some names: {sample})")
        out.extend(h for h in hits if h not in out)
    return out
