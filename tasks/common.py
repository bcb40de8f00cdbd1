"""What every task shares: the run context, the cache policy, atomic output folders."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import BaseModel, ConfigDict

from models.errors import SlimflowError


class StageContext(BaseModel):
    """Per-run facts a task needs but that must never enter a cache key."""

    model_config = ConfigDict(frozen=True)

    workdir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    progress: bool | None = None


class ModelRef(BaseModel):
    """A saved model handed from one stage to the next: its folder and its weights' sha256."""

    model_config = ConfigDict(frozen=True)

    dir: str
    sha256: str

    @classmethod
    def of(cls, result: dict[str, Any]) -> ModelRef:
        return cls(dir=result["model_dir"], sha256=result["weights_sha256"])


# Keyed on the task's inputs (config section, data fingerprint, code version) and its source text.
# `ctx` changes every run (parent run id), so it is excluded. Note the order: in Prefect 3.8,
# `(INPUTS + TASK_SOURCE) - "ctx"` would keep hashing ctx.
STAGE_CACHE = (INPUTS - "ctx") + TASK_SOURCE


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network/IO hiccups, never our own explained failures (bad data, bad config)."""
    try:
        state.result()
    except SlimflowError:
        return False
    except (ConnectionError, TimeoutError, OSError):
        return True
    except Exception:  # noqa: BLE001 - anything else is a real bug: do not retry
        return False
    return False


def stage_key(*parts: Any) -> str:
    """Deterministic folder name for a stage's outputs, from the same facts as its cache key."""

    def norm(p: Any) -> Any:
        return p.model_dump(mode="json") if isinstance(p, BaseModel) else p

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Write into a temporary sibling and rename on success: a crash never leaves a partial output."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Options of every model-producing task: cached on inputs, results persisted, one retry for
# network/IO hiccups only.
MODEL_TASK = {
    "cache_policy": STAGE_CACHE,
    "persist_result": True,
    "retries": 1,
    "retry_delay_seconds": 10,
    "retry_condition_fn": transient_only,
}


def publish_model(result: Any, final: Path, run: Any, name: str) -> dict[str, Any]:
    """Record a stage's saved model: sha256 tag (checked after any download), the folder and the
    result JSON as MLflow artifacts. Returns the task's (small, picklable) result record."""
    import mlflow  # noqa: PLC0415

    from models import tracking  # noqa: PLC0415

    result.model_dir = str(final)
    sha = file_sha256(next(final.glob("*.safetensors")))
    mlflow.set_tag("slimflow.model.sha256", sha)
    mlflow.log_artifacts(str(final), f"{name}_model")
    tracking.log_json(result.to_dict(), f"{name}_result.json")
    return {**result.to_dict(), "mlflow_run_id": run.info.run_id, "weights_sha256": sha}
