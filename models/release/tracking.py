"""MLflow plumbing: where the store is, the parent run of a pipeline, a nested run per stage.

Nothing here runs at import time. The default store is a sqlite file plus an artifact folder in
the workdir (``.slimflow/``), not the repo root; ``tracking.uri`` or ``$MLFLOW_TRACKING_URI``
point elsewhere (config wins over the environment).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from slimflow.models.core import provenance
from slimflow.models.core.locks import file_lock
from slimflow.models.core.processes import alive, process_start
from slimflow.models.core.redact import SECRETISH, redact
from slimflow.models.release.config import TrackingConfig

PARAM_LIMIT = 6000  # MLflow 3 param value limit (chars)


def tracking_uri(cfg: TrackingConfig, workdir: Path) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


# One bound for every MLflow call of every command, the pipeline and the model server (MLflow's own
# defaults retry for minutes): a closed port fails after the retries' backoff (1 + 2 s), a server
# that accepts and never answers after (retries + 1) x timeout = 60 s. Set the variables to change it.
WAIT_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bounded_waits() -> None:
    """Apply ``WAIT_BOUNDS`` where the environment does not set them already."""
    for k, v in WAIT_BOUNDS.items():
        os.environ.setdefault(k, v)


def use(uri: str) -> None:
    """Point MLflow (tracking and registry) at ``uri`` without leaking it into the environment.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI, which ``tracking_uri`` reads as a
    user override: a second pipeline in the same process (a worker, ``serve``, tests) would then
    log into the first one's store.
    """
    import mlflow

    bounded_waits()
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def client(uri: str) -> Any:
    """An MlflowClient whose registry is the same store: ``MlflowClient(uri)`` alone takes the
    process-wide registry URI when one was set, which in a long-lived worker may be another store."""
    import mlflow

    bounded_waits()
    return mlflow.MlflowClient(uri, registry_uri=uri)


def artifact_root(workdir: Path) -> str:
    return (workdir / "mlartifacts").resolve().as_uri()


def configure(cfg: TrackingConfig, workdir: Path) -> tuple[str, str]:
    """Point MLflow at the store and make sure the experiment exists. Returns (uri, experiment_id)."""
    import mlflow

    uri = tracking_uri(cfg, workdir)
    use(uri)
    db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    # a fresh sqlite store is created by schema migrations, which fail when two processes run them at once
    with file_lock(db.with_name(f".{db.name}.init.lock"), timeout_s=300) if db else nullcontext():
        if db:
            enable_wal(db)
        exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return uri, exp.experiment_id
    location = artifact_root(workdir) if uri.startswith("sqlite:") else None
    try:
        return uri, mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException as e:
        # pipelines started together race to create it: the loser uses the winner's
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = mlflow.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return uri, exp.experiment_id


def enable_wal(db: Path) -> None:
    """Write-ahead logging on a sqlite store (a setting kept in the file): readers no longer block
    the writer, and concurrent pipelines queue on MLflow's 20 s busy timeout instead of failing
    with 'database is locked'. Several machines or heavy concurrency belong on PostgreSQL."""
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db, timeout=30)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        con.close()
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{db}: sqlite refused write-ahead logging (journal_mode={mode})")


# requests/urllib3 (MLflow) and httpx (Prefect) wordings of a server that does not answer
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Read timed out",
    "RemoteDisconnected",
    "Connection aborted",
    "ReadTimeout",
    "ConnectTimeout",
    "ConnectError",
    "PoolTimeout",
)


def server_silent(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is an HTTP server not answering (refused, timed out)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if any(s in f"{type(seen).__name__}: {seen}" for s in _UNREACHABLE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def silent_server_message(uri: str | None = None) -> str:
    """One line for a command that gave up on the tracking server (within ``WAIT_BOUNDS``)."""
    where = redact(uri or os.environ.get("MLFLOW_TRACKING_URI") or "the MLflow tracking server")
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?")
    return (
        f"{where} did not answer ({retries} retries, {timeout} s timeout each): nothing was changed;"
        " check that the tracking server runs and is reachable"
    )


def unreachable(exc: BaseException, uri: str) -> str | None:
    """If ``exc`` (or what caused it) is the tracking server not answering, say so in one line."""
    if not uri.startswith(("http://", "https://")):
        return None
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        text = f"{type(seen).__name__}: {seen}"
        if any(s in text for s in _UNREACHABLE):
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
            return (
                f"MLflow tracking server {redact(uri)} stopped answering ({retries} retries, then gave up):"
                " the run stopped here and nothing was registered or promoted; restart the server and run"
                " again (finished stages are reused from the cache)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def provenance_tags() -> dict[str, str]:
    hw = provenance.hardware()
    tags = {
        "slimflow.git_commit": provenance.git_commit(),
        "slimflow.code_version": provenance.code_version(),
        "slimflow.hardware": provenance.hardware_fingerprint(hw),
    }
    tags.update({f"hw.{k}": v for k, v in hw.items()})
    tags.update({f"version.{k}": v for k, v in provenance.package_versions().items()})
    return tags


def log_params(params: dict[str, Any], run_id: str | None = None) -> None:
    """Log params to ``run_id`` (default: the active run), in batches of MLflow's 100-param limit."""
    import mlflow
    from mlflow.entities import Param

    run_id = run_id or mlflow.active_run().info.run_id

    # credentials never reach MLflow: secret-like keys hidden, passwords in URIs masked
    def shown(k: str, v: Any) -> str:
        if SECRETISH.search(k) and not _reference(v):
            return "***"
        return redact(str(v))[:PARAM_LIMIT]

    items = [Param(k, shown(k, v)) for k, v in params.items()]
    client = mlflow.MlflowClient()
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _reference(v: Any) -> bool:
    """No secret to hide: nothing, or a reference to one ('env:NAME', 'prefect:BLOCK')."""
    return v in (None, "null", "") or (isinstance(v, str) and v.startswith(("env:", "prefect:")))


