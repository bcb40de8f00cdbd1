"""Knowledge distillation: build a smaller student and train it on the teacher's soft targets.

Students: ``layer_drop`` keeps a listed subset of the teacher's encoder layers (same tokenizer,
weights copied exactly); ``pretrained`` is a separate model with its own tokenizer, each side
tokenizing the text itself. The teacher's logits over the training rows are computed once and
cached (keyed on the teacher weights' sha256 and the split fingerprint), so student epochs never
re-run the teacher.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from slimflow.models.archs import adapter_of
from slimflow.models.core.modelfiles import read_meta
from slimflow.models.core.results import ModelResult
from slimflow.models.data.prepare import PreparedData
from slimflow.models.data.tables import read_split, stratified_sample
from slimflow.models.data.unlabeled import read_texts, texts_fingerprint, unlabeled_frame
from slimflow.models.families import TaskFamily, family_of, get_family
from slimflow.models.train import loop as T
from slimflow.models.train.config import DistillConfig, TrainConfig, UnlabeledConfig
from slimflow.models.train.distributed import run_data_parallel
from slimflow.models.train.students import STUDENTS, StudentContext


# ---------------------------------------------------------------------------------------- losses
def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real (non-padding) tokens; ``mask`` is (batch, seq)."""
    m = mask.unsqueeze(-1).to(a.dtype)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp_min(1.0)


def default_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Evenly spaced teacher layers, ending at the last one (e.g. 3 of 6 -> [1, 3, 5])."""
    step = n_teacher / n_student
    return [min(n_teacher - 1, round(step * (i + 1)) - 1) for i in range(n_student)]


class WithProjections(torch.nn.Module):
    """The student plus learned projections of its hidden states to the teacher's width.

    Training sees the projections as parameters; only ``student`` is saved afterwards.
    """

    def __init__(self, student: torch.nn.Module, n_layers: int, s_width: int, t_width: int):
        super().__init__()
        self.student = student
        self.proj = torch.nn.ModuleList(
            [
                torch.nn.Identity() if s_width == t_width else torch.nn.Linear(s_width, t_width)
                for _ in range(n_layers)
            ]
        )

    def forward(self, **kwargs: Any) -> Any:
        return self.student(**kwargs)


def teacher_logits_key(teacher_sha256: str, split_fingerprint: str, max_length: int) -> str:
    return hashlib.sha256(f"{teacher_sha256}|{split_fingerprint}|{max_length}".encode()).hexdigest()[:16]


def logits_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"teacher-logits-{key}.npy"


def cached_teacher_logits(compute: Any, cache_dir: Path, key: str) -> tuple[np.ndarray, bool]:
    """Load logits saved under ``key`` or call ``compute()`` once and save them. Returns (logits, hit)."""
    path = logits_path(cache_dir, key)
    if path.is_file():
        return np.load(path, allow_pickle=False), True
    logits = np.asarray(compute(), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")  # per process: ranks may race here
    np.save(tmp, logits, allow_pickle=False)
    tmp.replace(path)
    return logits, False


# --------------------------------------------------------------------------------------- stage
class DistillResult(ModelResult):
    student: str
    teacher_logits_cached: bool
    teacher_logits_path: str
    student_params: int
    teacher_params: int
    best_epoch: int
    stopped_early: bool
    train_seconds: float
    teacher_test: dict[str, float]
    history: list[dict[str, float]]
    unlabeled: dict[str, int] = {}  # extra texts: rows read, dropped (blank, in a split, repeated), used

    nested_metrics = ("test", "validation", "teacher_test", "unlabeled")

    @property
    def retention(self) -> float:
        """Student test score as a share of the teacher's."""
        return self.test_score / max(float(self.teacher_test[self.primary_metric]), 1e-9)


@dataclass
class TeacherTargets:
    """The teacher's soft targets for the training rows of ``frames``."""

    frames: dict[str, Any]  # split -> DataFrame (train possibly subsampled, plus unlabeled rows)
    logits: np.ndarray | None  # teacher logits for frames["train"], row-aligned; None: computed online
    cached: bool
    logits_path: str
    unlabeled: dict[str, int] = field(default_factory=dict)  # rows read / dropped / used


