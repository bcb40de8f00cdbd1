"""Knowledge distillation: build a smaller student and train it on the teacher's soft targets.

Students: ``layer_drop`` keeps a listed subset of the teacher's encoder layers (same tokenizer,
weights copied exactly); ``pretrained`` is a separate model with its own tokenizer, each side
tokenizing the text itself. The teacher's logits over the training rows are computed once and
cached (keyed on the teacher weights' sha256 and the split fingerprint), so student epochs never
re-run the teacher.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.arch import encoder_layers


# ---------------------------------------------------------------------------------------- loss
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels) (Hinton et al. 2015).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones.
    """
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if alpha >= 1.0:
        return soft
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


# ------------------------------------------------------------------------------------ students
def layer_drop(teacher: torch.nn.Module, keep_layers: list[int]) -> torch.nn.Module:
    """A deep copy of ``teacher`` keeping only ``keep_layers`` (in that order), weights unchanged."""
    layers = encoder_layers(teacher)
    n = len(layers)
    bad = [i for i in keep_layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"keep_layers {bad} out of range: the teacher has layers 0..{n - 1}")
    if len(set(keep_layers)) != len(keep_layers) or not keep_layers:
        raise ValueError(f"keep_layers must be distinct and non-empty, got {keep_layers}")
    student = copy.deepcopy(teacher)
    s_layers = encoder_layers(student)
    kept = torch.nn.ModuleList([s_layers[i] for i in keep_layers])
    s_layers._modules.clear()
    for j, layer in enumerate(kept):
        s_layers.add_module(str(j), layer)
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
    student.config.num_hidden_layers = len(keep_layers)
    return student


def teacher_logits_key(teacher_sha256: str, split_fingerprint: str, max_length: int) -> str:
    return hashlib.sha256(f"{teacher_sha256}|{split_fingerprint}|{max_length}".encode()).hexdigest()[:16]


def cached_teacher_logits(compute: Any, cache_dir: Path, key: str) -> tuple[np.ndarray, bool]:
    """Load logits saved under ``key`` or call ``compute()`` once and save them. Returns (logits, hit)."""
    path = Path(cache_dir) / f"teacher-logits-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False), True
    logits = np.asarray(compute(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, logits, allow_pickle=False)
    tmp.rename(path)
    return logits, False