def redacted(obj: Any) -> Any:
    """A JSON-like structure as it may be stored: values of secret-like keys hidden (references to
    secrets stay readable), URIs redacted."""
    if isinstance(obj, dict):
        return {
            k: "***" if SECRETISH.search(str(k)) and not _reference(v) else redacted(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redacted(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=2, default=str), artifact_file)


def epoch_logger() -> Any:
    """A training-loop ``on_epoch`` callback that logs the epoch's figures (on the stage's own run:
    ``train_loss``, ``val_<metric>``, ``learning_rate``, ``epoch_seconds``; step = epoch)."""
    import mlflow

    def log(rec: Any) -> None:
        mlflow.log_metrics(
            {
                "train_loss": rec.train_loss,
                **{f"val_{k}": v for k, v in rec.val.items()},
                "learning_rate": rec.learning_rate,
                "epoch_seconds": rec.seconds,
            },
            step=rec.epoch,
        )

    return log


@contextmanager
def stage_run(parent_run_id: str, stage: str, experiment_id: str) -> Iterator[Any]:
    """A nested MLflow run for one stage, closed FAILED if the stage raises."""
    import mlflow

    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=stage,
        nested=True,
        parent_run_id=parent_run_id,
        tags={"slimflow.stage": stage},
    )
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


LEASE_TAG = "slimflow.lease_expires"  # epoch seconds until which the owner promises to be alive
LEASE_GRACE_S = 60.0  # clocks of two hosts may disagree by this much


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def process_space() -> dict[str, str]:
    """What says whether another run's pid can be checked from here: same host name, same boot of
    the kernel and same pid namespace (a container or pod restart changes the last two)."""
    import socket

    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return {
        "slimflow.host": socket.gethostname(),
        "slimflow.boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "slimflow.pid_ns": ns,
    }


