"""An exclusive lock file for work that processes on one machine must not do at once (first-time
creation of a sqlite MLflow store, registry writes against it)."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slimflow.models.core.errors import SlimflowError


class LockTimeout(SlimflowError):
    """Another process held the lock longer than allowed."""


@contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); released on exit or crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout_s:
                    raise LockTimeout(
                        f"lock {path} still held by another process after {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
