"""The quantizer registry. Quantizers act on an exported model (ONNX) or on the saved PyTorch
weights, not on a model in memory; each is one file with a config class and a function.

A quantizer declares what its candidate runs on (``runtime``), the target devices it makes sense
for, and the task families it supports; the candidate plan skips other combinations with a reason.
Settings that depend on the hardware (an INT8 preset) come from the *target*, never from the CPU
of the machine that happens to build the candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from slimflow.models.config.base import PluginConfig
from slimflow.models.core.names import match_globs
from slimflow.models.core.plugins import Registry

Runtime = str  # "onnxruntime" | "torch"


class QuantizerConfig(PluginConfig):
    """Base of every quantization step config.

    ``runtime`` says what the candidate runs on; ``devices`` which target devices it makes sense
    for (an FP16 graph is for GPUs; ORT's INT8 kernels and torchao's dynamic INT8 are for CPUs);
    ``families`` which task families it can quantize.
    """

    runtime: ClassVar[Runtime] = "onnxruntime"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    families: ClassVar[tuple[str, ...]] = ("sequence-classification",)

    name: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_]{0,47}$",
        description="The candidates' variant name (default: the kind); needed when one kind is "
        "listed twice with other settings, e.g. genai_int4 and genai_int4 with int8_matmuls.",
    )

    @property
    def variant(self) -> str:
        """The variant this step's candidates carry in their names (teacher/<variant>/cpu)."""
        return self.name or self.kind


@dataclass
class QuantContext:
    """What a quantizer may use: the exported FP32 graphs, the saved PyTorch model, calibration text."""

    onnx_fp32: Any  # Path of the optimised (fused) FP32 graph
    onnx_unfused: Any  # Path of the plain exported FP32 graph (static quantization needs it)
    torch_dir: Any  # Path of the saved PyTorch model (safetensors + tokenizer)
    tokenizer: Any
    calibration_texts: list[str]
    max_length: int
    target: Any  # slimflow.models.optimize.targets.Target
    family: Any = None  # slimflow.models.families.TaskFamily
    # scores an ONNX file against the FP32 reference on validation rows (the build's own check:
    # an AgreementReport); quantizers that search (static INT8's sensitivity pass) use it
    agreement: Callable[[Any], Any] | None = None


@dataclass
class QuantReport:
    kind: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)  # how the runtime must load it (torch side)


QuantFn = Callable[[Any, QuantContext, Any], QuantReport]


@dataclass(frozen=True)
class Quantizer:
    config: type[QuantizerConfig]
    apply: QuantFn


QUANTIZERS: Registry[Quantizer] = Registry("quantizer")


def register_quantizer(config_cls: type[QuantizerConfig]) -> Callable[[QuantFn], QuantFn]:
    """Register ``fn(cfg, ctx, out_dir) -> QuantReport`` for the quantization step ``config_cls``."""
    kind = config_cls.plugin_kind()

    def deco(fn: QuantFn) -> QuantFn:
        QUANTIZERS.add(kind, Quantizer(config_cls, fn))
        return fn

    return deco


def apply_quantizer(cfg: QuantizerConfig, ctx: QuantContext, out_dir: Any) -> QuantReport:
    return QUANTIZERS.get(cfg.kind).apply(cfg, ctx, out_dir)


def match_names(patterns: list[str], names: list[str], what: str) -> list[str]:
    """Names matching any glob in ``patterns``; a pattern that matches nothing is an error
    (a typo in a keep-in-FP32 list would otherwise silently quantize the layer it meant to protect)."""
    sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    return match_globs(
        patterns, names, lambda pat: f"keep_fp32 pattern {pat!r} matches no {what} (some names: {sample})"
    )
