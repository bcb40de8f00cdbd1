"""MPNet (all-mpnet-base-v2): ``mpnet.encoder.layer[i]`` with ``attention.attn`` (q/k/v/o), the
same ``intermediate``/``output`` feed-forward as BERT, a relative-position bias shared by every
layer (computed once in the encoder for all heads), and a ``classifier`` head with its own dense
layer (no pooler). peft knows no default LoRA targets for MPNet: the adapter names q and v.

Head pruning does not apply: transformers' ``prune_heads`` shrinks q/k/v/o but not the shared
relative-position bias, so a pruned layer fails at its first forward pass (seen on a tiny MPNet:
"size of tensor a (2) must match the size of tensor b (4)"). Feed-forward and magnitude pruning do.
"""

from __future__ import annotations

from typing import ClassVar

from slimflow.models.archs import ArchAdapter, register_arch


class MPNetAdapter(ArchAdapter):
    name = "mpnet"
    model_types = ("mpnet",)
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    default_lora_targets: ClassVar[list[str] | None] = ["q", "v"]  # peft has no default for MPNet
    pruning_steps: ClassVar[tuple[str, ...]] = ("prune_ffn", "prune_magnitude", "trim_vocab")


register_arch(MPNetAdapter())
