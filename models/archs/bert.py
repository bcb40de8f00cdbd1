"""BERT (and the MiniLM checkpoints built on it): ``bert.encoder.layer[i]`` with
``attention.self`` (query/key/value), ``attention.output.dense``, ``intermediate.dense`` and
``output.dense``; a pooler and a ``classifier`` head."""

from __future__ import annotations

from typing import Any

from slimflow.models.archs import ArchAdapter, register_arch


class BertAdapter(ArchAdapter):
    name = "bert"
    model_types = ("bert",)

    def renumber(self, layer: Any, index: int) -> None:
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = index


register_arch(BertAdapter())
