"""Importance scores for structured pruning (Michel et al. 2019, "Are Sixteen Heads Really Better
than One?"): the expected absolute gradient of the loss with respect to a multiplicative mask.
Where the heads and feed-forward neurons are comes from the architecture adapter, the loss from
the task family."""

from __future__ import annotations

from typing import Any

from slimflow.models.families.batching import batches


def head_importance(model: Any, ctx: Any) -> Any:
    """(layers, heads) tensor: |d loss / d head_mask| summed over the calibration batches."""
    import torch

    arch = ctx.arch
    cfg = model.config
    if getattr(cfg, "pruned_heads", None):
        raise ValueError("heads were already pruned in this model: run prune_heads once, before other steps")
    if not arch.head_mask_supported():
        raise ValueError(f"{arch.name} models take no head_mask: gradient head importance is unavailable")
    n_layers, n_heads = len(arch.layers(model)), arch.num_heads(model)
    device = next(model.parameters()).device
    mask = torch.ones(n_layers, n_heads, device=device, requires_grad=True)
    was_training = model.training
    model.eval()
    score = torch.zeros(n_layers, n_heads, device=device)
    for inputs, labels, _ in batches(ctx.calibration, ctx.batch_size, ctx.pad_id, shuffle=False):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        loss = ctx.family.loss(model, {**inputs, "head_mask": mask}, labels.to(device))
        (grad,) = torch.autograd.grad(loss, mask)
        score += grad.abs().detach()
    model.train(was_training)
    return score


def ffn_importance(model: Any, ctx: Any, method: str) -> list[Any]:
    """Per layer, one score per intermediate neuron."""
    import torch

    arch = ctx.arch
    layers = arch.layers(model)
    if method == "magnitude":  # L2 norm of each neuron's in- and out-weights
        out = []
        for layer in layers:
            up, down = arch.ffn(layer)
            out.append(up.weight.norm(dim=1) * down.weight.norm(dim=0))
        return out
    device = next(model.parameters()).device
    scores = [torch.zeros(arch.ffn(layer)[0].out_features, device=device) for layer in layers]
    masks, hooks = [], []
    for layer in layers:
        m = torch.ones(arch.ffn(layer)[0].out_features, device=device, requires_grad=True)
        masks.append(m)
        hooks.append(arch.ffn_activation(layer).register_forward_hook(lambda _mod, _inp, out, m=m: out * m))
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
