"""Typed stage results: what a stage produced, the figures it declares, the paths it hands on.

Flows and the run summary read these fields and ``metrics()``; nobody digs into dicts by key.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StageResult(BaseModel):
    """Base of every stage result. ``mlflow_run_id`` is the stage's own MLflow run, set by its task."""

    model_config = ConfigDict(extra="forbid")

    mlflow_run_id: str | None = None

    # Names of nested dict fields whose numbers are figures too (flattened as ``field_key``).
    nested_metrics: ClassVar[tuple[str, ...]] = ()
    # Fields holding paths that must still exist for a cached result to be reused.
    outputs: ClassVar[tuple[str, ...]] = ()

    def metrics(self) -> dict[str, float]:
        """Every number the stage reports: top-level numeric fields and the declared nested ones."""
        out: dict[str, float] = {}
        for k, v in self.model_dump().items():
            if isinstance(v, bool):
                continue
            if isinstance(v, int | float):
                out[k] = float(v)
            elif isinstance(v, dict) and k in self.nested_metrics:
                out.update(_numbers(v, f"{k}_"))
        return out

    def output_paths(self) -> dict[str, str]:
        return {k: _dig(self, k) for k in self.outputs}


class ModelResult(StageResult):
    """A stage that saved a model: its folder, its weights' sha256 and its evaluation."""

    model_dir: str
    weights_sha256: str = ""  # set when the task publishes the folder
    primary_metric: str = "accuracy"
    validation: dict[str, float] = {}
    test: dict[str, float] = {}

    outputs: ClassVar[tuple[str, ...]] = ("model_dir",)

    @property
    def test_score(self) -> float:
        """The family's primary metric on the test split."""
        return float(self.test[self.primary_metric])


def _numbers(obj: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v)
        for k, v in obj.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj
