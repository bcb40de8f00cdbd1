"""Lock files for work that processes on one machine must not do at once (first-time creation of a
sqlite MLflow store, registry writes against it, benchmarks beside heavy work)."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import SlimflowError


class LockTimeout(SlimflowError):
    """Another process held the lock longer than allowed."""


@contextmanager
def file_lock(path: Path, timeout_s: float, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or ``shared``) ``flock`` on ``path`` (created if missing); released on
    exit or crash. Raises ``LockTimeout`` after ``timeout_s``."""
    with try_file_lock(path, timeout_s, shared) as held:
        if not held:
            raise LockTimeout(f"lock {path} still held by another process after {timeout_s:.0f} s")
        yield


@contextmanager
def try_file_lock(path: Path, timeout_s: float, shared: bool = False) -> Iterator[bool]:
    """Like ``file_lock`` but yields whether the lock was taken within ``timeout_s`` instead of
    raising: for work that should rather go ahead unlocked than not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with path.open("a") as fh:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fh, mode | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout_s:
                    held = False
                    break
                time.sleep(0.1)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------ one machine, many pipelines
# Timing a model while something else computes on the same cores gives figures that say nothing
# (seen: a PyTorch p50 of 534 ms instead of 10-17 ms beside another pipeline). Two host-wide locks
# (one per user, in the temp folder) keep benchmarks alone:
#   - the benchmark lock: one benchmark at a time; it is also the turnstile heavy work passes;
#   - the CPU lock: heavy work (training, export, quantization, scoring) holds it shared, any number
#     at once; a benchmark holds it exclusively, so it waits for running heavy work to end, and
#     heavy work that arrives while a benchmark waits or measures waits at the turnstile.
_local = threading.local()


def _host_lock_dir() -> Path:
    return Path(os.environ.get("SLIMFLOW_HOST_LOCK_DIR") or tempfile.gettempdir())


def bench_lock_path() -> Path:
    return _host_lock_dir() / f"slimflow-bench-{os.getuid()}.lock"


def cpu_lock_path() -> Path:
    return _host_lock_dir() / f"slimflow-cpu-{os.getuid()}.lock"


@contextmanager
def cpu_work(timeout_s: float = 3600.0) -> Iterator[bool]:
    """Mark CPU-heavy work so that no benchmark on this host measures while it runs. Yields whether
    the lock was taken; after ``timeout_s`` the work goes ahead unlocked (a benchmark's CPU watch
    then sees it and marks its figures unreliable). Re-entrant within a thread."""
    if getattr(_local, "depth", 0):
        _local.depth += 1
        try:
            yield True
        finally:
            _local.depth -= 1
        return
    t0 = time.monotonic()
    with try_file_lock(bench_lock_path(), timeout_s) as passed:
        pass  # the turnstile: wait while a benchmark measures or is queued on the CPU lock
    left = max(0.0, timeout_s - (time.monotonic() - t0)) if passed else 0.0
    with try_file_lock(cpu_lock_path(), left, shared=True) as held:
        _local.depth = 1
        try:
            yield held
        finally:
            _local.depth = 0


@contextmanager
def measuring_alone(lock_timeout_s: float, quiet_timeout_s: float) -> Iterator[dict[str, Any]]:
    """Hold the benchmark lock (``LockTimeout`` after ``lock_timeout_s``) and then the CPU lock
    exclusively (waiting up to ``quiet_timeout_s`` for heavy work to end; then measuring anyway).
    Yields what happened, for the record: waits in seconds and ``cpu_lock`` held/timeout/nested."""
    info: dict[str, Any] = {}
    t0 = time.monotonic()
    with file_lock(bench_lock_path(), lock_timeout_s):
        info["host_lock_wait_s"] = round(time.monotonic() - t0, 3)
        if getattr(_local, "depth", 0):  # called from inside heavy work: its own shared hold
            info.update(cpu_lock="nested", cpu_lock_wait_s=0.0)
            yield info
            return
        t1 = time.monotonic()
        with try_file_lock(cpu_lock_path(), quiet_timeout_s) as quiet:
            info.update(
                cpu_lock="held" if quiet else "timeout", cpu_lock_wait_s=round(time.monotonic() - t1, 3)
            )
            yield info
