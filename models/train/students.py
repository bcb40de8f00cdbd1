"""How the student is made: one registered builder per kind.

``layer_drop`` keeps a listed subset of the teacher's layers (same tokenizer, weights copied
exactly, through the teacher's architecture adapter); ``pretrained`` loads a separate model with
its own tokenizer and a new task head, each side tokenizing the text itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from slimflow.models.archs import adapter_of
from slimflow.models.config.base import PluginConfig
from slimflow.models.core.plugins import Registry


class StudentConfig(PluginConfig):
    """Base of every student builder config."""

    def teacher_layers(self) -> list[int] | None:
        """The teacher layers the student's layers are copies of (in order), if it is made that way:
        layer-wise distillation matches them by default, and preflight checks them."""
        return None

    def own_model(self) -> str | None:
        """The model reference the student is loaded from, when it is not built from the teacher."""
        return None


@dataclass
class StudentContext:
    teacher: Any  # the trained teacher (on the CPU)
    teacher_tokenizer: Any
    labels: list[str]
    cache_dir: Path
    dropout: float | None  # train.dropout of the student's training
    family: Any  # slimflow.models.families.TaskFamily


@dataclass(frozen=True)
class Student:
    config: type[StudentConfig]
    build: Callable[[Any, StudentContext], tuple[Any, Any]]  # (cfg, ctx) -> (student, tokenizer)
    shares_tokenizer: bool  # same token ids as the teacher (layer-wise distillation possible)


STUDENTS: Registry[Student] = Registry("student")


class LayerDropStudent(StudentConfig):
    kind: Literal["layer_drop"] = "layer_drop"
    keep_layers: list[int] = Field(
        default_factory=lambda: [0, 2, 4],
        min_length=1,
        description="Teacher encoder layers the student keeps, in order (weights copied exactly).",
    )

    @field_validator("keep_layers")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"keep_layers must be distinct non-negative layer indices, got {v}")
        return v

    def teacher_layers(self) -> list[int] | None:
        return list(self.keep_layers)


def layer_drop(teacher: Any, keep_layers: list[int]) -> Any:
    """A deep copy of ``teacher`` keeping only ``keep_layers`` (in that order), weights unchanged."""
    import copy

    arch = adapter_of(teacher)
    n = len(arch.layers(teacher))
    bad = [i for i in keep_layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"keep_layers {bad} out of range: the teacher has layers 0..{n - 1}")
    if len(set(keep_layers)) != len(keep_layers) or not keep_layers:
        raise ValueError(f"keep_layers must be distinct and non-empty, got {keep_layers}")
    student = copy.deepcopy(teacher)
    arch.keep_layers(student, list(keep_layers))
    return student


def _build_layer_drop(cfg: LayerDropStudent, ctx: StudentContext) -> tuple[Any, Any]:
    import torch

    student = layer_drop(ctx.teacher, cfg.keep_layers)
    if ctx.dropout is not None:
        for m in student.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = ctx.dropout
    return student, ctx.teacher_tokenizer


STUDENTS.add("layer_drop", Student(LayerDropStudent, _build_layer_drop, shares_tokenizer=True))


class PretrainedStudent(StudentConfig):
    kind: Literal["pretrained"] = "pretrained"
    model: str = Field(..., description="'packaged:NAME', a folder or a hub id; uses its own tokenizer.")

    def own_model(self) -> str | None:
        return self.model


def _build_pretrained(cfg: PretrainedStudent, ctx: StudentContext) -> tuple[Any, Any]:
    return ctx.family.load_pretrained(cfg.model, ctx.labels, ctx.cache_dir, ctx.dropout)


STUDENTS.add("pretrained", Student(PretrainedStudent, _build_pretrained, shares_tokenizer=False))
