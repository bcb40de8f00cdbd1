"""Unstructured global magnitude pruning of the encoder's Linear weights, made permanent.

This zeroes weights but keeps dense shapes: it shrinks a compressed file, not latency on dense
kernels. The report says so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slimflow.models.train.steps.base import StepConfig, StepContext, StepReport, register_step


class PruneMagnitudeConfig(StepConfig):
    kind: Literal["prune_magnitude"] = "prune_magnitude"
    sparsity: float = Field(0.3, ge=0, lt=1, description="Share of encoder Linear weights set to zero.")


@register_step(PruneMagnitudeConfig)
def prune_magnitude(model: Any, cfg: PruneMagnitudeConfig, ctx: StepContext) -> StepReport:
    import torch
    from torch.nn.utils import prune

    layers = ctx.arch.layers(model)
    targets = [(m, "weight") for m in layers.modules() if isinstance(m, torch.nn.Linear)]
    if cfg.sparsity > 0:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=cfg.sparsity)
        for m, name in targets:
            prune.remove(m, name)  # permanent: plain weights with zeros, no masks left behind
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    total = sum(m.weight.numel() for m, _ in targets)
    return StepReport(
        "prune_magnitude",
        {"encoder_linear_sparsity": zeros / total, "zero_weights": zeros},
        ["unstructured sparsity: dense kernels run no faster; it only helps compression"],
    )
