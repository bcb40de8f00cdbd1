"""Runtime settings searched, not assumed.

How fast an ONNX model runs depends on session settings as much as on the graph: a tiny model at
batch 1 is often faster on one intra-op thread (no pool to wake and join) while batch 32 wants every
core; spinning pool threads cut wake-up latency but burn CPU; the online graph optimisation level
can matter for graphs not fused offline; and some of ONNX Runtime's own online fusions make a graph
slower on some CPUs (onnxruntime 1.32's SkipLayerNormalization kernel took ~50 us for a 28 x 384
input on an Intel Xeon where Add + LayerNormalization took ~10 us), so the export leaves Add +
LayerNormalization unfused in the file and ``disabled_fusions`` decides, per batch size, whether the
session fuses them; flushing denormal floats to zero made batch 32 13% faster there. Threads,
spinning and graph level interact and are timed as a product; the on/off choices (fusions,
denormals) are then timed on top of each batch size's best. ``tune`` measures them per batch size
on real test inputs (interleaved rounds, a setting's figure is its best round's p50) and keeps ONNX
Runtime's default unless another setting is at least ``min_gain`` faster.

The result is saved with the candidate as ``runtime.json`` (with the hardware it was measured on
and every trial) and applied when the model is loaded — by the benchmark that follows, by the
registry copy, by the server — **only on the same hardware**; elsewhere the defaults are used and
the log says why. A predictor keeps one session per distinct setting it needs (usually one; two
when batch 1 and large batches disagree on threads).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimflow.models.optimize.config import TuneConfig
from slimflow.models.optimize.targets import SessionSettings
from slimflow.models.optimize.timing import time_calls

RUNTIME_FILE = "runtime.json"
CHECK_ROWS = 64  # rows per batch size whose outputs each setting must reproduce (see tune)
log = logging.getLogger(__name__)


@dataclass
class TunedRuntime:
    """The best session settings per batch size, measured on ``hardware``."""

    hardware: str
    thread_budget: int
    by_batch: dict[int, SessionSettings]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def for_rows(self, rows: int) -> SessionSettings:
        """The setting of the smallest tuned batch size that holds ``rows`` (else the largest's)."""
        sizes = sorted(self.by_batch)
        for b in sizes:
            if rows <= b:
                return self.by_batch[b]
        return self.by_batch[sizes[-1]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hardware": self.hardware,
            "thread_budget": self.thread_budget,
            "by_batch": {str(b): asdict(s) for b, s in sorted(self.by_batch.items())},
            "trials": self.trials,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TunedRuntime:
        by_batch = {int(b): settings_of(s) for b, s in d["by_batch"].items()}
        if not by_batch:
            raise ValueError("no tuned batch sizes")
        return cls(str(d["hardware"]), int(d["thread_budget"]), by_batch, list(d.get("trials", [])))

    def save(self, folder: Path) -> Path:
        path = folder / RUNTIME_FILE
        tmp = folder / f".{RUNTIME_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        return path

    def summary(self) -> dict[str, str]:
        """``{"b1": "1 thread, spinning on, graph all", ...}`` for tables, tags and cards."""
        return {f"b{b}": s.label() for b, s in sorted(self.by_batch.items())}


def settings_of(d: dict[str, Any]) -> SessionSettings:
    """The ``SessionSettings`` in a saved setting or trial (other keys ignored; fields a file written
    before they existed lacks take their defaults)."""
    return SessionSettings(**{f.name: d[f.name] for f in dataclasses.fields(SessionSettings) if f.name in d})


def load_tuned(folder: Path, hardware: str | None = None) -> TunedRuntime | None:
    """The tuned settings saved in ``folder`` if they were measured on this hardware; else None
    (missing, unreadable or from another machine: ONNX Runtime's defaults then, said in the log)."""
    path = folder / RUNTIME_FILE
    if not path.is_file():
        return None
    try:
        tuned = TunedRuntime.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s is unreadable (%s): using ONNX Runtime's default settings", path, e)
        return None
    if hardware is None:
        from slimflow.models.core.provenance import hardware_fingerprint

        hardware = hardware_fingerprint()
    if tuned.hardware != hardware:
        log.info(
            "%s was tuned on %r, this is %r: using ONNX Runtime's default settings (run a benchmark "
            "here to tune for this machine)",
            path,
            tuned.hardware,
            hardware,
        )
        return None
    return tuned


def grid(cfg: TuneConfig, budget: int) -> list[SessionSettings]:
    """The settings of the first stage, the default (``budget`` threads, spinning on, graph 'all')
    first: threads x spinning x graph level, which interact (spinning only matters with a pool)."""
    if cfg.threads is None:
        counts, t = [], 1
        while t < budget:
            counts.append(t)
            t *= 2
        counts.append(budget)
    else:
        counts = sorted({t for t in cfg.threads if t <= budget}) or [budget]
    default = SessionSettings(budget, True, "all")
    out = [default]
    for t in sorted(set(counts)):
        for spin in cfg.spinning:
            for level in cfg.graph_levels:
                s = SessionSettings(t, spin, level)
                if s not in out:
                    out.append(s)
    return out


def toggles(best: SessionSettings, cfg: TuneConfig) -> list[SessionSettings]:
    """The second stage: every combination of the on/off choices (disabled fusions, denormals as
    zero) on top of the first stage's best setting, that setting itself excluded."""
    out = []
    for off in cfg.disabled_fusions:
        for daz in cfg.denormal_as_zero:
            s = dataclasses.replace(best, disabled_fusions=tuple(off), denormal_as_zero=daz)
            if s != best and s not in out:
                out.append(s)
    return out


def tune(
    make_session: Callable[[SessionSettings], Any],
    inputs: dict[int, Sequence[dict[str, np.ndarray]]],
    cfg: TuneConfig,
    budget: int,
    hardware: str,
    clock: Callable[[], float] = time.perf_counter,
) -> TunedRuntime:
    """Measure the settings per batch size on ``inputs`` (batch size -> batches) in two stages —
    ``grid`` (threads x spinning x graph level), then ``toggles`` of each batch size's best — and
    keep the fastest per batch size, unless it is less than ``min_gain`` faster than the default.
    A setting that changes the outputs (fusions and denormals change float rounding) must give the
    default's argmax on at least ``min_output_agreement`` of the checked rows to be chosen: the
    candidate was evaluated with the defaults. ``make_session(settings)`` returns an object whose
    ``run(batch)`` returns ONNX Runtime's output list (anything else: not checked)."""
    settings = grid(cfg, budget)
    default = settings[0]
    best_p50: dict[tuple[int, SessionSettings], float] = {}
    calls: dict[tuple[int, SessionSettings], int] = {}
    stage_of: dict[tuple[int, SessionSettings], int] = {}
    outputs: dict[tuple[int, SessionSettings], np.ndarray] = {}
    plan1 = {s: list(inputs) for s in settings}
    _measure(make_session, plan1, inputs, cfg, clock, best_p50, calls, outputs)
    stage_of.update({k: 1 for k in best_p50})
    second: dict[SessionSettings, list[int]] = {}
    for b in inputs:
        first = min(settings, key=lambda s: best_p50[(b, s)])
        for s in toggles(first, cfg):
            second.setdefault(s, []).append(b)
    _measure(make_session, second, inputs, cfg, clock, best_p50, calls, outputs)
    stage_of.update({k: 2 for k in best_p50 if k not in stage_of})
    by_batch: dict[int, SessionSettings] = {}
    trials = []
    for b in inputs:
        tried = [s for (bb, s) in best_p50 if bb == b]
        base = best_p50[(b, default)]
        checks = {
            s: output_agreement(outputs[(b, s)], outputs[(b, default)])
            for s in tried
            if (b, s) in outputs and (b, default) in outputs
        }
        eligible = [s for s in tried if s not in checks or checks[s][0] >= cfg.min_output_agreement]
        fastest = min(eligible, key=lambda s: best_p50[(b, s)])
        gain = 1 - best_p50[(b, fastest)] / base if base > 0 else 0.0
        chosen = fastest if gain >= cfg.min_gain else default
        by_batch[b] = chosen
        for s in tried:
            trials.append(
                {
                    "batch_size": b,
                    **asdict(s),
                    "stage": stage_of[(b, s)],
                    "p50_ms": best_p50[(b, s)] * 1e3,
                    "calls": calls[(b, s)],
                    "vs_default": best_p50[(b, s)] / base if base > 0 else 1.0,
                    **(
                        {"output_agreement": checks[s][0], "max_abs_diff": checks[s][1]}
                        if s in checks
                        else {}
                    ),
                    "chosen": s == chosen,
                }
            )
    return TunedRuntime(hardware, budget, by_batch, trials)


def _measure(
    make_session: Callable[[SessionSettings], Any],
    plan: dict[SessionSettings, list[int]],
    inputs: dict[int, Sequence[dict[str, np.ndarray]]],
    cfg: TuneConfig,
    clock: Callable[[], float],
    best_p50: dict[tuple[int, SessionSettings], float],
    calls: dict[tuple[int, SessionSettings], int],
    outputs: dict[tuple[int, SessionSettings], np.ndarray],
) -> None:
    """Time each setting of ``plan`` on its batch sizes, ``cfg.rounds`` interleaved rounds (all its
    sessions alive at once); a setting's figure is its best round's p50. The warm-up runs' first
    outputs (at least ``CHECK_ROWS`` rows per batch size) go to ``outputs``."""
    sessions = {s: make_session(s) for s in plan}
    for s, session in sessions.items():
        for b in plan[s]:
            k = max(3, -(-CHECK_ROWS // b))  # warm-up (first runs allocate and prepack) + output check
            outs = [_first_output(session.run(x)) for x in inputs[b][:k]]
            if all(o is not None for o in outs):
                outputs[(b, s)] = np.concatenate([o.reshape(len(o), -1) for o in outs])
    for _ in range(cfg.rounds):
        for s, session in sessions.items():
            for b in plan[s]:
                times = _time(session, inputs[b], cfg.seconds, clock)
                key = (b, s)
                best_p50[key] = min(best_p50.get(key, float("inf")), float(np.median(times)))
                calls[key] = calls.get(key, 0) + len(times)
    sessions.clear()


def _first_output(out: Any) -> np.ndarray | None:
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], np.ndarray) and out[0].ndim >= 1:
        return out[0]
    return None


def output_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(share of rows whose argmax is the same, largest |difference|) of two output matrices."""
    if a.shape != b.shape or not a.size:
        return 0.0, float("inf")
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))), float(np.abs(a - b).max())


def _time(
    session: Any, batches: Sequence[dict[str, np.ndarray]], seconds: float, clock: Callable[[], float]
) -> list[float]:
    """Per-call seconds of ``session.run`` on ``batches`` (cycled) for ``seconds``: at least 5 calls,
    at most 10,000 (the benchmark's own loop, on ``clock``)."""
    return time_calls(session.run, list(batches), 0, 10_000, seconds, 5, clock=clock).tolist()


def format_trials(tuned: TunedRuntime) -> str:
    """A plain-text table of every trial (batch, setting, p50, relative to the default, share of
    checked rows predicted as with the default settings)."""
    rows = []
    for t in tuned.trials:
        s = settings_of(t)
        agree = f"{t['output_agreement']:.3f}" if "output_agreement" in t else "-"
        rows.append((t, s.label(), agree))
    w = max([len(label) for _, label, _ in rows] + [7])
    lines = [f"{'batch':>5}  {'setting':<{w}} {'p50 ms':>9} {'vs default':>10} {'same pred':>9}"]
    for t, label, agree in rows:
        mark = "  <- chosen" if t["chosen"] else ""
        lines.append(
            f"{t['batch_size']:>5}  {label:<{w}} {t['p50_ms']:>9.3f} {t['vs_default']:>9.2f}x "
            f"{agree:>9}{mark}"
        )
    return "\n".join(lines)
