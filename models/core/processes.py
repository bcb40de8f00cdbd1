"""Process identity helpers: a pid names one process only together with its start time."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str:
    """The process's start time (clock ticks since boot): with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks
    except (OSError, IndexError):
        return ""


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class ProcessRef:
    """One process: its pid *and* its start time, so that a recycled pid never names another process."""

    pid: int
    start: str

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(int(pid), process_start(int(pid)))

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ProcessRef:
        return cls(int(rec.get("pid") or 0), str(rec.get("start") or ""))

    def running(self) -> bool:
        """Still running and still the same process (same start time; a zombie counts as gone)."""
        return (
            self.pid > 0
            and bool(self.start)
            and process_start(self.pid) == self.start
            and not is_zombie(self.pid)
        )


def signal_process(ref: ProcessRef, sig: int) -> bool:
    """Send ``sig`` to the process group ``ref`` leads (or to the process alone), but only after
    checking that ``ref`` still names the process it was recorded for; False if it does not."""
    if not ref.running():
        return False
    try:
        os.killpg(ref.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(ref.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
    return True


def wait_gone(ref: ProcessRef, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not ref.running():
            return True
        time.sleep(0.1)
    return not ref.running()


def terminate(ref: ProcessRef, timeout_s: float = 10.0, sigterms: int = 1) -> bool:
    """Stop the process ``ref`` names: SIGTERM (``sigterms`` times, the timeout split between them),
    then SIGKILL. Every signal checks the start time first. True if it was running."""
    if not ref.running():
        return False
    for _ in range(max(1, sigterms)):
        signal_process(ref, signal.SIGTERM)
        if wait_gone(ref, timeout_s / max(1, sigterms)):
            return True
    signal_process(ref, signal.SIGKILL)
    wait_gone(ref, 5.0)
    return True


def spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> ProcessRef:
    """Start ``cmd`` detached (its own session and process group: it outlives its parent and is
    signalled as a group), output appended to ``log``, no stdin; returns who it is."""
    import subprocess

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(  # our own argv, no shell
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
    return ProcessRef.of(proc.pid)
