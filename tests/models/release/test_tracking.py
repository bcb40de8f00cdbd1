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


def test_reaper_keys_on_process_space_and_leases_closes_grandchildren_and_never_a_live_run(tmp_path):
    """Pod/container restarts: a pid from another pid namespace or kernel boot says nothing here,
    so such runs are judged by their lease; a run whose process lives here is never closed."""
    import subprocess
    import time

    from slimflow.models.release import tracking

    client = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("lease", artifact_location=(tmp_path / "a").as_uri())
    here = tracking.process_space()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    now = time.time()
    fresh, lapsed = f"{now + 300:.0f}", f"{now - 3600:.0f}"
    try:

        def run(pid: int, start: str, lease: str, **space: str) -> str:
            tags = {**here, **space, "slimflow.pid": str(pid), "slimflow.pid_start": start,
                    tracking.LEASE_TAG: lease}  # fmt: skip
            return client.create_run(exp, tags=tags).info.run_id

        other_ns = {"slimflow.pid_ns": "pid:[1]"}  # same host name, another container's pid namespace
        runs = {
            # here, process gone: closed at once, lease or not
            "gone_here": run(dead.pid, "123", fresh),
            # here, process alive, lease lapsed (its heartbeat could not reach MLflow): kept
            "alive_here_lapsed": run(live.pid, process_start(live.pid), lapsed),
            # another pid namespace: the pid is meaningless here; lease fresh -> kept
            "other_ns_fresh": run(dead.pid, "123", fresh, **other_ns),
            # another pid namespace, lease long expired (the pod restarted): closed
            "other_ns_lapsed": run(dead.pid, "123", lapsed, **other_ns),
            # same host name, another boot of the kernel (machine restarted), live pid number reused
            "other_boot_lapsed": run(live.pid, process_start(live.pid), lapsed, **{"slimflow.boot_id": "x"}),
            # another host, lapsed only by less than the clock-skew grace: kept
            "other_host_grace": run(1, "1", f"{now - 10:.0f}", **{"slimflow.host": "elsewhere"}),
        }
        stage = client.create_run(exp, tags={"mlflow.parentRunId": runs["other_ns_lapsed"]}).info.run_id
        client.set_terminated(stage, status="FINISHED")  # a finished stage with a running child below
        grandchild = client.create_run(exp, tags={"mlflow.parentRunId": stage}).info.run_id
        live_child = client.create_run(exp, tags={"mlflow.parentRunId": runs["other_ns_fresh"]}).info.run_id

        closed = tracking.reap_dead_runs(client, exp)
        assert set(closed) == {runs["gone_here"], runs["other_ns_lapsed"], runs["other_boot_lapsed"]}
        status = {k: client.get_run(r).info.status for k, r in runs.items()}
        assert status == {"gone_here": "FAILED", "alive_here_lapsed": "RUNNING", "other_ns_fresh": "RUNNING",
                          "other_ns_lapsed": "FAILED", "other_boot_lapsed": "FAILED",
                          "other_host_grace": "RUNNING"}  # fmt: skip
        assert client.get_run(grandchild).info.status == "FAILED"  # below a finished stage, still closed
        assert client.get_run(stage).info.status == "FINISHED"  # a finished run keeps its status
        assert client.get_run(live_child).info.status == "RUNNING"
        reason = client.get_run(runs["other_ns_lapsed"]).data.tags["slimflow.reaped"]
        assert "lease expired" in reason and here["slimflow.host"] in reason
        assert "process is gone" in client.get_run(runs["gone_here"]).data.tags["slimflow.reaped"]
        assert tracking.reap_dead_runs(client, exp) == []
    finally:
        live.kill()


def test_a_lease_is_renewed_while_its_owner_lives_and_stops_with_it(tmp_path):
    import time

    from slimflow.models.release import tracking

    client = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("beat", artifact_location=(tmp_path / "a").as_uri())
    tags = tracking.owner_tags(lease_s=4)
    run_id = client.create_run(exp, tags=tags).info.run_id
    first = float(tags[tracking.LEASE_TAG])
    lease = tracking.Lease(client, run_id, lease_s=4)  # a beat every second
    try:
        time.sleep(2.6)
        renewed = float(client.get_run(run_id).data.tags[tracking.LEASE_TAG])
        assert lease.renewals >= 1 and renewed > first
    finally:
        lease.stop()
    assert not lease._thread.is_alive()
    count = lease.renewals
    time.sleep(1.5)
    assert lease.renewals == count  # stopped means stopped
    # its owner (this process) is alive here: never reaped, even with the lease long past
    client.set_tag(run_id, tracking.LEASE_TAG, "0")
    assert tracking.reap_dead_runs(client, exp) == []


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
