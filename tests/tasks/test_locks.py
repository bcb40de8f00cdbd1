"""Registry writes are serialised per model: which lock is taken, and that it really excludes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from slimflow.models.core.errors import ConfigError
from slimflow.models.core.locks import LockTimeout, file_lock
from slimflow.tasks.locks import registry_lock

HOLD = """
import sys, time
from pathlib import Path
from slimflow.models.core.locks import file_lock
with file_lock(Path(sys.argv[1]), 10):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    if len(sys.argv) > 3:
        Path(sys.argv[3]).write_text("done")  # the last thing done while still holding the lock
"""


def test_a_file_lock_held_by_another_process_waits_then_times_out(tmp_path):
    lock, done = tmp_path / "x.lock", tmp_path / "done"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), "3", str(done)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="still held"), file_lock(lock, timeout_s=0.5):
            pass
        t0 = time.monotonic()
        with file_lock(lock, timeout_s=30):  # waits for the holder's critical section to end, then gets it
            # (checking that the holder *process* has exited raced its interpreter shutdown: seen in CI)
            assert done.read_text() == "done"
        assert time.monotonic() - t0 > 0.5
    finally:
        holder.kill()


def test_a_killed_holder_releases_the_lock(tmp_path):
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), "60"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with file_lock(lock, timeout_s=5):
        pass


def test_registry_lock_kind_follows_the_stores(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with registry_lock("clf", f"sqlite:///{tmp_path / 'mlflow.db'}") as kind:
        assert kind == "file"
        assert (tmp_path / ".clf.registry.lock").exists()
    with pytest.raises(ConfigError):
        with registry_lock("../clf", f"sqlite:///{tmp_path / 'mlflow.db'}"):
            pass
