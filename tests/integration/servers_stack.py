"""The local server stack of the integration tests (PostgreSQL, MLflow, Prefect with auth, a worker),
started by ``slimflow.cli.local_servers`` and stopped at the end; and helpers to talk to it.
The ``stack`` fixture (tests/integration/conftest.py) gives one per test module."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from slimflow.cli import local_servers as servers
from tests.conftest import make_reviews
from tests.integration.test_promotion import BENCH, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    plan: servers.ServerPlan
    env: dict[str, str]
    api: str
    mlflow_url: str
    headers: dict[str, str]
    started_s: float


def _postgres_available() -> None:
    try:
        servers.postgres_bindir()
    except servers.ServerError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{e} (.ci/run installs it: infra/local/install-postgres.sh)")
        pytest.skip(str(e))


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def start_stack():
    _postgres_available()
    # the 'postgres' user must be able to enter the state folder (pytest's tmp dirs are 0700)
    base = Path(tempfile.mkdtemp(prefix="slimflow-servers-"))
    base.chmod(0o755)
    # the default: no auth string in the environment -> one is generated into STATE/prefect/auth
    saved = {k: os.environ.pop(k) for k in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING")
             if k in os.environ}  # fmt: skip
    plan = servers.ServerPlan(
        state_dir=base / "state",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        postgres=True,
        postgres_port=free_port(),
        worker_pool="slimflow-process",
    )
    t0 = time.monotonic()
    try:
        info = servers.start(plan, ROOT)
        started = time.monotonic() - t0
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        assert info["auth"] == "file" and "PREFECT_API_AUTH_STRING" in info["env"]
        env.update(info["env"], SLIMFLOW_PROJECT_DIR=str(ROOT))
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
        recs = servers.records(plan.state_dir)
        yield Stack(plan, env, info["env"]["PREFECT_API_URL"], info["env"]["MLFLOW_TRACKING_URI"],
                    servers.auth_headers(plan.state_dir), started)  # fmt: skip
    finally:
        recs = servers.records(plan.state_dir)
        stopped = servers.stop(plan.state_dir)
        os.environ.update(saved)
        left = [n for n, r in recs.items() if _group_alive(int(r["pid"]))]
        shutil.rmtree(base, ignore_errors=True)
    assert set(stopped) == {"postgres", "mlflow", "prefect", "worker"}
    assert not left, f"processes still running after servers.stop: {left}"


def pipeline_yaml(tmp_path: Path, model: Path, name: str, **extra) -> Path:
    data = tmp_path / f"{name}.csv"
    make_reviews(320).to_csv(data, index=False)
    train = {"epochs": 3, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3}
    doc = {
        "name": name,
        "workdir": str(tmp_path / name),
        "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                 "labels": ["neg", "pos"], "validation": {"min_per_class": 10}},
        "finetune": {"model": str(model), "method": {"kind": "full"}, "train": train},
        "optimize": {"quantize": [{"kind": "ort_int8_dynamic"}], "agreement": {"min_agreement": 0.9},
                     "accuracy_bar": {"min_retention": 0.9}, "bench": BENCH},
        "promote": {"model_name": "reviews-clf", "gates": {"min_retention": 0.9}, "deploy": None},
    }  # fmt: skip
    for key, value in extra.items():
        section, _, field = key.partition("__")
        doc[section][field] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _csrf(stack: Stack) -> dict[str, str]:
    """CSRF protection is on: a state-changing request carries a token issued to its client id."""
    client = f"slimflow-test-{secrets.token_hex(4)}"
    r = httpx.get(f"{stack.api}/csrf-token", params={"client": client}, headers=stack.headers, timeout=30)
    r.raise_for_status()
    return {"Prefect-Csrf-Token": r.json()["token"], "Prefect-Csrf-Client": client}


def _api(stack: Stack, method: str, path: str, **kw) -> dict:
    headers = {**stack.headers, **(_csrf(stack) if method != "GET" else {})}
    r = httpx.request(method, f"{stack.api}{path}", headers=headers, timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def poll_api(stack: Stack, method: str, path: str, **kw) -> Any:
    """A read-only request of a polling loop: None when the server did not answer in time (a busy
    2-core host running the pipeline beside it once kept it 30 s), so the loop asks again until its
    own deadline. Never for a request that changes state (a retry could apply it twice)."""
    try:
        return _api(stack, method, path, **kw)
    except (httpx.TimeoutException, httpx.TransportError):
        return None


def _wait_state(stack: Stack, flow_run_id: str, types: set[str], timeout_s: float) -> dict:
    t0 = time.monotonic()
    state: dict = {}
    while time.monotonic() - t0 < timeout_s:
        fr = poll_api(stack, "GET", f"/flow_runs/{flow_run_id}")
        if fr is None:
            time.sleep(2)
            continue
        state = fr.get("state") or {}
        if state.get("type") in types:
            return fr
        if state.get("type") in {"FAILED", "CRASHED", "CANCELLED"}:
            pytest.fail(f"flow run {flow_run_id} ended {state.get('type')}: {state.get('message')}")
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} not in {types} after {timeout_s} s (last: {state.get('type')})")


def approved_champion(stack: Stack, model_name: str, reviewer: str) -> tuple[str, dict[str, str]]:
    """The champion version after an approval, checked to carry the approval; and its tags."""
    from slimflow.models.release import tracking
    from slimflow.models.release.registry import alias_version

    client = tracking.client(stack.mlflow_url)
    champion = alias_version(client, model_name, "champion")
    assert champion is not None, f"{model_name} has no champion"
    tags = client.get_model_version(model_name, champion).tags
    assert tags["slimflow.approval.decision"] == "approved"
    assert tags["slimflow.approval.reviewer"] == reviewer
    return champion, tags
