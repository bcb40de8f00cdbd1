"""Fine-tuning the teacher: a registered method (peft's LoRA, AdaLoRA, IA3, prefix tuning; layer
freezing; full fine-tuning) on the task family's model, with the shared training loop.

Adapters are merged (``model = model.merge_and_unload()``) and the merged model must reproduce the
adapter model's logits before it is saved as safetensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimflow.models.archs import adapter_of, count_parameters
from slimflow.models.core.results import ModelResult
from slimflow.models.data.prepare import PreparedData
from slimflow.models.data.tables import LABEL, read_split, stratified_sample
from slimflow.models.families import get_family
from slimflow.models.train import loop as T
from slimflow.models.train.config import FewShotConfig, FinetuneConfig
from slimflow.models.train.distributed import run_data_parallel
from slimflow.models.train.methods import METHODS, MethodContext

MERGE_TOLERANCE = 1e-4


def merge(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
    """Fold adapters into the base weights where the method allows it. Returns (model, merged?)."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        cfg = next(iter(model.peft_config.values()))
        if getattr(cfg, "is_prompt_learning", False):
            return model, False  # prefix tuning adds inputs; there is nothing to fold
        merged = model.merge_and_unload()  # assign: the call returns the merged model (peft #2032)
        return merged, True
    return model, False


def few_shot_rows(frame: Any, fs: FewShotConfig) -> Any:
    """k rows per class (all rows of a class that has fewer)."""
    import pandas as pd

    if LABEL not in frame.columns:  # chat data: k examples in all
        return frame.sample(n=min(fs.k, len(frame)), random_state=fs.seed).sort_index()
    parts = [g.sample(n=min(fs.k, len(g)), random_state=fs.seed) for _, g in frame.groupby(LABEL, sort=True)]
    return pd.concat(parts).sort_index()


class FinetuneResult(ModelResult):
    method: str
    merged: bool
    merge_max_abs_diff: float | None
    trainable_params: int
    total_params: int
    trainable_share: float
    train_examples: int
    optimizer_steps_planned: int
    best_epoch: int
    stopped_early: bool
    train_seconds: float
    history: list[dict[str, float]]

    nested_metrics = ("test", "validation")

    def readiness(self) -> dict[str, Any]:
        """What ``on_ready`` reports before training starts."""
        keys = (
            "trainable_params",
            "total_params",
            "trainable_share",
            "train_examples",
            "optimizer_steps_planned",
        )
        return {k: getattr(self, k) for k in keys}


def finetune(
    cfg: FinetuneConfig,
    data: PreparedData,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    on_epoch: Callable[[T.EpochRecord], None] | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    progress: bool | None = None,
    hub_token: str | None = None,
) -> FinetuneResult:
    """Fine-tune the teacher on ``data`` and save the merged model to ``out_dir``.

    With ``train.data_parallel > 1`` (and not already inside a torchrun job) the work runs in that
    many processes (``train.distributed``); ``on_epoch``/``on_ready`` then see the figures after."""
    tc = cfg.train
    if tc.data_parallel > 1 and T.world()[1] == 1:
        args = {"cfg": cfg.model_dump(mode="json"), "data": data.model_dump(mode="json"),
                "out_dir": str(out_dir), "cache_dir": str(cache_dir)}  # fmt: skip
        result = run_data_parallel(
            "finetune", args, tc.data_parallel, FinetuneResult, on_epoch=on_epoch,
            secret_env={"SLIMFLOW_HUB_TOKEN": hub_token} if hub_token else None,
        )  # fmt: skip
        if on_ready is not None:
            on_ready(result.readiness())
        return result
    family = get_family(data.task)
    T.set_seed(tc.seed)
    device = T.device_for()
    labels = data.labels
    train_df, val_df, test_df = (read_split(data.path(s)) for s in ("train", "validation", "test"))
    if cfg.few_shot is not None:
        train_df = few_shot_rows(train_df, cfg.few_shot)
    if tc.max_train_examples is not None:
        train_df = stratified_sample(train_df, tc.max_train_examples, tc.seed)

    model, tok = family.load_pretrained(cfg.model, labels, cache_dir, tc.dropout, token=hub_token)
    arch = adapter_of(model)
    pad_id = arch.pad_id(tok)

    train_set, val_set, test_set = (
        family.encode(tok, df, labels, tc.max_length) for df in (train_df, val_df, test_df)
    )
    total_steps = T.optimizer_steps(len(train_set), tc)
    method = METHODS.get(cfg.method.kind)
    model = method.prepare(model, cfg.method, MethodContext(total_steps, arch, family)).to(device)
    trainable, total = count_parameters(model)
    ready = {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "train_examples": len(train_set),
        "optimizer_steps_planned": total_steps,
    }
    if on_ready is not None:
        on_ready(ready)

    t0 = time.perf_counter()
    result = T.train(
        model,
        train_set,
        val_set,
        tc,
        pad_id,
        family=family,
        on_epoch=on_epoch,
        on_step=method.on_step(model) if method.on_step else None,
        progress=progress,
        desc="teacher",
    )
    train_seconds = time.perf_counter() - t0

    model.eval()
    probe = val_set.subset(np.arange(min(len(val_set), 64)))
    before = family.probe_logits(model, probe, tc.eval_batch_size, pad_id)
    model, merged = merge(model)
    diff = None
    if merged:
        after = family.probe_logits(model, probe, tc.eval_batch_size, pad_id)
        diff = float(np.abs(before - after).max())
        if not diff <= MERGE_TOLERANCE:
            raise RuntimeError(
                f"merged model differs from the adapter model by {diff:.2e} (> {MERGE_TOLERANCE})"
            )

    val_m = T.kept_epoch_validation(result)  # the weights kept were scored at that epoch's end
    if val_m is None:
        val_m = family.evaluate(model, val_set, tc.eval_batch_size, pad_id)
    test_m = family.evaluate(model, test_set, tc.eval_batch_size, pad_id)
    out = Path(out_dir)
    meta = {
        "stage": "teacher",
        "source_model": cfg.model,
        "method": cfg.method.kind,
        "labels": labels,
        "data_fingerprint": data.data_fingerprint,
        "split_fingerprint": data.split_fingerprint,
        "max_length": tc.max_length,
        "test": test_m,
        **family.inference_meta(train_set),
    }
    family.save(model.to("cpu"), tok, out, meta)
    return FinetuneResult(
        model_dir=str(out),
        primary_metric=family.primary_metric,
        method=cfg.method.kind,
        merged=merged,
        merge_max_abs_diff=diff,
        **ready,
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        train_seconds=train_seconds,
        validation=val_m,
        test=test_m,
        history=[h.to_dict() for h in result.history],
    )