def load_frames(data: PreparedData, tc: TrainConfig) -> dict[str, Any]:
    """The three splits; the training rows subsampled when ``tc.max_train_examples`` says so."""
    frames = {s: read_split(data.path(s)) for s in ("train", "validation", "test")}
    if tc.max_train_examples is not None:
        frames["train"] = stratified_sample(frames["train"], tc.max_train_examples, tc.seed)
    return frames


def teacher_targets(
    data: PreparedData,
    teacher_dir: str | Path,
    teacher_sha256: str,
    tc: TrainConfig,
    cache_dir: str | Path,
    unlabeled: UnlabeledConfig | None = None,
) -> tuple[TeacherTargets, torch.nn.Module, Any]:
    """Teacher logits over the training rows (and ``unlabeled`` texts, appended to them with no
    label), computed once per (teacher, data, subsample, extra texts) and cached.

    Returns the targets and the loaded teacher (on the CPU) with its tokenizer.
    """
    device = T.device_for()
    frames = load_frames(data, tc)
    extra_counts: dict[str, int] = {}
    extra_key = ""
    if unlabeled is not None:
        texts = read_texts(unlabeled.source, unlabeled.text_column, "distill.unlabeled")
        extra, extra_counts = unlabeled_frame(texts, frames, unlabeled.max_rows, tc.seed)
        frames["train"] = pd.concat([frames["train"], extra], ignore_index=True)
        extra_key = f"|unlabeled:{texts_fingerprint(extra)}"
    family = family_of(teacher_dir)
    teacher, t_tok = family.load_trained(teacher_dir)
    t_len = int(read_meta(teacher_dir).get("max_length", tc.max_length))
    amp = T.autocast_dtype(device, tc.mixed_precision)  # the stage's training precision
    key = teacher_logits_key(
        teacher_sha256, f"{data.split_fingerprint}|{len(frames['train'])}|{tc.seed}|{amp}{extra_key}", t_len
    )
    t_train = family.encode(t_tok, frames["train"], data.labels, t_len)
    if family.online_soft_targets:  # per-token targets: the teacher runs on every student batch
        if unlabeled is not None:
            raise ValueError(
                f"distill.unlabeled: the {family.name} family distils online, without extra texts"
            )
        return TeacherTargets(frames, None, False, ""), teacher, t_tok
    teacher = teacher.to(device)
    pad = adapter_of(teacher).pad_id(t_tok)
    logits, hit = cached_teacher_logits(
        lambda: T.predict_logits(teacher, t_train, tc.eval_batch_size, pad, autocast_dtype=amp),
        Path(cache_dir),
        key,
    )
    path = str(logits_path(Path(cache_dir), key))
    return TeacherTargets(frames, logits, hit, path, extra_counts), teacher.to("cpu"), t_tok


def teacher_test_metrics(
    teacher: torch.nn.Module, t_tok: Any, teacher_dir: str | Path, data: PreparedData, tc: TrainConfig
) -> dict[str, float]:
    """The teacher's test figures as its own stage recorded them; evaluated only if they are missing."""
    saved = read_meta(teacher_dir).get("test")
    if saved:
        return dict(saved)
    family = family_of(teacher_dir)
    t_len = int(read_meta(teacher_dir).get("max_length", tc.max_length))
    t_test = family.encode(t_tok, read_split(data.path("test")), data.labels, t_len)
    pad = adapter_of(teacher).pad_id(t_tok)
    return family.evaluate(teacher.to(T.device_for()), t_test, tc.eval_batch_size, pad)


@dataclass
class Intermediate:
    """Layer-wise distillation settings, resolved against the actual models."""

    teacher: torch.nn.Module
    layer_map: list[int]
    hidden_weight: float
    attention_weight: float


def resolve_intermediate(
    cfg: DistillConfig, teacher: torch.nn.Module, t_tok: Any, student: torch.nn.Module, s_tok: Any
) -> Intermediate | None:
    """Check that layer-wise distillation is possible here; None when it is switched off."""
    if cfg.hidden_weight == 0 and cfg.attention_weight == 0:
        return None
    if t_tok.get_vocab() != s_tok.get_vocab():
        raise ValueError(
            "hidden/attention distillation compares token positions, so teacher and student must share a "
            "tokenizer; set distill.hidden_weight and distill.attention_weight to 0 for this student"
        )
    n_s, n_t = len(adapter_of(student).layers(student)), len(adapter_of(teacher).layers(teacher))
    if cfg.layer_map is not None:
        layer_map = list(cfg.layer_map)
    else:
        layer_map = cfg.student.teacher_layers() or default_layer_map(n_s, n_t)
    if len(layer_map) != n_s or any(not 0 <= t < n_t for t in layer_map):
        raise ValueError(f"distill.layer_map {layer_map}: need {n_s} teacher layer indices in 0..{n_t - 1}")
    if cfg.attention_weight > 0 and student.config.num_attention_heads != teacher.config.num_attention_heads:
        raise ValueError("attention distillation needs equal head counts in student and teacher")
    for m in (teacher, student):  # attention maps come from the eager implementation
        m.config._attn_implementation = "eager"
    return Intermediate(teacher.eval(), layer_map, cfg.hidden_weight, cfg.attention_weight)


