"""The step registry: each compression step is one file with a config class and a function.

Step modules import torch inside their functions, so importing the registry (which the config
loader does to validate ``steps:``) stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


def register_step(config_cls: type[StepConfig]) -> Callable[[StepFn], StepFn]:
    """Register ``fn`` as the implementation of ``config_cls`` (keyed by its ``kind`` default)."""
    kind = config_cls.model_fields["kind"].default

    def deco(fn: StepFn) -> StepFn:
        if kind in STEPS:
            raise ValueError(f"compression step {kind!r} registered twice")
        STEPS[kind] = (config_cls, fn)
        return fn

    return deco


def apply_step(model: Any, cfg: StepConfig, ctx: StepContext) -> StepReport:
    return STEPS[cfg.kind][1](model, cfg, ctx)
