"""The pipeline config: the sections of every stage, composed, plus the rules that span sections.

Each section lives beside the code it configures (``data/config.py``, ``train/config.py``,
``optimize/config.py``, ``release/config.py``); this module only composes them, checks what
involves several sections, and loads YAML files into it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from slimflow.models.config.base import Strict
from slimflow.models.config.loading import read_config_file, validate
from slimflow.models.core.names import SAFE_NAME
from slimflow.models.data.config import DataConfig
from slimflow.models.families import DEFAULT_TASK, FAMILIES, get_family
from slimflow.models.optimize.config import OptimizeConfig
from slimflow.models.release.config import PromoteConfig, TrackingConfig
from slimflow.models.train.config import CompressConfig, DistillConfig, FinetuneConfig


class PipelineConfig(Strict):
    name: str = Field("slimflow", pattern=SAFE_NAME, description="Pipeline name (letters, digits, . _ -).")
    workdir: str = Field(
        ".slimflow", min_length=1, description="Folder for data, models, cache and the default MLflow store."
    )
    task: str = Field(
        DEFAULT_TASK,
        description="Task family (slimflow/models/families/): what the models are trained for.",
    )
    data: DataConfig = DataConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    distill: DistillConfig | None = Field(None, description="Distil the teacher into a student; None = skip.")
    compress: CompressConfig | None = Field(
        None, description="Prune the student (or the teacher when there is none); None = skip."
    )
    optimize: OptimizeConfig | None = Field(
        None, description="Export, quantize and benchmark candidates, pick the best; None = skip."
    )
    promote: PromoteConfig | None = Field(
        None, description="Register candidates that pass the gates and promote the best; None = skip."
    )
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown task family {v!r}; known: {', '.join(FAMILIES)}")
        return v

    @model_validator(mode="after")
    def _metrics_of_the_family(self) -> PipelineConfig:
        """A stage's best-epoch metric must be one the task family computes."""
        if self.task not in FAMILIES:
            return self
        family = get_family(self.task)
        for section in ("distill", "compress", "optimize", "promote"):
            if getattr(self, section) is not None and section not in family.stages:
                raise ValueError(
                    f"task {self.task!r} does not support the {section}: section yet (it supports: "
                    f"{', '.join(['finetune', *family.stages])}); set {section}: null"
                )
        for key, what in (("cascades", "a cascade"), ("early_exits", "an early exit")):
            if family.generative and self.optimize is not None and getattr(self.optimize, key):
                raise ValueError(
                    f"optimize.{key}: task {self.task!r} generates text; {what} routes on the "
                    f"confidence of a classifier (set {key}: [])"
                )
        if family.generative and self.optimize is not None:
            gen = self.optimize.generation
            if self.optimize.rank_batch_size not in gen.batch_sizes:
                raise ValueError(
                    f"optimize.rank_batch_size {self.optimize.rank_batch_size} is not among "
                    f"optimize.generation.batch_sizes {gen.batch_sizes} (task {self.task!r} ranks "
                    "candidates by generation speed)"
                )
        stages = {"finetune": self.finetune, "distill": self.distill, "compress": self.compress}
        for name, stage in stages.items():
            train = getattr(stage, "train", None) if stage is not None else None
            metric = getattr(train, "metric", None)
            if metric is not None and metric not in family.metrics:
                raise ValueError(
                    f"{name}.train.metric {metric!r} is not computed for task {self.task!r}; "
                    f"choose one of {list(family.metrics)} (or leave it out: {family.primary_metric})"
                )
        return self

    @model_validator(mode="after")
    def _promote_needs_candidates(self) -> PipelineConfig:
        if self.promote is not None:
            if self.optimize is None:
                raise ValueError("promote needs an optimize: section (the candidates the gates judge)")
            gates = self.promote.gates
            if gates.target is not None and gates.target not in self.optimize.targets:
                raise ValueError(f"promote.gates.target {gates.target!r} is not in optimize.targets")
            family = get_family(self.task)
            generative_only = gates.generative_gates()
            if generative_only and not family.generative:
                raise ValueError(
                    f"promote.gates {', '.join(generative_only)}: judged on generated text only; task "
                    f"{self.task!r} does not generate (set them to null)"
                )
            measured, where = (
                (self.optimize.generation.batch_sizes, "optimize.generation.batch_sizes")
                if family.generative
                else (self.optimize.bench.batch_sizes, "optimize.bench.batch_sizes")
            )
            speed = [
                g
                for g in ("max_p95_ms", "min_decode_tokens_per_s", "max_ttft_ms")
                if getattr(gates, g) is not None
            ]
            if speed and gates.latency_batch_size not in measured:
                raise ValueError(
                    f"promote.gates.latency_batch_size {gates.latency_batch_size} is not measured "
                    f"({where}: {measured}), so {', '.join(speed)} could not be judged"
                )
        return self

    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file (or the defaults when ``path`` is None), apply overrides, validate."""
    raw, origin = read_config_file(path, overrides)
    return validate(PipelineConfig, raw, origin)
