"""Importance scores for structured pruning (Michel et al. 2019, "Are Sixteen Heads Really Better
than One?"): the expected absolute gradient of the loss with respect to a multiplicative mask."""

from __future__ import annotations

from typing import Any


def head_importance(model: Any, ctx: Any) -> Any:
    """(layers, heads) tensor: |d loss / d head_mask| summed over the calibration batches."""
    import torch  # noqa: PLC0415

    from models import training as T  # noqa: PLC0415

    cfg = model.config
    if getattr(cfg, "pruned_heads", None):
        raise ValueError("heads were already pruned in this model: run prune_heads once, before other steps")
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    device = next(model.parameters()).device
    mask = torch.ones(n_layers, n_heads, device=device, requires_grad=True)
    was_training = model.training
    model.eval()
    score = torch.zeros(n_layers, n_heads, device=device)
    for inputs, labels, _ in T.batches(ctx.calibration, ctx.batch_size, ctx.pad_id, shuffle=False):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        out = model(**inputs, labels=labels.to(device), head_mask=mask)
        (grad,) = torch.autograd.grad(out.loss, mask)
        score += grad.abs().detach()
    model.train(was_training)
    return score


def ffn_importance(model: Any, ctx: Any, method: str) -> list[Any]:
    """Per layer, one score per intermediate neuron."""
    import torch  # noqa: PLC0415

    from models import training as T  # noqa: PLC0415
    from models.arch import encoder_layers  # noqa: PLC0415

    layers = encoder_layers(model)
    if method == "magnitude":  # L2 norm of each neuron's in- and out-weights
        return [
            layer.intermediate.dense.weight.norm(dim=1) * layer.output.dense.weight.norm(dim=0)
            for layer in layers
        ]
    device = next(model.parameters()).device
    scores = [torch.zeros(layer.intermediate.dense.out_features, device=device) for layer in layers]
    masks, hooks = [], []
    for layer in layers:
        m = torch.ones(layer.intermediate.dense.out_features, device=device, requires_grad=True)
        masks.append(m)
        hooks.append(layer.intermediate.register_forward_hook(lambda _mod, _inp, out, m=m: out * m))
    was_training = model.training
    model.eval()
    try:
        for inputs, labels, _ in T.batches(ctx.calibration, ctx.batch_size, ctx.pad_id, shuffle=False):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss = model(**inputs, labels=labels.to(device)).loss
            grads = torch.autograd.grad(loss, masks)
            for s, g in zip(scores, grads, strict=True):
                s += g.abs().detach()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return scores
