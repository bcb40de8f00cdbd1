"""Structured attention-head pruning: the least important heads are removed from the weights, so the
query/key/value and output matrices really shrink. Which heads may go together is the architecture
adapter's business (BERT: any head; grouped-query attention: whole key/value groups)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from slimflow.models.train.steps.base import StepConfig, StepContext, StepReport, register_step


class PruneHeadsConfig(StepConfig):
    kind: Literal["prune_heads"] = "prune_heads"
    ratio: float = Field(0.3, ge=0, lt=1, description="Share of all heads removed (global ranking).")
    min_heads_per_layer: int = Field(1, ge=1, description="Heads every layer keeps, whatever their score.")
    heads: dict[int, list[int]] | None = Field(
        None, description="Explicit {layer: [head, ...]} to remove instead of ranking by importance."
    )

    @field_validator("heads")
    @classmethod
    def _explicit(cls, v: dict[int, list[int]] | None) -> dict[int, list[int]] | None:
        if v is not None:
            for layer, hs in v.items():
                if layer < 0 or any(h < 0 for h in hs) or len(set(hs)) != len(hs):
                    raise ValueError(f"heads[{layer}]: layer and head indices must be distinct and >= 0")
        return v

    def check_against(self, n_layers: int, n_heads: int) -> None:
        """Model-dependent checks, run before any training (preflight)."""
        for layer, hs in (self.heads or {}).items():
            if layer >= n_layers:
                raise ValueError(f"prune_heads: layer {layer} out of range (model has {n_layers})")
            if any(h >= n_heads for h in hs):
                raise ValueError(f"prune_heads: head index out of range in layer {layer} (has {n_heads})")
            if len(hs) >= n_heads:
                raise ValueError(f"prune_heads: would remove every head of layer {layer}")
        if self.min_heads_per_layer > n_heads:
            raise ValueError(f"prune_heads: min_heads_per_layer {self.min_heads_per_layer} > {n_heads} heads")


@register_step(PruneHeadsConfig)
def prune_heads(model: Any, cfg: PruneHeadsConfig, ctx: StepContext) -> StepReport:
    from slimflow.models.train.steps._importance import head_importance

    arch = ctx.arch
    n_layers, n_heads = len(arch.layers(model)), arch.num_heads(model)
    cfg.check_against(n_layers, n_heads)
    before = sum(p.numel() for p in model.parameters())
    if cfg.heads is not None:
        plan = {int(k): list(v) for k, v in cfg.heads.items() if v}
    elif cfg.ratio == 0:
        plan = {}
    else:
        plan = arch.choose_heads(model, head_importance(model, ctx), cfg.ratio, cfg.min_heads_per_layer)
    if plan:
        arch.prune_heads(model, plan)
    after = sum(p.numel() for p in model.parameters())
    removed = sum(len(v) for v in plan.values())
    return StepReport(
        "prune_heads",
        {
            "heads_removed": removed,
            "heads_total": n_layers * n_heads,
            "params_before": before,
            "params_after": after,
        },
        [f"removed heads {plan}"] if plan else ["nothing removed"],
    )
