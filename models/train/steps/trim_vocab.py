"""Vocabulary trimming: drop the embedding rows of tokens the training data never uses.

A small student's word embeddings are most of its weights (MiniLM: 30,522 x 384 = 11.7M of a
3-layer pruned student's ~15M parameters), and a review classifier uses a fraction of a general
vocabulary. The step tokenizes every training text, keeps the tokens seen at least ``min_count``
times plus a safety set (the special tokens and every single-character piece, so that an unseen
word still splits into characters instead of becoming ``[UNK]``), gathers their embedding rows in
their old order and rewrites the tokenizer with the new ids.

WordPiece tokenizers only (BERT, MiniLM, MPNet): longest-match-first over a vocabulary that keeps
every piece a text used gives that text the same pieces, so a **covered** text (all its tokens
kept) gets exactly the logits it got before; an uncovered one falls back to smaller pieces. The
compress stage reports both shares on the test split. Byte-level BPE tokenizers (Llama) merge by
rank, not by vocabulary membership, and are refused.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import Field

from slimflow.models.train.steps.base import StepConfig, StepContext, StepReport, register_step


class TrimVocabConfig(StepConfig):
    kind: Literal["trim_vocab"] = "trim_vocab"
    changes_vocabulary: ClassVar[bool] = True
    min_count: int = Field(
        1, ge=1, le=1_000_000, description="Keep tokens used at least this many times in the training texts."
    )
    keep_characters: bool = Field(
        True,
        description="Also keep every single-character piece (and its '##' form) so that unseen words "
        "split into characters rather than [UNK].",
    )


def _remap(node: Any, old_to_new: dict[int, int], keys: tuple[str, ...] = ("id", "pad_id")) -> Any:
    """Token ids inside a tokenizer.json section (post-processor, padding, added tokens), remapped."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in keys and isinstance(v, int):
                out[k] = old_to_new[v]
            elif k == "ids" and isinstance(v, list) and all(isinstance(i, int) for i in v):
                out[k] = [old_to_new[i] for i in v]
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], old_to_new[v[1]]]  # BertProcessing: ["[SEP]", 102]
            else:
                out[k] = _remap(v, old_to_new, keys)
        return out
    if isinstance(node, list):
        return [_remap(v, old_to_new, keys) for v in node]
    return node


def trimmed_tokenizer(tokenizer: Any, keep: list[int]) -> Any:
    """``tokenizer`` (a transformers fast WordPiece tokenizer) with only the ids in ``keep``
    (ascending), renumbered 0..len(keep)-1 in that order."""
    import tempfile

    from transformers import AutoTokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    old_to_new = {old: new for new, old in enumerate(keep)}
    id_to_token = {i: t for t, i in spec["model"]["vocab"].items()}
    spec["model"]["vocab"] = {id_to_token[old]: new for old, new in old_to_new.items()}
    for section in ("post_processor", "padding", "added_tokens"):
        if spec.get(section) is not None:
            spec[section] = _remap(spec[section], old_to_new)
    with tempfile.TemporaryDirectory(prefix="trim-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        with open(f"{tmp}/tokenizer.json", "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False)
        with open(f"{tmp}/vocab.txt", "w", encoding="utf-8") as f:  # the slow tokenizer's copy
            f.write("\n".join(id_to_token[old] for old in keep) + "\n")
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)


def kept_ids(tokenizer: Any, texts: list[str], cfg: TrimVocabConfig) -> list[int]:
    """The ids the trimmed vocabulary keeps (ascending): used ones, special ones, characters."""
    from collections import Counter

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "WordPiece":
        raise ValueError(
            f"trim_vocab supports WordPiece tokenizers (BERT, MiniLM, MPNet); this one is "
            f"{spec['model'].get('type')!r}"
        )
    counts: Counter[int] = Counter()
    for start in range(0, len(texts), 1024):
        for enc in tokenizer.backend_tokenizer.encode_batch(texts[start : start + 1024]):
            counts.update(enc.ids)
    keep = {i for i, n in counts.items() if n >= cfg.min_count}
    keep |= set(tokenizer.all_special_ids)
    keep |= {a["id"] for a in spec.get("added_tokens") or []}
    if cfg.keep_characters:
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        for token, i in spec["model"]["vocab"].items():
            if len(token) == 1 or (token.startswith(prefix) and len(token) == len(prefix) + 1):
                keep.add(i)
    return sorted(keep)


@register_step(TrimVocabConfig)
def trim_vocab(model: Any, cfg: TrimVocabConfig, ctx: StepContext) -> StepReport:
    import torch

    if ctx.tokenizer is None or ctx.texts is None:
        raise ValueError(
            "trim_vocab needs the tokenizer and the training texts (the compress stage gives both)"
        )
    keep = kept_ids(ctx.tokenizer, list(ctx.texts), cfg)
    old = model.get_input_embeddings()
    before = sum(p.numel() for p in model.parameters())
    index = torch.tensor(keep, dtype=torch.long, device=old.weight.device)
    pad_old = ctx.tokenizer.pad_token_id
    pad_new = keep.index(pad_old) if pad_old is not None and pad_old in keep else None
    new = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=pad_new).to(old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(0, index))
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    if pad_new is not None:
        model.config.pad_token_id = pad_new
    tokenizer = trimmed_tokenizer(ctx.tokenizer, keep)
    after = sum(p.numel() for p in model.parameters())
    return StepReport(
        "trim_vocab",
        {
            "vocab_before": old.num_embeddings,
            "vocab_after": len(keep),
            "params_before": before,
            "params_after": after,
            "train_texts": len(ctx.texts),
        },
        [f"kept {len(keep)} of {old.num_embeddings} tokens (used in training, special, single characters)"],
        tokenizer=tokenizer,
    )
