"""Llama (SmolLM2, Llama 2/3 and the decoders built like them): ``model.layers[i]`` with
``self_attn`` (q/k/v/o projections, grouped-query attention: ``num_attention_heads`` query heads
share ``num_key_value_heads`` key/value heads), an MLP ``down(act(gate(x)) * up(x))``, no pooler;
the sequence-classification head is ``score`` and pools the last non-pad token.

Pad-token policy: a Llama tokenizer usually has no pad token; the end-of-sequence token pads, and
the model's ``pad_token_id`` is set to it, so the classification head finds the last real token
with left or right padding alike.

Head pruning removes whole key/value groups (a key/value head and the query heads that read it),
the same number in every layer: the config describes every layer with one head count, and the
saved model must reload. Pruned layers keep their ``head_dim`` (written into the config).
"""

from __future__ import annotations

from typing import Any, ClassVar

from slimflow.models.archs import ArchAdapter, register_arch


class LlamaAdapter(ArchAdapter):
    name = "llama"
    model_types = ("llama",)
    head_modules: ClassVar[tuple[str, ...]] = ("score",)
    embeddings_marker: ClassVar[str] = ".embed_tokens."
    dropout_keys: ClassVar[tuple[str, ...]] = ("attention_dropout",)
    default_lora_targets: ClassVar[list[str] | None] = [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    pruning_steps: ClassVar[tuple[str, ...]] = ("prune_heads", "prune_ffn", "prune_magnitude")

    def layers(self, model: Any) -> Any:
        return model.base_model.layers

    def shape(self, config: dict[str, Any]) -> tuple[int, int]:
        return int(config.get("num_hidden_layers", 0)), int(config.get("num_attention_heads", 0))

    def pad_id(self, tokenizer: Any) -> int:
        if tokenizer.pad_token_id is not None:
            return tokenizer.pad_token_id
        return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def prepare(self, model: Any, tokenizer: Any) -> None:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id

    def renumber(self, layer: Any, index: int) -> None:
        layer.self_attn.layer_idx = index  # the key/value cache is indexed by it

    # ------------------------------------------------------------------ grouped-query heads
    @staticmethod
    def _groups(model: Any) -> tuple[int, int, int]:
        """(query heads, key/value heads, query heads per key/value head)."""
        n_q = int(model.config.num_attention_heads)
        n_kv = int(getattr(model.config, "num_key_value_heads", None) or n_q)
        return n_q, n_kv, n_q // n_kv

    @staticmethod
    def _head_dim(model: Any) -> int:
        cfg = model.config
        return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    def head_mask_inputs(self, model: Any, mask: Any) -> tuple[dict[str, Any], list[Any]]:
        """Llama takes no head_mask: scale each query head's slice of the attention output (the
        input of o_proj) by its mask entry."""
        hd, hooks = self._head_dim(model), []
        for i, layer in enumerate(self.layers(model)):

            def scale(_mod: Any, args: tuple[Any, ...], i: int = i) -> tuple[Any, ...]:
                x = args[0]
                shaped = x.view(*x.shape[:-1], -1, hd) * mask[i][:, None]
                return (shaped.view_as(x), *args[1:])

            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(scale))
        return {}, hooks

    def choose_heads(self, model: Any, score: Any, ratio: float, min_keep: int) -> dict[int, list[int]]:
        """Whole key/value groups, the same number in every layer: per layer, the groups whose query
        heads score lowest together; at least ``min_keep`` query heads (rounded up to groups) stay."""
        n_layers, n_q = score.shape
        _, n_kv, group = self._groups(model)
        keep_groups = max(-(-min_keep // group), 1)
        drop = min(int(round(ratio * n_kv)), n_kv - keep_groups)
        plan: dict[int, list[int]] = {}
        for i in range(n_layers):
            by_group = score[i].reshape(n_kv, group).sum(-1)
            gone = sorted(int(g) for g in by_group.argsort()[:drop]) if drop > 0 else []
            heads = [g * group + j for g in gone for j in range(group)]
            if heads:
                plan[i] = heads
        return plan

    def prune_heads(self, model: Any, plan: dict[int, list[int]]) -> None:
        import torch
        from transformers.pytorch_utils import prune_linear_layer

        n_q, n_kv, group = self._groups(model)
        hd = self._head_dim(model)
        layers = self.layers(model)
        dropped_groups: dict[int, list[int]] = {}
        for i, heads in plan.items():
            groups = sorted({h // group for h in heads})
            if sorted(heads) != [g * group + j for g in groups for j in range(group)]:
                raise ValueError(
                    f"llama layer {i}: heads {sorted(heads)} are not whole key/value groups of {group} "
                    "query heads (grouped-query attention prunes a key/value head with its query heads)"
                )
            dropped_groups[i] = groups
        counts = {len(dropped_groups.get(i, [])) for i in range(len(layers))}
        if len(counts) != 1:
            raise ValueError(
                f"llama: every layer must lose the same number of key/value groups (the config has one head "
                f"count for all layers); the plan drops {sorted(counts)} from different layers"
            )
        (n_drop,) = counts
        if n_drop == 0:
            return
        if n_drop >= n_kv:
            raise ValueError("llama: the plan would remove every key/value head of a layer")
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            keep_kv = [g for g in range(n_kv) if g not in dropped_groups[i]]
            q_rows = torch.tensor([g * group * hd + r for g in keep_kv for r in range(group * hd)])
            kv_rows = torch.tensor([g * hd + r for g in keep_kv for r in range(hd)])
            attn.q_proj = prune_linear_layer(attn.q_proj, q_rows.to(attn.q_proj.weight.device), dim=0)
            attn.k_proj = prune_linear_layer(attn.k_proj, kv_rows.to(attn.k_proj.weight.device), dim=0)
            attn.v_proj = prune_linear_layer(attn.v_proj, kv_rows.to(attn.v_proj.weight.device), dim=0)
            attn.o_proj = prune_linear_layer(attn.o_proj, q_rows.to(attn.o_proj.weight.device), dim=1)
        model.config.head_dim = hd
        model.config.num_key_value_heads = n_kv - n_drop
        model.config.num_attention_heads = n_q - n_drop * group

    # ------------------------------------------------------------------------- MLP
    def ffn(self, layer: Any) -> tuple[list[Any], Any]:
        return [layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj

    def mask_ffn(self, layer: Any, mask: Any) -> Any:
        return layer.mlp.down_proj.register_forward_pre_hook(lambda _mod, args: (args[0] * mask, *args[1:]))

    def set_ffn(self, layer: Any, ins: list[Any], out: Any) -> None:
        (layer.mlp.gate_proj, layer.mlp.up_proj), layer.mlp.down_proj = ins, out


register_arch(LlamaAdapter())
