"""The real deployment shape on loopback: PostgreSQL (Debian's), an MLflow server on it, a Prefect
server with an API auth string, a process worker; prefect.yaml deployed and run through the API,
approved, promoted and served; three pipelines at once against the same MLflow server.

Everything is started by the test itself (``slimflow.servers``) and stopped at the end: no process
the module started may outlive it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from slimflow.cli import local_servers as servers
from slimflow.models.release import tracking
from slimflow.models.release.registry import alias_version
from tests.integration.servers_stack import (
    BIN,
    ROOT,
    _api,
    _postgres_available,
    _wait_state,
    approved_champion,
    pipeline_yaml,
)
from tests.integration.test_promotion import free_port

pytestmark = pytest.mark.integration


def test_servers_bind_loopback_and_refuse_unauthenticated_or_rebound_requests(stack):
    # /health stays open for probes; everything else needs the auth string
    assert httpx.get(f"{stack.api}/admin/version", timeout=10).status_code == 401
    # a write without credentials stops at the CSRF check (403), and no token is handed out without them
    assert httpx.post(f"{stack.api}/flow_runs/filter", json={}, timeout=10).status_code == 403
    assert httpx.get(f"{stack.api}/csrf-token", params={"client": "x"}, timeout=10).status_code == 401
    assert httpx.get(f"{stack.api}/admin/version", headers=stack.headers, timeout=10).status_code == 200
    # the generated auth string: 0600 from creation, never in the env file, the records or a command line
    auth_file = servers.auth_file(stack.plan.state_dir)
    assert auth_file.stat().st_mode & 0o777 == 0o600
    secret = auth_file.read_text().strip()
    env_file = stack.plan.state_dir / "env"
    assert env_file.stat().st_mode & 0o777 == 0o600 and secret not in env_file.read_text()
    assert secret not in json.dumps(servers.records(stack.plan.state_dir))
    assert secret not in (stack.plan.state_dir / "servers.json").read_text()
    sourced = subprocess.run(["bash", "-c", f"source {env_file} && printf %s \"$PREFECT_API_AUTH_STRING\""],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert sourced.stdout == secret
    pids = [str(r["pid"]) for r in servers.records(stack.plan.state_dir).values()]
    for pid in pids:
        assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    # CSRF protection: authenticated but token-less writes are refused; with a token they pass
    no_token = httpx.post(f"{stack.api}/flow_runs/filter", json={}, headers=stack.headers, timeout=10)
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    assert isinstance(_api(stack, "POST", "/flow_runs/filter", json={"limit": 1}), list)
    # DNS rebinding: a request naming another Host is refused by MLflow's --allowed-hosts
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    bad = httpx.get(search, headers={"Host": "attacker.example"}, timeout=10)
    assert bad.status_code in (400, 403), bad.status_code
    assert httpx.get(search, timeout=10).status_code == 200
    for name, rec in servers.status(stack.plan.state_dir).items():
        assert rec["running"], name
        if "url" in rec:
            assert "127.0.0.1" in rec["url"], rec
    # the UI finds its API on this (non-default) port, not on :4200
    ui = httpx.get(stack.api.removesuffix("/api") + "/ui-settings", headers=stack.headers, timeout=10)
    assert ui.status_code == 200 and ui.json()["api_url"] == stack.api, ui.text[:300]
    mlflow_cmd = " ".join(servers.records(stack.plan.state_dir)["mlflow"]["cmd"])
    assert servers.postgres_password(stack.plan.state_dir) not in mlflow_cmd  # never on a command line


def test_deployment_round_trip_schedule_worker_approval_champion_endpoint(stack, tmp_path, tiny_model_dir):
    """prefect.yaml deployed to the server; a run triggered through the API is picked up by the
    worker, pauses for review, is approved with `slimflow approve`, promotes and serves."""
    from slimflow.models.release import deployments as serve

    port = free_port()
    cfg = pipeline_yaml(
        tmp_path, tiny_model_dir, "it-deployed",
        promote__approval={"required": True, "timeout_s": 900}, promote__deploy={"port": port},
    )  # fmt: skip
    t0 = time.monotonic()
    r = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    t_deploy = time.monotonic() - t0
    nightly = _api(stack, "GET", "/deployments/name/slimflow-pipeline/quickstart-nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["work_pool_name"] == "slimflow-process"
    serve_dep = _api(stack, "GET", "/deployments/name/slimflow-deploy/quickstart-serve")
    assert serve_dep["parameters"]["model_name"] == "quickstart-reviews"

    fr = _api(stack, "POST", f"/deployments/{nightly['id']}/create_flow_run",
              json={"parameters": {"config": str(cfg)}})  # fmt: skip
    paused = _wait_state(stack, fr["id"], {"PAUSED"}, timeout_s=900)
    t_paused = time.monotonic() - t0
    assert paused["deployment_id"] == nightly["id"]
    r = subprocess.run(
        [str(BIN / "slimflow"), "approve", fr["id"], "--reviewer", "alice", "--comment", "round trip"],
        env=stack.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    _wait_state(stack, fr["id"], {"COMPLETED"}, timeout_s=600)
    t_done = time.monotonic() - t0
    workdir = tmp_path / "it-deployed"
    try:
        champion, tags = approved_champion(stack, "reviews-clf", "alice")
        assert tags["slimflow.deployed.endpoint"] == f"http://127.0.0.1:{port}"
        summary = json.loads(next((workdir / "runs").glob("*.json")).read_text())
        assert summary["flow_run_id"] == fr["id"] and summary["tracking_uri"] == stack.mlflow_url
        assert summary["decision"]["champion"] == champion
        resp = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"texts": ["good great film", "bad awful dull"]}
        )
        assert resp.status_code == 200, resp.text
        assert [p["label"] for p in resp.json()["predictions"]] == ["pos", "neg"]
        assert resp.json()["version"] == champion
    finally:
        serve.stop(workdir, "reviews-clf")
    print(
        f"\nround trip: servers up {stack.started_s:.1f} s (not counted); deploy --all {t_deploy:.1f} s; "
        f"triggered -> paused for review {t_paused:.1f} s; approved -> completed, promoted and serving "
        f"{t_done:.1f} s in all"
    )


def _expected_metrics(summary: dict) -> dict[str, float]:
    """What the pipeline computed (its local summary) = what MLflow must hold on the parent run."""
    return {
        f"{stage}.{k}": v
        for stage, entry in summary["stages"].items()
        for k, v in (entry.get("metrics") or {}).items()
    }


def test_three_pipelines_at_once_on_postgres_lose_nothing(stack, tmp_path, tiny_model_dir):
    """Three `slimflow run` at once against one MLflow server on PostgreSQL (and the Prefect
    server): two with identical inputs (same candidates: must share versions, not duplicate them),
    one with another seed (its own candidates)."""
    train = {"epochs": 3, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3, "seed": 7}
    cfgs = [
        pipeline_yaml(tmp_path, tiny_model_dir, "conc-a", promote__model_name="conc-clf"),
        pipeline_yaml(tmp_path, tiny_model_dir, "conc-b", promote__model_name="conc-clf"),
        pipeline_yaml(
            tmp_path, tiny_model_dir, "conc-c", promote__model_name="conc-clf", finetune__train=train
        ),
    ]
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [str(BIN / "slimflow"), "run", "-c", str(c), "--summary", str(c.with_suffix(".json"))],
            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for c in cfgs
    ]  # fmt: skip
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    wall = time.monotonic() - t0
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    summaries = [json.loads(c.with_suffix(".json").read_text()) for c in cfgs]
    client = tracking.client(stack.mlflow_url)

    expected = found = 0
    for s in summaries:
        assert s["status"] == "completed" and s["tracking_uri"] == stack.mlflow_url
        want = _expected_metrics(s)
        got = client.get_run(s["mlflow_run_id"]).data.metrics
        missing = sorted(set(want) - set(got))
        assert not missing, f"{s['pipeline']}: metrics lost: {missing[:10]}"
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        expected += len(want)
        found += sum(1 for k in want if k in got)
        ft = s["stages"]["finetune-teacher"]["mlflow_run_id"]
        steps = sorted(m.step for m in client.get_metric_history(ft, "train_loss"))
        assert steps and steps == list(range(steps[0], steps[0] + len(steps)))  # one per epoch, no hole
        runs = client.search_runs(
            [s["mlflow_experiment_id"]], f"tags.mlflow.parentRunId = '{s['mlflow_run_id']}'"
        )
        assert runs and all(r.info.status == "FINISHED" for r in runs)

    versions = client.search_model_versions("name = 'conc-clf'")
    numbers = [int(v.version) for v in versions]
    identities = [v.tags["slimflow.candidate.sha256"] for v in versions]
    assert len(set(numbers)) == len(numbers) and len(set(identities)) == len(identities), "duplicate versions"
    registered = {v for s in summaries for v in s["promotion"]["registered"].values()}
    assert registered == {str(n) for n in numbers}
    a, b, c = (s["promotion"]["registered"] for s in summaries)
    assert a == b, "identical inputs must map to the same versions"
    assert set(c.values()).isdisjoint(a.values()), "another seed gives other candidates"
    champion = alias_version(client, "conc-clf", "champion")
    previous = alias_version(client, "conc-clf", "previous")
    assert champion in registered and champion in {s["decision"]["champion"] for s in summaries}
    assert previous is None or (previous in registered and previous != champion)
    locks = {client.get_run(s["stages"]["register"]["mlflow_run_id"]).data.tags["slimflow.registry_lock"]
             for s in summaries}  # fmt: skip
    assert locks == {"prefect"}
    print(
        f"\nconcurrent: 3 pipelines in {wall:.0f} s; metrics expected {expected}, found {found}; "
        f"versions {sorted(numbers)} ({len(set(identities))} distinct candidates); champion v{champion}, "
        f"previous v{previous}"
    )


def test_postgres_starts_in_a_folder_whose_path_needs_quoting():
    """pg_ctl hands its -o options to a shell: a state folder with spaces and quotes must work; one
    with characters pg_ctl itself cannot quote is refused, naming them, before anything starts."""
    _postgres_available()
    unsafe = Path(tempfile.gettempdir()) / f"slimflow-{secrets.token_hex(4)}-$HOME"
    with pytest.raises(servers.ServerError, match=r"would interpret '\$'"):
        servers.start(servers.ServerPlan(state_dir=unsafe, postgres=True))
    assert not unsafe.exists()
    base = Path(tempfile.mkdtemp(prefix="slimflow pg 'q' "))
    base.chmod(0o755)
    plan = servers.ServerPlan(state_dir=base / "state", postgres=True, postgres_port=free_port())
    try:
        rec = servers.start_postgres(plan)
        assert servers.status(plan.state_dir)["postgres"]["running"]
        pw = plan.state_dir / "postgres" / "password"
        assert pw.stat().st_mode & 0o777 == 0o600
        sockets = list((plan.state_dir / "postgres" / "socket").glob(".s.PGSQL.*"))
        assert sockets, "the unix socket went to the quoted folder, not a mangled path"
        assert not (plan.state_dir / "postgres" / "socket" / ".pw").exists()  # initdb's password file is gone
        import psycopg2

        password = servers.postgres_password(plan.state_dir)
        conn = psycopg2.connect(
            host=plan.host, port=plan.postgres_port, user="slimflow", password=password, dbname="mlflow"
        )
        conn.close()
        assert rec["url"].endswith("/mlflow")
    finally:
        stopped = servers.stop(plan.state_dir)
        shutil.rmtree(base, ignore_errors=True)
    assert stopped == ["postgres"]
