"""Checks that need the model's shape but not its weights: run before any stage starts.

Reads only ``config.json`` (instant), so an unsupported architecture, a keep-list out of range, a
pruning step the architecture has no adapter for, or a head list that would empty a layer fails in
a second, not after fine-tuning. Hub ids are checked when their files are local.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimflow.models.archs import ArchAdapter, UnsupportedArchitecture, adapter_for
from slimflow.models.assets import resolve_pretrained
from slimflow.models.core.env import cpu_has_bf16
from slimflow.models.core.errors import ConfigError
from slimflow.models.core.modelfiles import read_config
from slimflow.models.data.tables import check_source
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.train.steps.base import unsupported_reason
from slimflow.models.train.steps.prune_heads import PruneHeadsConfig


def hub_config(ref: str, where: str) -> dict[str, Any]:
    """A hub model's ``config.json`` (a few kB, fetched alone, cached by huggingface_hub), so a hub
    id gets the same checks as a local folder before any weights download. {} when offline
    (``HF_HUB_OFFLINE=1``, the default here) or when the hub cannot be reached: the checks then run
    at load time. A model the hub does not have, or will not give without a token, is named now."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return {}
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        return {}
    try:
        path = hf_hub_download(ref, "config.json", token=os.environ.get("HF_TOKEN") or None)
    except GatedRepoError:
        raise ConfigError(f"{where}: {ref} is gated on the hub: accept its terms and set a token") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{where}: the hub has no model {ref!r} (or it is private: set a token)") from None
    except Exception:  # no network, a proxy, a timeout: not a verdict on the config
        return {}
    return read_config(Path(path).parent)


def model_arch(ref: str, cache_dir: Path, where: str) -> tuple[ArchAdapter, tuple[int, int]] | None:
    """The model's architecture adapter and (layers, heads), or None when neither this machine nor
    the hub (when reachable) gives its config."""
    src = resolve_pretrained(ref, cache_dir)
    cfg = read_config(Path(src)) if Path(src).exists() else hub_config(ref, where)
    if not cfg:
        return None
    try:
        arch = adapter_for(str(cfg.get("model_type", "")))
    except UnsupportedArchitecture as e:
        raise ConfigError(f"{where}: {ref}: {e}") from None
    return arch, arch.shape(cfg)


def model_shape(ref: str, cache_dir: Path) -> tuple[int, int] | None:
    """(layers, heads) from the model's config.json, or None when it is not on this machine."""
    found = model_arch(ref, cache_dir, "model")
    return found[1] if found else None


def check_mixed_precision(cfg: PipelineConfig) -> None:
    """``mixed_precision: bf16`` on a CPU without native bf16 would run slower than FP32."""
    sections = {"finetune.train": cfg.finetune.train}
    if cfg.distill is not None:
        sections["distill.train"] = cfg.distill.train
    if cfg.compress is not None and cfg.compress.recovery is not None:
        sections["compress.recovery.train"] = cfg.compress.recovery.train
    asks = [where for where, tc in sections.items() if tc.mixed_precision == "bf16"]
    if not asks or cpu_has_bf16():
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{asks[0]}.mixed_precision: bf16 needs a GPU or a CPU with avx512_bf16/AMX (this CPU "
            "has neither, so bf16 would be slower than FP32); use 'auto' or 'off'"
        )


def check_unlabeled(cfg: PipelineConfig) -> None:
    """``distill.unlabeled`` is readable and has its text column, before any training."""
    extra = cfg.distill.unlabeled if cfg.distill is not None else None
    if extra is None:
        return
    from slimflow.models.data.unlabeled import read_texts
    from slimflow.models.families import get_family

    if get_family(cfg.task).online_soft_targets:
        raise ConfigError(
            f"distill.unlabeled: the {cfg.task} task family distils token by token from the teacher "
            "run online; extra unlabeled texts are for classifiers"
        )
    texts = read_texts(extra.source, extra.text_column, "distill.unlabeled")
    if not texts.map(lambda v: isinstance(v, str) and bool(v.strip())).any():
        raise ConfigError(f"distill.unlabeled: {extra.source} has no non-blank text in {extra.text_column!r}")


def preflight(cfg: PipelineConfig) -> None:
    check_source(cfg.data)
    check_mixed_precision(cfg)
    check_unlabeled(cfg)
    teacher = model_arch(cfg.finetune.model, cfg.workdir_path(), "finetune.model")
    shape = teacher[1] if teacher else None
    student_arch = teacher[0] if teacher else None
    own = cfg.distill.student.own_model() if cfg.distill is not None else None
    keep = cfg.distill.student.teacher_layers() if cfg.distill is not None else None
    if own is not None:
        found = model_arch(own, cfg.workdir_path(), "distill.student.model")
        student_arch, student_shape = (found[0], found[1]) if found else (None, None)
    elif keep is not None and shape is not None:
        bad = [i for i in keep if i >= shape[0]]
        if bad:
            raise ConfigError(
                f"distill.student.keep_layers: {bad} out of range; the teacher {cfg.finetune.model} has "
                f"layers 0..{shape[0] - 1}"
            )
        student_shape = (len(keep), shape[1])
    else:
        student_shape = shape
    if cfg.compress is not None:
        for i, step in enumerate(cfg.compress.steps):
            if cfg.task not in type(step).families:
                raise ConfigError(
                    f"compress.steps.{i}: {step.kind} does not support the {cfg.task} task family"
                )
            why = unsupported_reason(step, student_arch) if student_arch is not None else None
            if why is not None:
                if cfg.compress.on_unsupported == "skip":
                    continue  # the stage skips it and says why
                raise ConfigError(f"compress.steps.{i}: {why} (set compress.on_unsupported: skip to skip it)")
            if isinstance(step, PruneHeadsConfig) and student_shape is not None:
                try:
                    step.check_against(*student_shape)
                except ValueError as e:
                    raise ConfigError(f"compress.steps.{i}: {e}") from None