def owner_tags(lease_s: float = 300.0) -> dict[str, str]:
    """Who runs this pipeline (host, kernel boot, pid namespace, pid and its start time: pids are
    reused) and the lease it holds: a heartbeat renews it while the process lives."""
    pid = os.getpid()
    return {
        **process_space(),
        "slimflow.pid": str(pid),
        "slimflow.pid_start": process_start(pid),
        "slimflow.lease_s": f"{lease_s:g}",
        LEASE_TAG: f"{time.time() + lease_s:.0f}",
    }


class Lease:
    """Renews a run's lease tag every ``lease_s / 4`` seconds from a daemon thread until ``stop()``.

    A renewal that fails (tracking server down) is retried at the next beat; the lease is long
    enough for several to fail before anyone may consider the run dead.
    """

    def __init__(self, client: Any, run_id: str, lease_s: float) -> None:
        import threading

        self.client, self.run_id, self.lease_s = client, run_id, float(lease_s)
        self.renewals = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"slimflow-lease-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.lease_s / 4)):
            try:
                self.client.set_tag(self.run_id, LEASE_TAG, f"{time.time() + self.lease_s:.0f}")
                self.renewals += 1
            except Exception:  # noqa: BLE001 - the next beat tries again
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _verdict(tags: dict[str, str], here: dict[str, str], now: float) -> str | None:
    """Why a RUNNING run's owner is gone (None: it may be alive, leave it)."""
    pid = int(tags.get("slimflow.pid") or 0)
    same_space = all(tags.get(k) == v for k, v in here.items()) and all(here.values())
    legacy = LEASE_TAG not in tags  # written before leases: host + pid is all there is
    if same_space or (legacy and tags.get("slimflow.host") == here["slimflow.host"]):
        if pid == os.getpid():
            return None
        if pid and alive(pid) and process_start(pid) == tags.get("slimflow.pid_start", ""):
            return None  # its process runs here: never close it, even if its lease lapsed
        return "its process is gone" if pid else None
    if legacy:
        return None  # another host, no lease: nothing here can tell
    try:
        expires = float(tags[LEASE_TAG])
    except ValueError:
        return None
    if now > expires + LEASE_GRACE_S:
        return f"its lease expired {now - expires:.0f} s ago (no heartbeat)"
    return None


def _descendants(client: Any, experiment_id: str, run_id: str) -> list[Any]:
    """Every run below ``run_id`` (children, grandchildren, ...), whatever their status."""
    found, frontier = [], [run_id]
    while frontier:
        parent = frontier.pop()
        for child in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'"):
            found.append(child)
            frontier.append(child.info.run_id)
    return found


def reap_dead_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING pipeline runs whose owner is gone, and every RUNNING run below them.

    A run is closed only when that is certain: its process ran in this very process space (host,
    kernel boot, pid namespace) and is gone, or its lease expired (no heartbeat for ``lease_s``
    plus a grace for clock skew: the owner was killed, its pod or container restarted, its machine
    died). A run whose process is alive here is never closed. Returns the pipeline run ids closed.
    """
    here = process_space()
    now = time.time()
    closed: list[str] = []
    running = client.search_runs(
        [experiment_id], "attributes.status = 'RUNNING' and tags.`slimflow.pid` != ''"
    )
    for run in running:
        if "mlflow.parentRunId" in run.data.tags:
            continue  # a stage run: its pipeline run decides
        reason = _verdict(run.data.tags, here, now)
        if reason is None:
            continue
        for below in _descendants(client, experiment_id, run.info.run_id):
            if below.info.status == "RUNNING":
                client.set_terminated(below.info.run_id, status="FAILED")
        client.set_tag(run.info.run_id, "slimflow.status", "crashed")
        client.set_tag(run.info.run_id, "slimflow.reaped", f"{reason}; closed by {here['slimflow.host']}")
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append(run.info.run_id)
    return closed
