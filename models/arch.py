"""Architecture helpers that work across BERT-like encoders (BERT, MPNet, RoBERTa, ...)."""

from __future__ import annotations

import torch

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer block list (e.g. ``bert.encoder.layer``): the longest ModuleList named layer(s)."""
    best: torch.nn.ModuleList | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers"):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ValueError(f"{type(model).__name__}: no encoder layer list found")
    return best


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
