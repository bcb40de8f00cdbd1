"""Parameter-efficient fine-tuning of the teacher with peft (LoRA, AdaLoRA, IA3, prefix tuning),
plus layer freezing and full fine-tuning as baselines.

The method is a config choice mapped onto peft's own config classes; the training loop is shared
(models/training.py). Adapters are merged (``model = model.merge_and_unload()``) and the merged
model must reproduce the adapter model's logits before it is saved as safetensors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import training as T
from models.arch import DROPOUT_KEYS, count_parameters, encoder_layers
from models.config import (
    AdaLoraMethod,
    FewShotConfig,
    FinetuneConfig,
    FreezeMethod,
    FullMethod,
    IA3Method,
    LoraMethod,
    PrefixTuningMethod,
)
from models.data import LABEL, read_split, stratified_sample
from models.prepare import PreparedData
from models.sources import resolve_model

MERGE_TOLERANCE = 1e-4
META_FILE = "slimflow_model.json"


# ----------------------------------------------------------------------------------- model I/O
def load_base(
    ref: str,
    labels: list[str],
    cache_dir: str | Path,
    dropout: float | None = None,
    token: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """A sequence classifier with a new head for ``labels``, from safetensors, no remote code.
    ``token`` authenticates hub downloads (private models); it is passed on, never stored."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415

    src = resolve_model(ref, cache_dir)
    config = AutoConfig.from_pretrained(
        src,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        trust_remote_code=False,
        token=token,
    )
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, dropout)
    model = AutoModelForSequenceClassification.from_pretrained(
        src, config=config, use_safetensors=True, trust_remote_code=False, token=token
    )
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False, token=token)
    return model, tokenizer


