"""Importance scores for structured pruning (Michel et al. 2019, "Are Sixteen Heads Really Better
than One?"): the expected absolute gradient of the loss with respect to a multiplicative mask.
The architecture adapter applies the masks (a ``head_mask`` argument, or hooks), the task family
gives the loss."""

from __future__ import annotations

from typing import Any

from slimflow.models.families.batching import batches


def head_importance(model: Any, ctx: Any) -> Any:
    """(layers, heads) tensor: |d loss / d head mask| summed over the calibration batches."""
    import torch

    arch = ctx.arch
    if getattr(model.config, "pruned_heads", None):
        raise ValueError("heads were already pruned in this model: run prune_heads once, before other steps")
    n_layers, n_heads = len(arch.layers(model)), arch.num_heads(model)
    device = next(model.parameters()).device
    mask = torch.ones(n_layers, n_heads, device=device, requires_grad=True)
    extra, hooks = arch.head_mask_inputs(model, mask)
    was_training = model.training
    model.eval()
    score = torch.zeros(n_layers, n_heads, device=device)
    from transformers.utils import logging as hf_logging

    # a head mask makes SDPA attention fall back to the eager kernel, and transformers says so: that
    # fallback is what this pass needs, not news for the user
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for inputs, labels, _ in batches(ctx.calibration, ctx.batch_size, ctx.pad_id, shuffle=False):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss = ctx.family.loss(model, {**inputs, **extra}, labels.to(device))
            (grad,) = torch.autograd.grad(loss, mask)
            score += grad.abs().detach()
    finally:
        hf_logging.set_verbosity(verbosity)
        for h in hooks:
            h.remove()
        model.train(was_training)
    return score


def ffn_importance(model: Any, ctx: Any, method: str) -> list[Any]:
    """Per layer, one score per hidden FFN neuron."""
    import torch

    arch = ctx.arch
    layers = arch.layers(model)
    if method == "magnitude":  # L2 norms of each neuron's in-weights (every in-projection) and out-weights
        out = []
        for layer in layers:
            ins, down = arch.ffn(layer)
            score = ins[0].weight.norm(dim=1)
            for other in ins[1:]:
                score = score * other.weight.norm(dim=1)
            out.append(score * down.weight.norm(dim=0))
        return out
    device = next(model.parameters()).device
    widths = [arch.ffn(layer)[1].in_features for layer in layers]
    scores = [torch.zeros(w, device=device) for w in widths]
    masks = [torch.ones(w, device=device, requires_grad=True) for w in widths]
    hooks = [arch.mask_ffn(layer, m) for layer, m in zip(layers, masks, strict=True)]
    was_training = model.training
    model.eval()
    try:
        for inputs, labels, _ in batches(ctx.calibration, ctx.batch_size, ctx.pad_id, shuffle=False):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss = ctx.family.loss(model, inputs, labels.to(device))
            grads = torch.autograd.grad(loss, masks)
            for s, g in zip(scores, grads, strict=True):
                s += g.abs().detach()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return scores
