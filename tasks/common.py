"""What every task shares: the run context, the cache policy, atomic output folders."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import BaseModel, ConfigDict

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.locks import cpu_work
from slimflow.models.core.modelfiles import file_sha256
from slimflow.models.core.results import ModelResult
from slimflow.models.release import tracking
from slimflow.tasks.results import SafeResultStorage, persistence

R = TypeVar("R", bound=ModelResult)


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
    def of(cls, result: ModelResult) -> ModelRef:
        return cls(dir=result.model_dir, sha256=result.weights_sha256)


# Keyed on the task's inputs (config section, data fingerprint, code version) and its source text.
# `ctx` changes every run (parent run id), so it is excluded. Note the order: in Prefect 3.8,
# `(INPUTS + TASK_SOURCE) - "ctx"` would keep hashing ctx.
# Its records live in SafeResultStorage: only JSON records are ever read back (tasks/results.py).
STAGE_CACHE = ((INPUTS - "ctx") + TASK_SOURCE).configure(key_storage=SafeResultStorage())


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network/IO hiccups, never our own explained failures (bad data, bad config)."""
    try:
        state.result()
    except SlimflowError:
        return False
    except (ConnectionError, TimeoutError, OSError):
        return True
    except Exception:  # anything else is a real bug: do not retry
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


F = TypeVar("F", bound=Callable[..., Any])


def cpu_bound(fn: F) -> F:
    """The task computes hard on this host's CPU (training, export, quantization, scoring): it never
    runs while a benchmark of any pipeline on this host measures, and a benchmark waits for it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cpu_work():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# Options of every model-producing task: cached on inputs, results persisted, one retry for
# network/IO hiccups only.
MODEL_TASK = {
    "cache_policy": STAGE_CACHE,
    **persistence(),  # JSON records, never pickles (tasks/results.py)
    "retries": 1,
    "retry_delay_seconds": 10,
    "retry_condition_fn": transient_only,
}


def publish_model(result: R, final: Path, run: Any, name: str) -> R:
    """Record a stage's saved model: sha256 tag (checked after any download), the folder and the
    result JSON as MLflow artifacts. Returns the result pointing at ``final``, with its run id and
    weights' sha256 (a small record: Prefect persists it as JSON)."""
    import mlflow

    sha = file_sha256(next(final.glob("*.safetensors")))
    update = {"model_dir": str(final), "mlflow_run_id": run.info.run_id, "weights_sha256": sha}
    result = result.model_copy(update=update)
    mlflow.set_tag("slimflow.model.sha256", sha)
    mlflow.log_artifacts(str(final), f"{name}_model")
    tracking.log_json(result.model_dump(mode="json"), f"{name}_result.json")
    return result
