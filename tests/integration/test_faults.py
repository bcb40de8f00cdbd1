"""Faults: the pipeline process killed with SIGKILL in the middle of fine-tuning, and the MLflow
tracking server dying in the middle of a run. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slimflow.cli import local_servers as servers
from slimflow.models.release import tracking
from tests.integration.test_promotion import free_port
from tests.integration.test_servers import pipeline_yaml

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _config(tmp_path: Path, model: Path, epochs: int) -> Path:
    train = {"epochs": epochs, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3,
             "early_stopping_patience": None}  # fmt: skip
    return pipeline_yaml(tmp_path, model, "work", finetune__train=train, promote__model_name="faults-clf")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env.update(extra)
    return env


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat.parent.name)
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(stat.parent.name))
    return out


def _wait_for_training(client, experiment: str, timeout_s: float = 300) -> str:
    """Block until the teacher's fine-tuning has logged at least one epoch; returns its run id."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            exp = client.get_experiment_by_name(experiment)
            runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
        except Exception:  # the store may not exist yet
            runs = []
        for r in runs:
            if r.data.tags.get("slimflow.stage") == "finetune-teacher" and r.data.metrics.get("train_loss"):
                return r.info.run_id
        time.sleep(0.5)
    pytest.fail("fine-tuning never started")


def test_sigkill_during_finetuning_then_rerun_resumes_and_registers_only_whole_runs(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, epochs=40)
    uri = f"sqlite:///{(tmp_path / 'work' / 'mlflow.db').resolve()}"
    first = subprocess.Popen(
        [str(BIN / "slimflow"), "run", "-c", str(cfg), "--summary", str(tmp_path / "first.json")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        ft_run = _wait_for_training(tracking.client(uri), "slimflow")
    finally:
        children = _children(first.pid)  # Prefect's temporary API server, a child process
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        for pid in children:  # SIGKILL leaves them orphaned; a test must not leak them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert first.returncode == -signal.SIGKILL
    client = tracking.client(uri)
    killed = client.get_run(ft_run)
    parent_id = killed.data.tags["mlflow.parentRunId"]
    assert killed.info.status == "RUNNING"  # what a crash leaves behind
    assert client.search_registered_models() == []  # killed before promotion: nothing registered
    teacher_dir = tmp_path / "work" / "models" / "teacher"
    published = (
        [p.name for p in teacher_dir.iterdir() if not p.name.startswith(".")] if teacher_dir.exists() else []
    )
    assert published == [], "a killed fine-tuning left a published (partial) teacher"

    # the rerun trains 3 epochs, not 40 (40 only keep the first run training until it is killed): the
    # data stage is still the crashed run's, and the crashed runs are reaped all the same
    r = subprocess.run(
        [str(BIN / "slimflow"), "run", "-c", str(cfg), "--set", "finetune.train.epochs=3",
         "--summary", str(tmp_path / "second.json")],
        env=_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "second.json").read_text())
    assert s["stages"]["validate-data"]["status"] == "cached"  # finished stages are not redone
    assert s["stages"]["finetune-teacher"]["status"] == "completed"  # the killed one is
    assert parent_id in s["reaped_runs"]
    exp = client.get_experiment_by_name("slimflow")
    assert client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") == []
    dead = client.get_run(parent_id)
    assert dead.info.status == "FAILED" and dead.data.tags["slimflow.status"] == "crashed"
    assert "its process is gone" in dead.data.tags["slimflow.reaped"]  # not a lease wait: it died here
    assert float(dead.data.tags[tracking.LEASE_TAG]) > 0
    assert client.get_run(ft_run).info.status == "FAILED"
    versions = client.search_model_versions("name = 'faults-clf'")
    assert versions and all(v.tags["slimflow.parent_run_id"] == s["mlflow_run_id"] for v in versions)


def _gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting to be reaped)."""
    return _stat(pid)[:1] in ([], ["Z"])


def test_sigterm_during_finetuning_stops_cleanly_closes_the_runs_and_leaks_no_process(
    tmp_path, tiny_model_dir
):
    """SIGTERM (a scheduler's timeout, `kill`) unwinds like Ctrl-C: exit status 143, the MLflow runs
    closed FAILED (not left RUNNING), the summary naming the interrupted stage, nothing registered,
    and Prefect's temporary API server stopped (Python's default action left it running)."""
    cfg = _config(tmp_path, tiny_model_dir, epochs=40)
    uri = f"sqlite:///{(tmp_path / 'work' / 'mlflow.db').resolve()}"
    log = tmp_path / "run.log"  # a file, not a pipe: a leaked child would hold a pipe open
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [str(BIN / "slimflow"), "run", "-c", str(cfg), "--summary", str(tmp_path / "s.json")],
            env=_env(), stdout=sink, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    children: list[int] = []
    try:
        ft_run = _wait_for_training(tracking.client(uri), "slimflow")
        children = _children(proc.pid)
        assert children, "no Prefect temporary server to watch"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        leaked = [pid for pid in children if not _gone(pid)]
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
    err = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert leaked == [], "SIGTERM left child processes running"
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["status"] == "failed" and s["interrupted"] == "SIGTERM"
    assert s["stages"]["finetune-teacher"]["status"] == "interrupted"
    assert s["decision"]["promoted"] is False
    assert "interrupted (SIGTERM) during finetune-teacher" in s["decision"]["reason"]
    assert "interrupted (SIGTERM) during finetune-teacher" in err
    client = tracking.client(uri)
    assert client.get_run(ft_run).info.status == "FAILED"
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["slimflow.status"] == "failed"
    assert client.search_registered_models() == []


def test_mlflow_server_dying_mid_run_fails_clearly_in_bounded_time_and_promotes_nothing(
    tmp_path, tiny_model_dir
):
    base = Path(tempfile.mkdtemp(prefix="slimflow-mlflow-down-"))
    plan = servers.ServerPlan(state_dir=base, mlflow_port=free_port())
    rec = servers.start_mlflow(plan)
    url = rec["url"]
    cfg = _config(tmp_path, tiny_model_dir, epochs=60)
    proc = subprocess.Popen(
        [str(BIN / "slimflow"), "run", "-c", str(cfg), "--summary", str(tmp_path / "s.json")],
        env=_env(MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
                 MLFLOW_HTTP_REQUEST_TIMEOUT="10"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_training(tracking.client(url), "slimflow")
        os.killpg(rec["pid"], signal.SIGKILL)  # the server crashes (no clean shutdown)
        t_kill = time.monotonic()
        out, err = proc.communicate(timeout=300)
        waited = time.monotonic() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert f"MLflow tracking server {url} stopped answering" in err
    assert "nothing was registered or promoted" in err and "Traceback" not in err
    assert waited < 180, f"took {waited:.0f} s to give up"
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["status"] == "tracking_unavailable" and s["decision"]["promoted"] is False
    assert "register" not in s["stages"]

    # the server comes back on the same store: nothing was registered; the orphaned run is closed
    servers.stop(base)
    rec = servers.start_mlflow(plan)
    try:
        client = tracking.client(url)
        assert client.search_registered_models() == []
        exp = client.get_experiment_by_name("slimflow")
        stuck = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
        assert s["mlflow_run_id"] in {r.info.run_id for r in stuck}
        closed = tracking.reap_dead_runs(client, exp.experiment_id)  # what the next pipeline does first
        assert s["mlflow_run_id"] in closed
        assert client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") == []
    finally:
        servers.stop(base)
    print(
        f"\nMLflow server killed mid-training: the pipeline gave up {waited:.1f} s later (exit 1), "
        "nothing registered"
    )
