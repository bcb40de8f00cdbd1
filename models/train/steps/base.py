"""The compression-step registry: each step is one file with a config class and a function.

Step modules import torch inside their functions, so importing the registry (which config
validation does to resolve ``steps:``) stays instant. A step declares the architectures it
supports; the architecture adapter of the model says which steps apply to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimflow.models.archs import adapter_of
from slimflow.models.config.base import PluginConfig
from slimflow.models.core.plugins import Registry


class StepConfig(PluginConfig):
    """Base of every compression step config: strict, immutable, discriminated by ``kind``."""

    families: ClassVar[tuple[str, ...]] = ("sequence-classification",)


@dataclass
class StepContext:
    """What a step may use besides the model: a few encoded training batches (for importance scores),
    the task family (its loss) and the model's architecture adapter (where heads and FFNs are)."""

    calibration: Any  # slimflow.models.train.loop.Encoded
    pad_id: int
    batch_size: int = 32
    family: Any = None  # slimflow.models.families.TaskFamily
    arch: Any = None  # slimflow.models.archs.ArchAdapter


@dataclass
class StepReport:
    kind: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


StepFn = Callable[[Any, Any, StepContext], StepReport]


@dataclass(frozen=True)
class Step:
    config: type[StepConfig]
    apply: StepFn


STEPS: Registry[Step] = Registry("compression step")


def register_step(config_cls: type[StepConfig]) -> Callable[[StepFn], StepFn]:
    """Register ``fn(model, cfg, ctx) -> StepReport`` for the compression step ``config_cls``."""
    kind = config_cls.plugin_kind()

    def deco(fn: StepFn) -> StepFn:
        STEPS.add(kind, Step(config_cls, fn))
        return fn

    return deco


def apply_step(model: Any, cfg: StepConfig, ctx: StepContext) -> StepReport:
    if ctx.arch is None:
        ctx.arch = adapter_of(model)
    if cfg.kind not in ctx.arch.pruning_steps:
        raise ValueError(
            f"{cfg.kind} does not apply to {ctx.arch.name} models (it supports: "
            f"{', '.join(ctx.arch.pruning_steps) or 'none'})"
        )
    return STEPS.get(cfg.kind).apply(model, cfg, ctx)
