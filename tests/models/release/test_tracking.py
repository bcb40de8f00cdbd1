import os

import mlflow
import pytest

from slimflow.models.core.processes import process_start
from slimflow.models.release import tracking
from slimflow.models.release.config import TrackingConfig


@pytest.fixture(autouse=True)
def _no_user_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_default_store_is_sqlite_in_the_workdir(tmp_path):
    uri, exp_id = tracking.configure(TrackingConfig(experiment="e"), tmp_path / "w")
    assert uri == f"sqlite:///{(tmp_path / 'w' / 'mlflow.db').resolve()}"
    exp = tracking.client(uri).get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "w" / "mlartifacts").resolve().as_uri()


def test_two_pipelines_in_one_process_keep_their_own_stores(tmp_path):
    """Regression: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which looked like a user override."""
    a, _ = tracking.configure(TrackingConfig(), tmp_path / "a")
    b, _ = tracking.configure(TrackingConfig(), tmp_path / "b")
    assert a != b and str(tmp_path / "b") in b
    assert mlflow.get_tracking_uri() == b


def test_precedence_config_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert tracking.tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path / 'env.db'}"
    explicit = f"sqlite:///{tmp_path / 'cfg.db'}"
    assert tracking.tracking_uri(TrackingConfig(uri=explicit), tmp_path) == explicit
    tracking.configure(TrackingConfig(uri=explicit), tmp_path)
    assert mlflow.get_tracking_uri() == explicit
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'env.db'}"  # untouched


def test_stage_run_nests_under_the_parent_and_fails_on_error(tmp_path):
    uri, exp_id = tracking.configure(TrackingConfig(), tmp_path)
    client = tracking.client(uri)
    parent = client.create_run(exp_id).info.run_id
    with tracking.stage_run(parent, "ok-stage", exp_id) as run:
        mlflow.log_metric("x", 1.0)
    with pytest.raises(ValueError), tracking.stage_run(parent, "bad-stage", exp_id):
        raise ValueError("boom")
    ok, bad = (
        client.get_run(run.info.run_id),
        client.search_runs([exp_id], "attributes.run_name = 'bad-stage'")[0],
    )
    assert ok.data.tags["mlflow.parentRunId"] == parent and ok.info.status == "FINISHED"
    assert bad.info.status == "FAILED" and bad.data.tags["mlflow.parentRunId"] == parent


def test_provenance_tags_name_commit_versions_and_hardware():
    tags = tracking.provenance_tags()
    assert tags["slimflow.git_commit"] and tags["hw.cores"].isdigit()
    assert tags["version.torch"].startswith("2.") and tags["hw.gpu"]
    assert len(tags["slimflow.code_version"]) == 16


def test_runs_of_dead_processes_are_closed_failed_and_live_ones_left_alone(tmp_path):
    import socket
    import subprocess

    from slimflow.models.release import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = tracking.client(uri)
    exp = client.create_experiment("reap", artifact_location=(tmp_path / "a").as_uri())
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    try:

        def run(pid: int, start: str, host: str = host) -> str:
            tags = {"slimflow.host": host, "slimflow.pid": str(pid), "slimflow.pid_start": start}
            return client.create_run(exp, tags=tags).info.run_id

        crashed = run(dead.pid, "123")
        child = client.create_run(exp, tags={"mlflow.parentRunId": crashed}).info.run_id
        alive = run(live.pid, process_start(live.pid))
        reused_pid = run(live.pid, "1")  # same pid number, another process start: the owner is gone
        elsewhere = run(dead.pid, "123", host="another-host")
        closed = tracking.reap_dead_runs(client, exp)
        assert set(closed) == {crashed, reused_pid}
        status = {r: client.get_run(r).info.status for r in (crashed, child, alive, reused_pid, elsewhere)}
        assert status == {crashed: "FAILED", child: "FAILED", alive: "RUNNING", reused_pid: "FAILED",
                          elsewhere: "RUNNING"}  # fmt: skip
        assert client.get_run(crashed).data.tags["slimflow.status"] == "crashed"
        assert tracking.reap_dead_runs(client, exp) == []  # idempotent
    finally:
        live.kill()


def _writer(workdir: str, worker: int, n_batches: int) -> None:
    """One 'pipeline' hammering the shared sqlite store: experiment, run, metrics, a model version."""
    from mlflow.entities import Metric

    from slimflow.models.release import tracking as tr
    from slimflow.models.release.config import TrackingConfig as TC

    uri, exp_id = tr.configure(TC(experiment="busy"), __import__("pathlib").Path(workdir))
    client = tracking.client(uri)
    run = client.create_run(exp_id, run_name=f"w{worker}")
    for b in range(n_batches):
        client.log_batch(
            run.info.run_id, metrics=[Metric(f"m{i}", worker * 1000 + b, 0, b) for i in range(20)]
        )
    try:
        client.create_registered_model("shared")
    except mlflow.exceptions.MlflowException as e:
        assert e.error_code == "RESOURCE_ALREADY_EXISTS"
    client.create_model_version("shared", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_terminated(run.info.run_id)


def test_sqlite_store_takes_concurrent_pipelines_without_losing_writes(tmp_path):
    """Three processes write to one sqlite store at once: WAL + MLflow's busy timeout make them
    queue; every metric step and every model version is there afterwards, version numbers unique."""
    import multiprocessing as mp
    import sqlite3

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0, "a writer failed (database is locked?)"
    db = tmp_path / "mlflow.db"
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    client = tracking.client(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("busy").experiment_id])
    assert len(runs) == 3
    for r in runs:
        for i in range(20):
            assert len(client.get_metric_history(r.info.run_id, f"m{i}")) == 40
    versions = [int(v.version) for v in client.search_model_versions("name = 'shared'")]
    assert sorted(versions) == [1, 2, 3]


def test_params_and_stored_configs_never_hold_credentials(tmp_path):
    from slimflow.models.release import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = tracking.client(uri)
    tracking.use(uri)
    run = client.create_run(client.create_experiment("e")).info.run_id
    tracking.log_params(
        {"tracking.uri": "http://ana:s3cr3t@mlflow:5000", "finetune.hub_token": "hf_abcdef",
         "finetune.token_ref": "env:HF_TOKEN", "x.hub_token": "prefect:hf", "train.max_tokens": 64},
        run,
    )  # fmt: skip
    params = client.get_run(run).data.params
    assert params["tracking.uri"] == "http://ana:***@mlflow:5000"
    assert params["finetune.hub_token"] == "***" and params["x.hub_token"] == "prefect:hf"  # references stay
    assert params["train.max_tokens"] == "64"
    stored = tracking.redacted({"a": {"password": "p", "uri": "postgresql://u:p@h/db"}, "l": ["http://t@h"]})
    assert stored == {"a": {"password": "***", "uri": "postgresql://u:***@h/db"}, "l": ["http://***@h"]}
