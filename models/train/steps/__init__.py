"""Compression steps (pruning), one file each, registered where defined (see base.py); every
module here is imported, so a new step is one file."""

from slimflow.models.core.plugins import load_plugins
from slimflow.models.train.steps.base import (
    STEPS,
    Step,
    StepConfig,
    StepContext,
    StepReport,
    apply_step,
    register_step,
)

load_plugins(__name__, __path__)

__all__ = ["STEPS", "Step", "StepConfig", "StepContext", "StepReport", "apply_step", "register_step"]
