"""Structured feed-forward pruning: the least important hidden neurons of every layer are sliced
out of the FFN's projections into the hidden width (BERT: one; Llama: gate and up) and out of it;
the architecture adapter says which Linear layers those are. Same width in every layer, so the
saved config's ``intermediate_size`` still describes the model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slimflow.models.train.steps.base import StepConfig, StepContext, StepReport, register_step


class PruneFFNConfig(StepConfig):
    kind: Literal["prune_ffn"] = "prune_ffn"
    ratio: float = Field(0.3, ge=0, lt=1, description="Share of intermediate neurons removed in each layer.")
    importance: Literal["gradient", "magnitude"] = Field(
        "gradient", description="Neuron score: |d loss / d mask| on calibration data, or weight norms."
    )


@register_step(PruneFFNConfig)
def prune_ffn(model: Any, cfg: PruneFFNConfig, ctx: StepContext) -> StepReport:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    from slimflow.models.train.steps._importance import ffn_importance

    arch = ctx.arch
    layers = arch.layers(model)
    width = arch.ffn(layers[0])[1].in_features
    keep_n = width - int(round(cfg.ratio * width))
    before = sum(p.numel() for p in model.parameters())
    if keep_n < width:
        scores = ffn_importance(model, ctx, cfg.importance)
        for layer, score in zip(layers, scores, strict=True):
            ins, down = arch.ffn(layer)
            keep = torch.sort(torch.topk(score, keep_n).indices).values.to(down.weight.device)
            pruned_ins = [prune_linear_layer(up, keep, dim=0) for up in ins]
            arch.set_ffn(layer, pruned_ins, prune_linear_layer(down, keep, dim=1))
        arch.set_ffn_width(model, keep_n)
    after = sum(p.numel() for p in model.parameters())
    return StepReport(
        "prune_ffn",
        {
            "ffn_width_before": width,
            "ffn_width_after": keep_n,
            "params_before": before,
            "params_after": after,
        },
    )
