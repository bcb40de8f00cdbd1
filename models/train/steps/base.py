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
    # The architectures a step is written for (e.g. one that needs key/value groups: ("llama",)).
    # None: any architecture whose adapter lists the step in ``pruning_steps`` (the built-in ones).
    archs: ClassVar[tuple[str, ...] | None] = None
    # A step that renumbers the vocabulary (its report carries the new tokenizer): the stage
    # records test predictions before it, to report what the change altered.
    changes_vocabulary: ClassVar[bool] = False


def unsupported_reason(cfg: StepConfig, arch: Any) -> str | None:
    """Why the step cannot apply to models of ``arch`` (an ArchAdapter), or None when it can."""
    declared = type(cfg).archs
    if declared is not None:
        if arch.name in declared:
            return None
        return f"{cfg.kind} is written for {'/'.join(declared)} models, not {arch.name}"
    if cfg.kind in arch.pruning_steps:
        return None
    return (
        f"{cfg.kind} does not apply to {arch.name} models (it supports: "
        f"{', '.join(arch.pruning_steps) or 'none'})"
    )


@dataclass
class StepContext:
    """What a step may use besides the model: a few encoded training batches (for importance scores),
    the task family (its loss) and the model's architecture adapter (where heads and FFNs are)."""

    calibration: Any  # slimflow.models.train.loop.Encoded
    pad_id: int
    batch_size: int = 32
    family: Any = None  # slimflow.models.families.TaskFamily
    arch: Any = None  # slimflow.models.archs.ArchAdapter
    skip_unsupported: bool = False  # a step that does not apply: skipped with its reason, not an error
    tokenizer: Any = None  # the model's tokenizer (steps that change the vocabulary)
    texts: list[str] | None = None  # every training text (steps that count tokens)


@dataclass
class StepReport:
    kind: str
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tokenizer: Any = None  # a step that changed the vocabulary returns the matching tokenizer


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
    why = unsupported_reason(cfg, ctx.arch)
    if why is not None:
        if not ctx.skip_unsupported:
            raise ValueError(why)
        return StepReport(cfg.kind, {"skipped": 1.0}, [f"skipped: {why}"])
    return STEPS.get(cfg.kind).apply(model, cfg, ctx)
