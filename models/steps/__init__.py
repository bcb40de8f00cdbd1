"""Compression steps, one file each, registered where defined (see base.py)."""

from models.steps import prune_ffn, prune_heads, prune_magnitude  # noqa: F401  (registration)
from models.steps.base import STEPS, StepConfig, StepContext, StepReport, apply_step, register_step

__all__ = ["STEPS", "StepConfig", "StepContext", "StepReport", "apply_step", "register_step"]
