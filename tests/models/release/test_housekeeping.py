"""slimflow gc: what a workdir keeps (used by recent runs, named by the registry, in progress) and
what it frees; the MLflow store and the summaries are never touched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from slimflow.models.release import housekeeping as H

DAY = 86400.0


def _unit(path: Path, size: int, age_s: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(b"x" * size)
    old = time.time() - age_s
    for p in (path / "model.safetensors", path):
        os.utime(p, (old, old))
    return path


def _summary(wd: Path, name: str, paths: list[Path], age_s: float) -> None:
    (wd / "runs").mkdir(exist_ok=True)
    f = wd / "runs" / f"{name}.json"
    f.write_text(
        json.dumps({"stages": {f"s{i}": {"outputs": {"model_dir": str(p)}} for i, p in enumerate(paths)}})
    )
    old = time.time() - age_s
    os.utime(f, (old, old))


def test_gc_keeps_what_recent_runs_and_the_registry_use_and_frees_the_rest(tmp_path):
    wd = tmp_path / "work"
    used_new = _unit(wd / "models" / "teacher" / "aaa", 1000, 3 * DAY)  # old, but the newest run reused it
    used_old = _unit(wd / "models" / "student" / "bbb", 2000, 5 * DAY)  # only the oldest run used it
    registered = _unit(wd / "candidates" / "ccc", 3000, 6 * DAY)
    orphan = _unit(wd / "models" / "onnx" / "ddd", 4000, 4 * DAY)
    in_progress = _unit(wd / "candidates" / "eee", 500, 60)  # written a minute ago
    crashed = _unit(wd / "models" / "teacher" / ".fff.1234abcd.tmp", 600, 2 * DAY)
    writing = _unit(wd / "models" / "teacher" / ".ggg.5678abcd.tmp", 700, 30)
    data = _unit(wd / "data" / "fp1", 800, 5 * DAY)
    report = _unit(wd / "data" / "reports" / "fp1", 50, 5 * DAY)
    _unit(wd / "mlartifacts" / "1" / "x", 999, 9 * DAY)  # the MLflow store: never a candidate
    (wd / "mlflow.db").write_bytes(b"db")
    _summary(wd, "old-run", [used_old, data, report], 5 * DAY)
    _summary(wd, "new-run", [used_new / "model.safetensors"], 2 * DAY)

    plan = H.plan(wd, keep_runs=1, registry_refs=[f"file://{registered}", "models:/x/1"])
    deleted = {i.path for i in plan.delete}
    assert deleted == {used_old, orphan, crashed, data, report}
    kept = {i.path: i.why for i in plan.keep}
    assert kept[used_new].startswith("used by run new-run")
    assert kept[registered] == "named by a registered model version"
    assert "recent" in kept[in_progress] and "being written" in kept[writing]
    assert plan.freed == 2000 + 4000 + 600 + 800 + 50

    # two runs kept and no registry: the old run's folders stay, the registered one goes
    assert {i.path for i in H.plan(wd, keep_runs=2).delete} == {orphan, crashed, registered}

    assert H.apply(plan) == plan.freed
    assert not any(p.exists() for p in deleted)
    assert all(p.exists() for p in (used_new, registered, in_progress, writing, wd / "mlflow.db"))
    assert (wd / "mlartifacts" / "1" / "x").exists() and len(list((wd / "runs").glob("*.json"))) == 2
    assert not list(wd.rglob("*.gc-deleting"))


def test_gc_of_an_empty_or_fresh_workdir_deletes_nothing(tmp_path):
    assert H.plan(tmp_path / "none").delete == []
    wd = tmp_path / "w"
    _unit(wd / "models" / "teacher" / "new", 10, 5)  # no summary yet: a first run in progress
    assert H.plan(wd, min_age_s=0).delete == []
