"""Encoded examples and batches: tokenized inputs (unpadded) plus integer targets, padded per batch.

Shared by every task family and by the training loop. Shuffled batches are length-bucketed (sorted
by length inside chunks of batches, then the batches shuffled): padding stays small, order random.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads where batches are made: a family's import must not pull it in
    import torch

Batch = dict[str, "torch.Tensor"]
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE_INDEX = -100  # per-token targets not trained on (prompt tokens, padding)
PAD_FILL = {"labels": IGNORE_INDEX}  # padding of per-token keys other than input_ids (default 0)


@dataclass
class Encoded:
    """Tokenized texts (unpadded) and integer labels."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, idx: np.ndarray | list[int]) -> Encoded:
        return Encoded([self.features[i] for i in idx], self.labels[np.asarray(idx, dtype=int)])


def encode(tokenizer: Any, texts: list[str], labels: list[int] | np.ndarray, max_length: int) -> Encoded:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in enc.keys() if k in INPUT_KEYS]
    feats = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    return Encoded(feats, np.asarray(labels, dtype=np.int64))


def pad(features: list[dict[str, list[int]]], pad_id: int) -> Batch:
    import torch

    n = max(len(f["input_ids"]) for f in features)
    out: Batch = {}
    for k in features[0]:
        fill = PAD_FILL.get(k, 0) if k != "input_ids" else pad_id
        out[k] = torch.tensor([f[k] + [fill] * (n - len(f[k])) for f in features], dtype=torch.long)
    return out


def batches(
    data: Encoded, batch_size: int, pad_id: int, *, shuffle: bool, seed: int = 0, bucket: int = 50
) -> Iterator[tuple[Batch, torch.Tensor, np.ndarray]]:
    """Yield (inputs, labels, row indices). Shuffled mode sorts by length inside chunks of
    ``bucket`` batches, then shuffles the batches, so padding is small but order still random."""
    n = len(data)
    if shuffle:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        lengths = np.array([len(data.features[i]["input_ids"]) for i in perm])
        groups = []
        span = batch_size * bucket
        for s in range(0, n, span):
            chunk = perm[s : s + span][np.argsort(lengths[s : s + span], kind="stable")]
            groups += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        order = rng.permutation(len(groups))
        groups = [groups[i] for i in order]
    else:  # evaluation: sort by length for speed, caller gets indices to restore order
        idx = np.argsort([len(f["input_ids"]) for f in data.features], kind="stable")
        groups = [idx[i : i + batch_size] for i in range(0, n, batch_size)]
    import torch

    for g in groups:
        yield pad([data.features[i] for i in g], pad_id), torch.from_numpy(data.labels[g]), g


def predict_logits(
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Logits for every row, in the input order (computed under autocast to ``autocast_dtype`` when
    given: soft targets for distillation, where bf16 costs nothing measurable and saves time)."""
    import torch

    with torch.no_grad():
        return _predict_logits(model, data, batch_size, pad_id, device, autocast_dtype)


def _predict_logits(
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device | None,
    autocast_dtype: torch.dtype | None,
) -> np.ndarray:
    import torch

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    for inputs, _, idx in batches(data, batch_size, pad_id, shuffle=False):
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(data), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    model.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
