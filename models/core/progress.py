"""Progress a person can read, on a terminal or not.

On a terminal: tqdm bars. When stderr is not a terminal (a CI log, ``nohup``, a Prefect worker, a
pipe), bars are useless and tqdm falls silent, so a long stage would print nothing for many minutes:
``PlainProgress`` then writes one plain line every ``interval_s`` seconds (count, rate, ETA and the
latest figures) and one when it finishes. ``SLIMFLOW_PROGRESS_INTERVAL`` sets the interval (s).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("SLIMFLOW_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write straight to the stream (stderr by default): not print(), which Prefect's log_prints
    turns into a log record with a second prefix."""
    out = stream or sys.stderr
    out.write(text + "\n")
    out.flush()


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as plain, timed lines."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "batch",
        interval_s: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = _interval() if interval_s is None else interval_s
        self.stream = stream
        self.clock = clock
        self.t0 = self.last = clock()
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def _write(self, text: str) -> None:
        write_line(text, self.stream)

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        plural = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s")) else "s")
        parts = [f"{self.desc}: {self.n}/{self.total} {plural}{pct}"]
        parts.append(f"{fmt_seconds(elapsed)} elapsed")
        if rate > 0 and self.n < self.total:
            parts.append(f"ETA {fmt_seconds((self.total - self.n) / rate)}")
        if rate > 0:
            parts.append(f"{1 / rate:.2f} s/{self.unit}" if rate < 1 else f"{rate:.1f} {self.unit}/s")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            self._write(self.line())

    def set_postfix(self, **kw: Any) -> None:
        self.postfix.update(kw)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self.line() + " (done)")


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool | None = None, unit: str = "batch") -> Any:
    """A tqdm bar on a terminal, plain lines elsewhere (``enabled`` None: decide by stderr), or
    nothing (``enabled`` False)."""
    if enabled is False:
        return _NoProgress()
    if enabled is None and not sys.stderr.isatty():
        return PlainProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def progress_note(bar: Any, text: str) -> None:
    """A line beside the bar (an epoch's figures): printed unless progress is off."""
    if isinstance(bar, _NoProgress):
        return
    if isinstance(bar, PlainProgress):
        bar._write(text)
        return
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)
