"""Architecture adapters: what differs between transformer architectures, keyed by
``config.model_type``.

The library never asks "is this BERT?": it asks the model's adapter where the layers are, how
attention heads are pruned, which Linear layers form the feed-forward block, which modules are the
task head, how padding works, which LoRA targets to use and which pruning steps apply. A new
architecture is one file here that registers its adapter (``ARCHS.add(Adapter())``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from slimflow.models.core.modelfiles import read_config
from slimflow.models.core.plugins import Registry, load_plugins

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


class ArchAdapter:
    """Base adapter for encoder stacks reached as ``model.base_model.encoder.layer`` (BERT-like).

    Subclasses override what their architecture does differently; every method takes the model
    (or one of its layers) and touches nothing else.
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    # Modules trained in full beside adapters and kept trainable by layer freezing: the new task
    # head, and the pooler that sentence-embedding checkpoints never trained.
    head_modules: ClassVar[tuple[str, ...]] = ("classifier", "pooler")
    # Parameter-name fragment of the token/position embeddings (pruning never touches them).
    embeddings_marker: ClassVar[str] = ".embeddings."
    # Config keys of dropout probabilities (train.dropout overrides them).
    dropout_keys: ClassVar[tuple[str, ...]] = DROPOUT_KEYS
    # LoRA targets when the config names none; None = peft's own default for the model type.
    default_lora_targets: ClassVar[list[str] | None] = None
    # Compression steps that know how to change this architecture.
    pruning_steps: ClassVar[tuple[str, ...]] = ("prune_heads", "prune_ffn", "prune_magnitude", "trim_vocab")
    # Positions the embedding table reserves before the first token (RoBERTa-style: 2).
    position_offset: ClassVar[int] = 0

    # ------------------------------------------------------------------------------ structure
    def layers(self, model: Any) -> Any:
        """The transformer block list (a torch ModuleList)."""
        return model.base_model.encoder.layer

    def shape(self, config: dict[str, Any]) -> tuple[int, int]:
        """(layers, attention heads) from a config.json mapping (no weights loaded)."""
        return int(config.get("num_hidden_layers", 0)), int(config.get("num_attention_heads", 0))

    def num_heads(self, model: Any) -> int:
        return int(model.config.num_attention_heads)

    def position_limit(self, config: dict[str, Any]) -> int:
        """Longest input (tokens) the model has position embeddings for."""
        return int(config.get("max_position_embeddings") or 512) - self.position_offset

    def pad_id(self, tokenizer: Any) -> int:
        """The id padded batches use (BERT-like tokenizers have a [PAD] token)."""
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # --------------------------------------------------------------------------- layer dropping
    def keep_layers(self, model: Any, keep: list[int]) -> None:
        """Keep only the listed layers (in that order), in place; weights unchanged."""
        import torch

        layers = self.layers(model)
        kept = torch.nn.ModuleList([layers[i] for i in keep])
        layers._modules.clear()
        for j, layer in enumerate(kept):
            layers.add_module(str(j), layer)
            self.renumber(layer, j)
        model.config.num_hidden_layers = len(keep)

    def renumber(self, layer: Any, index: int) -> None:
        """Tell a moved layer its new position (caches key on it)."""

    # ------------------------------------------------------------------------- head pruning
    def head_mask_inputs(self, model: Any, mask: Any) -> tuple[dict[str, Any], list[Any]]:
        """How to multiply every attention head's output by ``mask`` (layers x heads) in a forward
        pass, so that d loss / d mask scores the heads: extra forward arguments and/or hook handles
        (removed by the caller). BERT-like models take a ``head_mask`` argument."""
        return {"head_mask": mask}, []

    def choose_heads(self, model: Any, score: Any, ratio: float, min_keep: int) -> dict[int, list[int]]:
        """Heads to remove, {layer: [head, ...]}: the lowest-scoring ``ratio`` of all heads, never
        leaving a layer with fewer than ``min_keep`` (layers may end up with different counts)."""
        n_layers, n_heads = score.shape
        budget = int(round(ratio * n_layers * n_heads))
        order = sorted((float(score[i, j]), i, j) for i in range(n_layers) for j in range(n_heads))
        removed: dict[int, list[int]] = {}
        for _score, i, j in order:
            if budget == 0:
                break
            if n_heads - len(removed.get(i, [])) > min_keep:
                removed.setdefault(i, []).append(j)
                budget -= 1
        return {i: sorted(hs) for i, hs in removed.items()}

    def prune_heads(self, model: Any, plan: dict[int, list[int]]) -> None:
        """Remove the listed heads from the weights (query/key/value rows, output columns)."""
        model.prune_heads(plan)

    # ------------------------------------------------------------------------- FFN pruning
    def ffn(self, layer: Any) -> tuple[list[Any], Any]:
        """A block's feed-forward Linear layers: (the projections into the hidden width, the one out)."""
        return [layer.intermediate.dense], layer.output.dense

    def mask_ffn(self, layer: Any, mask: Any) -> Any:
        """Multiply the FFN's hidden activation by ``mask`` during forward passes; returns the hook
        handle (the caller removes it)."""
        return layer.intermediate.register_forward_hook(lambda _mod, _inp, out: out * mask)

    def set_ffn(self, layer: Any, ins: list[Any], out: Any) -> None:
        (layer.intermediate.dense,), layer.output.dense = ins, out

    def set_ffn_width(self, model: Any, width: int) -> None:
        model.config.intermediate_size = width

    # ------------------------------------------------------------------------- tokenizer
    def prepare(self, model: Any, tokenizer: Any) -> None:
        """Make a freshly loaded model and its tokenizer agree on padding (pad-token policy)."""


ARCHS: Registry[ArchAdapter] = Registry("architecture")


def register_arch(adapter: ArchAdapter) -> ArchAdapter:
    """Register ``adapter`` under its name; each of its model types must be new too."""
    taken = [t for t in adapter.model_types if t in _BY_MODEL_TYPE]
    if taken:
        raise ValueError(f"architecture {adapter.name!r}: model type(s) {taken} already have an adapter")
    ARCHS.add(adapter.name, adapter)
    for t in adapter.model_types:
        _BY_MODEL_TYPE[t] = adapter
    return adapter


_BY_MODEL_TYPE: dict[str, ArchAdapter] = {}


class UnsupportedArchitecture(ValueError):
    """No adapter knows this model type."""


def adapter_for(model_type: str) -> ArchAdapter:
    """The adapter for ``config.model_type``."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"no architecture adapter for model type {model_type!r}; supported: "
            f"{', '.join(sorted(_BY_MODEL_TYPE))} (a new one is one file in slimflow/models/archs/)"
        ) from None


def adapter_of(model: Any) -> ArchAdapter:
    """The adapter for a loaded model (a peft wrapper is looked through)."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    return adapter_for(getattr(config, "model_type", "") or "")


def position_limit(model_dir: str | Path) -> int:
    """Longest input (tokens) a saved model has position embeddings for, from its config.json
    (512 when the folder has none, e.g. a bare ONNX file)."""
    cfg = read_config(model_dir)
    if not cfg:
        return 512
    return adapter_for(str(cfg.get("model_type", ""))).position_limit(cfg)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


load_plugins(__name__, __path__)  # every module here registers an adapter