def save_classifier(model: torch.nn.Module, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
    return out_dir


def load_classifier(path: str | Path) -> tuple[torch.nn.Module, Any]:
    """Load a saved (merged) classifier, or an unmergeable adapter folder (prefix tuning)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415

    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification  # noqa: PLC0415

        model = AutoPeftModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False
        )
    return model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)


# -------------------------------------------------------------------------------------- methods
def _peft_config(method: Any, total_steps: int) -> Any:
    import peft  # noqa: PLC0415

    # Mergeable methods: peft wraps only the head (it does so for SEQ_CLS by itself); the other
    # modules_to_save are unfrozen in place (see apply_method), because peft's IA3 unload breaks on
    # wrapped non-Linear modules such as BertPooler. Prefix tuning is never merged: peft keeps them.
    keep = list(method.modules_to_save) if isinstance(method, PrefixTuningMethod) else None
    common = {"task_type": peft.TaskType.SEQ_CLS, "modules_to_save": keep}
    if isinstance(method, LoraMethod):
        return peft.LoraConfig(
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            use_dora=method.use_dora,
            use_rslora=method.use_rslora,
            **common,
        )
    if isinstance(method, AdaLoraMethod):
        return peft.AdaLoraConfig(
            init_r=method.init_r,
            target_r=method.target_r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            total_step=max(total_steps, 2),
            tinit=int(method.tinit_fraction * total_steps),
            tfinal=int(method.tfinal_fraction * total_steps),
            **common,
        )
    if isinstance(method, IA3Method):
        return peft.IA3Config(
            target_modules=method.target_modules, feedforward_modules=method.feedforward_modules, **common
        )
    if isinstance(method, PrefixTuningMethod):
        return peft.PrefixTuningConfig(
            num_virtual_tokens=method.num_virtual_tokens, prefix_projection=method.prefix_projection, **common
        )
    raise TypeError(f"not a peft method: {type(method).__name__}")


def apply_method(model: torch.nn.Module, method: Any, total_steps: int) -> torch.nn.Module:
    """Return the model prepared for training with ``method`` (peft wrapper, frozen layers, or as is)."""
    if isinstance(method, FullMethod):
        return model
    if isinstance(method, FreezeMethod):
        layers = encoder_layers(model)
        if method.train_top_layers > len(layers):
            raise ValueError(
                f"train_top_layers={method.train_top_layers} but the model has {len(layers)} layers"
            )
        for p in model.parameters():
            p.requires_grad = False
        keep = list(layers)[len(layers) - method.train_top_layers :] if method.train_top_layers else []
        for module in keep:
            for p in module.parameters():
                p.requires_grad = True
        for name, module in model.named_modules():  # the head (and pooler, if any) always train
            if name.rsplit(".", 1)[-1] in ("classifier", "pooler"):
                for p in module.parameters():
                    p.requires_grad = True
        return model
    import peft  # noqa: PLC0415

    wrapped = peft.get_peft_model(model, _peft_config(method, total_steps))
    if not isinstance(method, PrefixTuningMethod):
        _unfreeze(wrapped, set(method.modules_to_save))
    return wrapped


def _unfreeze(model: torch.nn.Module, names: set[str]) -> None:
    found = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in names and "modules_to_save" not in name and "original_module" not in name:
            found.add(leaf)
            for p in module.parameters():
                p.requires_grad = True
    missing = names - found - {"classifier", "score"}  # the head is wrapped by peft itself
    if missing:
        raise ValueError(f"modules_to_save: no module named {sorted(missing)} in {type(model).__name__}")


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
    parts = [g.sample(n=min(fs.k, len(g)), random_state=fs.seed) for _, g in frame.groupby(LABEL, sort=True)]
    import pandas as pd  # noqa: PLC0415

    return pd.concat(parts).sort_index()


# ---------------------------------------------------------------------------------------- stage
@dataclass
class FinetuneResult:
    model_dir: str
    method: str
    merged: bool
    merge_max_abs_diff: float | None
    trainable_params: int
    total_params: int
    trainable_share: float
    train_examples: int
    best_epoch: int
    stopped_early: bool
    train_seconds: float
    validation: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    many processes (``models.distributed``); ``on_epoch``/``on_ready`` then see the figures after."""
    tc = cfg.train
    if tc.data_parallel > 1 and T.world()[1] == 1:
        from models.distributed import launch_finetune  # noqa: PLC0415

        return launch_finetune(
            cfg, data, out_dir, cache_dir, hub_token=hub_token, on_epoch=on_epoch, on_ready=on_ready
        )
    T.set_seed(tc.seed)
    device = T.device_for()
    labels = data.labels
    train_df, val_df, test_df = (read_split(data.path(s)) for s in ("train", "validation", "test"))
    if cfg.few_shot is not None:
        train_df = few_shot_rows(train_df, cfg.few_shot)
    if tc.max_train_examples is not None:
        train_df = stratified_sample(train_df, tc.max_train_examples, tc.seed)

    model, tok = load_base(cfg.model, labels, cache_dir, tc.dropout, token=hub_token)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    train_set, val_set, test_set = (
        T.encode_frame(tok, df, labels, tc.max_length) for df in (train_df, val_df, test_df)
    )
    total_steps = T.optimizer_steps(len(train_set), tc)
    model = apply_method(model, cfg.method, total_steps).to(device)
    trainable, total = count_parameters(model)
    if on_ready is not None:
        on_ready(
            {
                "trainable_params": trainable,
                "total_params": total,
                "trainable_share": trainable / total,
                "train_examples": len(train_set),
                "optimizer_steps_planned": total_steps,
            }
        )

    on_step = None
    if isinstance(cfg.method, AdaLoraMethod):
        inner = model.base_model

        def on_step(step: int) -> None:  # AdaLoRA re-allocates ranks after each optimizer step
            inner.update_and_allocate(step)

    t0 = time.perf_counter()
    result = T.train(
        model,
        train_set,
        val_set,
        tc,
        pad_id,
        on_epoch=on_epoch,
        on_step=on_step,
        progress=progress,
        desc="teacher",
    )
    train_seconds = time.perf_counter() - t0

    model.eval()
    probe = val_set.subset(np.arange(min(len(val_set), 64)))
    before = T.predict_logits(model, probe, tc.eval_batch_size, pad_id)
    model, merged = merge(model)
    diff = None
    if merged:
        after = T.predict_logits(model, probe, tc.eval_batch_size, pad_id)
        diff = float(np.abs(before - after).max())
        if not diff <= MERGE_TOLERANCE:
            raise RuntimeError(
                f"merged model differs from the adapter model by {diff:.2e} (> {MERGE_TOLERANCE})"
            )

    val_m = T.evaluate(model, val_set, tc.eval_batch_size, pad_id)
    test_m = T.evaluate(model, test_set, tc.eval_batch_size, pad_id)
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
    }
    save_classifier(model.to("cpu"), tok, out, meta)
    return FinetuneResult(
        model_dir=str(out),
        method=cfg.method.kind,
        merged=merged,
        merge_max_abs_diff=diff,
        trainable_params=trainable,
        total_params=total,
        trainable_share=trainable / total,
        train_examples=len(train_set),
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        train_seconds=train_seconds,
        validation=val_m,
        test=test_m,
        history=[asdict(h) for h in result.history],
    )
