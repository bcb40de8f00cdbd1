"""``slimflow gc``: delete a workdir's old models and candidates, keep what is still referenced.

A run leaves about 1.5 GB in its workdir (fine-tuned, distilled and pruned models, ONNX exports,
every candidate). Everything there can be rebuilt: a cached stage whose folder is gone runs again
(flows/bookkeeping.py). What is kept:

* every folder named in the newest ``keep_runs`` run summaries (``runs/*.json``): their cached
  stages stay instant;
* every folder a registered model version names (its source or a tag): the registry's own copies
  live in the MLflow store, which gc never touches, but a version's record stays readable;
* everything changed in the last ``min_age_s`` or after the newest summary (a run in progress).

Never touched: the MLflow store (``mlflow.db``, ``mlartifacts/``), Prefect's result records, the
run summaries themselves and the model server's state. Half-written folders (``.NAME.ID.tmp``) of
runs that crashed are deleted once older than ``tmp_age_s``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Output folders under the workdir and how deep one unit (one model, one candidate) lies.
AREAS = {"models": 3, "candidates": 2, "data": 2, "cache": 2}


@dataclass
class Item:
    path: Path
    bytes: int
    why: str


@dataclass
class GcPlan:
    workdir: Path
    delete: list[Item] = field(default_factory=list)
    keep: list[Item] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(i.bytes for i in self.delete)


def _measure(path: Path) -> tuple[int, float]:
    """Bytes under ``path`` and the newest modification time in it, in one walk."""
    st = path.lstat()
    size, newest = (st.st_size if path.is_file() else 0), st.st_mtime
    if path.is_dir():
        for p in path.rglob("*"):
            try:
                pst = p.lstat()
            except OSError:
                continue
            newest = max(newest, pst.st_mtime)
            if p.is_file() and not p.is_symlink():
                size += pst.st_size
    return size, newest


def unit_of(path: Path, workdir: Path) -> Path | None:
    """The unit (one model, candidate, prepared dataset, cache file) that ``path`` lies in."""
    try:
        rel = path.resolve().relative_to(workdir)
    except (ValueError, OSError):
        return None
    parts = rel.parts
    if not parts or parts[0] not in AREAS:
        return None
    depth = AREAS[parts[0]] + (1 if parts[0] == "data" and len(parts) > 1 and parts[1] == "reports" else 0)
    return workdir.joinpath(*parts[:depth]) if len(parts) >= depth else None


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from strings(v)


def units(workdir: Path) -> Iterator[Path]:
    for area, depth in AREAS.items():
        root = workdir / area
        if not root.is_dir():
            continue
        pattern = "/".join(["*"] * (depth - 1))
        for p in root.glob(pattern):
            if area == "data" and p.name == "reports":
                yield from (q for q in p.iterdir() if q.is_dir())
                continue
            yield p


def plan(
    workdir: str | Path,
    keep_runs: int = 3,
    registry_refs: Iterable[str] = (),
    min_age_s: float = 3600.0,
    tmp_age_s: float = 6 * 3600.0,
    now: float | None = None,
) -> GcPlan:
    """What ``apply`` would delete and what it keeps, with sizes and reasons. Reads only."""
    wd = Path(workdir).expanduser().resolve()
    now = time.time() if now is None else now
    out = GcPlan(wd)
    summaries = sorted((wd / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    kept: dict[Path, str] = {}
    for s in summaries[: max(0, keep_runs)]:
        try:
            data = json.loads(s.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for text in strings(data):
            if "/" in text:
                u = unit_of(Path(text), wd)
                if u is not None:
                    kept.setdefault(u, f"used by run {s.stem[:12]}")
    for text in registry_refs:
        if "/" in text:
            u = unit_of(Path(text.removeprefix("file://")), wd)
            if u is not None:
                kept.setdefault(u, "named by a registered model version")
    newest_summary = summaries[0].stat().st_mtime if summaries else 0.0
    for u in units(wd):
        size, changed = _measure(u)
        if u.name.startswith(".") and u.name.endswith(".tmp"):
            age = now - changed
            if age > tmp_age_s:
                out.delete.append(Item(u, size, f"left half-written {age / 3600:.0f} h ago"))
            else:
                out.keep.append(Item(u, size, "being written (or crashed recently)"))
            continue
        if u in kept:
            out.keep.append(Item(u, size, kept[u]))
            continue
        if now - changed < min_age_s or changed > newest_summary:
            out.keep.append(Item(u, size, "recent (a run may be using it)"))
            continue
        out.delete.append(Item(u, size, "not used by the kept runs or the registry"))
    return out


def apply(gc: GcPlan) -> int:
    """Delete what ``gc`` lists; returns the bytes freed. A folder is first renamed aside, so a
    crash midway never leaves a half-deleted model under its real name."""
    freed = 0
    for item in gc.delete:
        if not item.path.exists():
            continue
        aside = item.path.with_name(f".{item.path.name}.gc-deleting")
        try:
            item.path.rename(aside)
        except OSError:
            continue
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
        freed += item.bytes
    return freed


def registry_refs(tracking_uri: str) -> list[str]:
    """Every string a registered model version carries that could name a workdir folder: its
    source and its tag values."""
    from slimflow.models.release import tracking

    client = tracking.client(tracking_uri)
    refs: list[str] = []
    for rm in client.search_registered_models():
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            refs.append(str(mv.source or ""))
            refs += [str(v) for v in (mv.tags or {}).values()]
    return refs