def kd_loss_layers(
    family: TaskFamily,
    model: WithProjections,
    inter: Intermediate,
    inputs: T.Batch,
    labels: torch.Tensor,
    soft: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """kd_loss plus hidden-state and attention-map MSE over the mapped layers (padding excluded)."""
    want_attn = inter.attention_weight > 0
    s_out = model.student(**inputs, output_hidden_states=True, output_attentions=want_attn)
    with torch.no_grad():
        t_out = inter.teacher(**inputs, output_hidden_states=True, output_attentions=want_attn)
    if soft is None:  # the family's targets are computed online: this batch's teacher logits
        soft = t_out.logits
    loss = family.kd_loss(s_out.logits, soft.to(s_out.logits.device), labels, temperature, alpha)
    mask = inputs["attention_mask"]
    keys = mask[:, None, None, :].to(s_out.logits.dtype)
    for i, t_layer in enumerate(inter.layer_map):
        if inter.hidden_weight > 0:  # hidden_states[0] is the embedding output
            h = model.proj[i](s_out.hidden_states[i + 1])
            loss = loss + inter.hidden_weight * masked_mse(h, t_out.hidden_states[t_layer + 1], mask)
        if want_attn:
            diff = (s_out.attentions[i] - t_out.attentions[t_layer]) ** 2 * keys
            loss = loss + inter.attention_weight * diff.sum() / keys.expand_as(diff).sum().clamp_min(1.0)
    return loss


def kd_train(
    family: TaskFamily,
    student: torch.nn.Module,
    tok: Any,
    targets: TeacherTargets,
    labels: list[str],
    tc: TrainConfig,
    temperature: float,
    alpha: float,
    *,
    on_epoch: Callable[[T.EpochRecord], None] | None = None,
    progress: bool | None = None,
    desc: str = "student",
    intermediate: Intermediate | None = None,
    keep_initial: bool = False,
    teacher: torch.nn.Module | None = None,
) -> tuple[T.TrainResult, dict[str, float], dict[str, float]]:
    """Train ``student`` on soft targets + hard labels; returns (result, validation, test) metrics.

    With ``intermediate``, the teacher also runs on each batch (its hidden states and attention
    maps are too large to cache) and mapped layers are matched by MSE. Targets without cached
    logits (``targets.logits`` None: per-token targets of a causal LM) come from ``teacher`` run on
    each batch, which then must read the student's tokens.
    """
    if targets.logits is None and intermediate is None and teacher is None:
        raise ValueError("soft targets computed online need the teacher")
    T.set_seed(tc.seed)
    device = T.device_for()
    student = student.to(device)
    for p in student.parameters():
        p.requires_grad = True
    trained: torch.nn.Module = student
    if intermediate is not None:
        intermediate.teacher.to(device).eval()
        s_width, t_width = student.config.hidden_size, intermediate.teacher.config.hidden_size
        trained = WithProjections(student, len(intermediate.layer_map), s_width, t_width).to(device)
    pad = adapter_of(student).pad_id(tok)
    train_set, val_set, test_set = (
        family.encode(tok, targets.frames[s], labels, tc.max_length) for s in ("train", "validation", "test")
    )
    soft = torch.from_numpy(targets.logits) if targets.logits is not None else None
    if soft is None and intermediate is None:
        teacher = teacher.to(device).eval()

    def loss_fn(model: torch.nn.Module, inputs: T.Batch, y: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        inputs, y = family.kd_batch(inputs, y)
        if intermediate is None:
            out = model(**inputs).logits
            if soft is not None:
                return family.kd_loss(out, soft[idx].to(out.device), y, temperature, alpha)
            with torch.no_grad():
                t_out = teacher(**inputs).logits
            return family.kd_loss(out, t_out, y, temperature, alpha)
        batch_soft = soft[idx] if soft is not None else None
        return kd_loss_layers(family, model, intermediate, inputs, y, batch_soft, temperature, alpha)

    res = T.train(
        trained,
        train_set,
        val_set,
        tc,
        pad,
        family=family,
        loss_fn=loss_fn,
        on_epoch=on_epoch,
        progress=progress,
        desc=desc,
        keep_initial=keep_initial,
    )
    val_m = T.kept_epoch_validation(res)  # the restored weights were scored at that epoch's end
    if val_m is None:
        val_m = family.evaluate(student, val_set, tc.eval_batch_size, pad)
    return res, val_m, family.evaluate(student, test_set, tc.eval_batch_size, pad)


def distill(
    cfg: DistillConfig,
    data: PreparedData,
    teacher_dir: str | Path,
    teacher_sha256: str,
    out_dir: str | Path,
    cache_dir: str | Path,
    *,
    on_epoch: Callable[[T.EpochRecord], None] | None = None,
    progress: bool | None = None,
) -> DistillResult:
    """Train a student on the teacher's soft targets (cached) mixed with the hard labels.
    ``train.data_parallel > 1`` runs it in that many processes, as ``finetune`` does."""
    tc = cfg.train
    if tc.data_parallel > 1 and T.world()[1] == 1:
        args = {"cfg": cfg.model_dump(mode="json"), "data": data.model_dump(mode="json"),
                "teacher_dir": str(teacher_dir), "teacher_sha256": teacher_sha256,
                "out_dir": str(out_dir), "cache_dir": str(cache_dir)}  # fmt: skip
        return run_data_parallel("distill", args, tc.data_parallel, DistillResult, on_epoch=on_epoch)
    family = get_family(data.task)
    T.set_seed(tc.seed)
    targets, teacher, t_tok = teacher_targets(data, teacher_dir, teacher_sha256, tc, cache_dir, cfg.unlabeled)
    teacher_test = teacher_test_metrics(teacher, t_tok, teacher_dir, data, tc)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    build = STUDENTS.get(cfg.student.kind)
    ctx = StudentContext(teacher, t_tok, data.labels, Path(cache_dir), tc.dropout, family)
    student, s_tok = build.build(cfg.student, ctx)
    inter = resolve_intermediate(cfg, teacher, t_tok, student, s_tok)
    online = targets.logits is None
    if online and t_tok.get_vocab() != s_tok.get_vocab():
        raise ValueError(
            f"task {data.task!r} distils token by token, so the student must read the teacher's "
            f"tokens: student kind {cfg.student.kind!r} brought another tokenizer (use layer_drop, or a "
            "pretrained student of the same tokenizer family)"
        )
    if not online:
        del teacher
        teacher = None
    t0 = time.perf_counter()
    res, val_m, test_m = kd_train(
        family,
        student,
        s_tok,
        targets,
        data.labels,
        tc,
        cfg.temperature,
        cfg.alpha,
        on_epoch=on_epoch,
        progress=progress,
        intermediate=inter,
        teacher=teacher,
    )
    seconds = time.perf_counter() - t0
    meta = {
        "stage": "student",
        "student": cfg.student.model_dump(),
        "teacher_dir": str(teacher_dir),
        "teacher_sha256": teacher_sha256,
        "labels": data.labels,
        "max_length": tc.max_length,
        "test": test_m,
        **family.inference_meta(family.encode(s_tok, targets.frames["train"], data.labels, tc.max_length)),
    }
    family.save(student.to("cpu"), s_tok, Path(out_dir), meta)
    return DistillResult(
        model_dir=str(out_dir),
        primary_metric=family.primary_metric,
        student=cfg.student.kind,
        teacher_logits_cached=targets.cached,
        teacher_logits_path=targets.logits_path,
        student_params=sum(p.numel() for p in student.parameters()),
        teacher_params=teacher_params,
        best_epoch=res.best_epoch,
        stopped_early=res.stopped_early,
        train_seconds=seconds,
        validation=val_m,
        test=test_m,
        teacher_test=teacher_test,
        history=[h.to_dict() for h in res.history],
        unlabeled=targets.unlabeled,
    )
