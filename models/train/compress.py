"""The compression stage: apply the configured steps to the student (or the teacher), then an
optional short recovery by distillation from the teacher; report what each change bought."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimflow.models.archs import adapter_of
from slimflow.models.core.modelfiles import weights_bytes
from slimflow.models.core.results import ModelResult
from slimflow.models.data.prepare import PreparedData
from slimflow.models.data.tables import stratified_sample
from slimflow.models.families import family_of
from slimflow.models.train import loop as T
from slimflow.models.train.config import CompressConfig, TrainConfig
from slimflow.models.train.distill import kd_train, load_frames, teacher_targets
from slimflow.models.train.steps import StepContext, apply_step

log = logging.getLogger(__name__)


def parameter_counts(model: Any) -> dict[str, int]:
    """Total parameters and the same without embeddings (which pruning does not touch)."""
    marker = adapter_of(model).embeddings_marker
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if marker in f".{n}")
    return {"params": total, "params_no_embeddings": total - emb}


def _train_texts(data: PreparedData) -> list[str] | None:
    """Every training text (not the recovery's subsample: a vocabulary trimmed to a sample would
    drop tokens the training data uses)."""
    from slimflow.models.data.tables import read_split

    train = read_split(data.path("train"))
    return [str(t) for t in train["text"]] if "text" in train.columns else None


def _trim_effect(
    family: Any, model: Any, old_tok: Any, new_tok: Any, test: Any, test_set: Any, before: Any,
    batch_size: int, pad: int,
) -> dict[str, float]:  # fmt: skip
    """On the test split: the share of texts the trimmed vocabulary covers (same tokens, so the same
    logits), the share whose predicted class is unchanged, the largest logit change on covered texts."""
    import numpy as np

    after = np.asarray(family.probe_logits(model, test_set, batch_size, pad))
    before = np.asarray(before)
    texts = [str(t) for t in test["text"]]
    old_ids = [e.ids for e in old_tok.backend_tokenizer.encode_batch(texts)]
    new_ids = [e.ids for e in new_tok.backend_tokenizer.encode_batch(texts)]
    vocab_old = {i: t for t, i in old_tok.get_vocab().items()}
    vocab_new = {i: t for t, i in new_tok.get_vocab().items()}
    covered = np.array(
        [
            [vocab_old[i] for i in a] == [vocab_new[i] for i in b]
            for a, b in zip(old_ids, new_ids, strict=True)
        ]
    )
    diff = np.abs(after - before).max(axis=-1)
    return {
        "test_texts_covered": float(covered.mean()) if len(covered) else 1.0,
        "test_predictions_unchanged": float(np.mean(after.argmax(-1) == before.argmax(-1)))
        if len(after)
        else 1.0,
        "test_max_logit_change_covered": float(diff[covered].max()) if covered.any() else 0.0,
    }


class CompressResult(ModelResult):
    source_dir: str
    steps: list[dict[str, Any]]
    before: dict[str, int]
    after: dict[str, int]
    file_bytes_before: int
    file_bytes_after: int
    test_before: dict[str, float]
    test_pruned: dict[str, float]
    recovery_seconds: float
    recovery_epoch: int  # epoch kept by recovery; 0 = the pruned weights, -1 = no recovery
    history: list[dict[str, float]] = []

    nested_metrics = ("test", "validation", "test_before", "test_pruned", "before", "after")


def compress(
    cfg: CompressConfig,
    data: PreparedData,
    source_dir: str | Path,
    teacher_dir: str | Path,
    teacher_sha256: str,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    on_epoch: Callable[[T.EpochRecord], None] | None = None,
    progress: bool | None = None,
) -> CompressResult:
    """``test`` of the result is after recovery (equal to ``test_pruned`` without recovery)."""
    tc: TrainConfig = cfg.recovery.train if cfg.recovery else TrainConfig()
    # the teacher is loaded (and its logits computed or read from the cache) only for recovery
    targets, teacher = None, None
    if cfg.recovery:
        targets, teacher, _ = teacher_targets(data, teacher_dir, teacher_sha256, tc, cache_dir)
        if targets.logits is not None:  # cached soft targets: the teacher is not needed any more
            teacher = None
    frames = targets.frames if targets else load_frames(data, tc)
    family = family_of(source_dir)
    model, tok = family.load_trained(source_dir)
    model = model.to(T.device_for())
    arch = adapter_of(model)
    pad = arch.pad_id(tok)
    max_length = tc.max_length
    test_set = family.encode(tok, frames["test"], data.labels, max_length)
    before = parameter_counts(model)
    test_before = family.evaluate(model, test_set, tc.eval_batch_size, pad)
    file_before = weights_bytes(source_dir)

    calib_df = stratified_sample(frames["train"], cfg.calibration_examples, tc.seed)
    calibration = family.encode(tok, calib_df, data.labels, max_length)
    ctx = StepContext(
        calibration, pad, tc.eval_batch_size, family=family, arch=arch,
        skip_unsupported=cfg.on_unsupported == "skip", tokenizer=tok,
        texts=_train_texts(data),
    )  # fmt: skip
    reports = []
    for step in cfg.steps:
        before_logits = None
        if type(step).changes_vocabulary:  # predictions before, to show what the new vocabulary changed
            before_logits = family.probe_logits(model, test_set, tc.eval_batch_size, pad)
        rep = apply_step(model, step, ctx)
        if rep.figures.get("skipped"):
            log.warning("compress: %s", "; ".join(rep.notes))
        if rep.tokenizer is not None:  # new token ids: every encoded split is encoded again
            old_tok, tok = tok, rep.tokenizer
            pad = arch.pad_id(tok)
            test_set = family.encode(tok, frames["test"], data.labels, max_length)
            ctx.calibration = family.encode(tok, calib_df, data.labels, max_length)
            ctx.tokenizer, ctx.pad_id = tok, pad
            if before_logits is not None:
                effect = _trim_effect(family, model, old_tok, tok, frames["test"], test_set, before_logits,
                                      tc.eval_batch_size, pad)  # fmt: skip
                rep.figures.update(effect)
        reports.append({"kind": rep.kind, **rep.figures, "notes": rep.notes})
    test_pruned = family.evaluate(model, test_set, tc.eval_batch_size, pad)

    history: list[dict[str, float]] = []
    seconds, recovery_epoch = 0.0, -1
    if cfg.recovery is not None and targets is not None:
        t0 = time.perf_counter()
        res, val_m, test_m = kd_train(
            family,
            model,
            tok,
            targets,
            data.labels,
            tc,
            cfg.recovery.temperature,
            cfg.recovery.alpha,
            on_epoch=on_epoch,
            progress=progress,
            desc="recovery",
            keep_initial=True,
            teacher=teacher,
        )
        seconds = time.perf_counter() - t0
        history = [h.to_dict() for h in res.history]
        recovery_epoch = res.best_epoch  # 0: recovery did not beat the pruned weights on validation
    else:
        val_set = family.encode(tok, frames["validation"], data.labels, max_length)
        val_m, test_m = family.evaluate(model, val_set, tc.eval_batch_size, pad), test_pruned
    out = Path(out_dir)
    meta = {
        "stage": "compressed",
        "source_dir": str(source_dir),
        "steps": reports,
        "labels": data.labels,
        "max_length": max_length,
        "test": test_m,
        **family.inference_meta(family.encode(tok, frames["train"], data.labels, max_length)),
    }
    family.save(model.to("cpu"), tok, out, meta)
    return CompressResult(
        model_dir=str(out),
        primary_metric=family.primary_metric,
        source_dir=str(source_dir),
        steps=reports,
        before=before,
        after=parameter_counts(model),
        file_bytes_before=file_before,
        file_bytes_after=weights_bytes(out),
        test_before=test_before,
        test_pruned=test_pruned,
        test=test_m,
        validation=val_m,
        recovery_seconds=seconds,
        recovery_epoch=recovery_epoch,
        history=history,
    )
