"""Structured feed-forward pruning: the least important intermediate neurons of every layer are
sliced out of the intermediate and output Linear layers (same width in every layer, so the saved
config's ``intermediate_size`` still describes the model)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from models.steps.base import StepConfig, StepContext, StepReport, register_step


class PruneFFNConfig(StepConfig):
    kind: Literal["prune_ffn"] = "prune_ffn"
    ratio: float = Field(0.3, ge=0, lt=1, description="Share of intermediate neurons removed in each layer.")
    importance: Literal["gradient", "magnitude"] = Field(
        "gradient", description="Neuron score: |d loss / d mask| on calibration data, or weight norms."
    )


@register_step(PruneFFNConfig)
def prune_ffn(model: Any, cfg: PruneFFNConfig, ctx: StepContext) -> StepReport:
    import torch  # noqa: PLC0415
    from transformers.pytorch_utils import prune_linear_layer  # noqa: PLC0415

    from models.arch import encoder_layers  # noqa: PLC0415
    from models.steps.importance import ffn_importance  # noqa: PLC0415

    layers = encoder_layers(model)
    width = layers[0].intermediate.dense.out_features
    keep_n = width - int(round(cfg.ratio * width))
    before = sum(p.numel() for p in model.parameters())
    if keep_n < width:
        scores = ffn_importance(model, ctx, cfg.importance)
        for layer, score in zip(layers, scores, strict=True):
            keep = torch.sort(torch.topk(score, keep_n).indices).values.to(
                layer.intermediate.dense.weight.device
            )
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
            layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
        model.config.intermediate_size = keep_n
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
