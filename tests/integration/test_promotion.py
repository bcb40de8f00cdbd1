"""Gates, registry, approval in the flow: tiny local models, a real sqlite MLflow registry, the
session's Prefect test server (a reviewer answers through its API, as `slimflow approve` does)."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from slimflow.flows.pipeline import run_pipeline
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from slimflow.models.release.registry import alias_version
from tests.conftest import make_reviews

pytestmark = pytest.mark.integration

BENCH = {"warmup": 1, "iterations": 6, "min_iterations": 5, "time_budget_s": 1, "bootstrap": 100,
         "threads": 1, "isolate": False, "pin_cores": False, "batch_sizes": [1],
         "lengths": ["data"],
         "tune": {"seconds": 0.05, "rounds": 1}}  # fmt: skip


def _cfg(tmp_path: Path, data: Path, model: Path, **promote) -> PipelineConfig:
    train = {"epochs": 3, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3}
    return PipelineConfig.model_validate(
        {
            "name": "it-promote",
            "workdir": str(tmp_path / "work"),
            "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                     "labels": ["neg", "pos"], "validation": {"min_per_class": 10}},
            "finetune": {"model": str(model), "method": {"kind": "full"}, "train": train},
            "optimize": {"quantize": [{"kind": "ort_int8_dynamic"}], "agreement": {"min_agreement": 0.9},
                         "accuracy_bar": {"min_retention": 0.9}, "bench": BENCH},
            "promote": {"model_name": "reviews-clf", "gates": {"min_retention": 0.9}, "deploy": None,
                        **promote},
        }
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    data = tmp_path / "reviews.csv"
    make_reviews(320).to_csv(data, index=False)
    return tmp_path, data, tiny_model_dir


def client_of(summary: dict) -> mlflow.MlflowClient:
    return tracking.client(summary["tracking_uri"])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_without_approval_a_passing_challenger_becomes_champion_and_is_served(setup):
    import httpx

    from slimflow.models.release import deployments as serve

    tmp_path, data, model = setup
    port = free_port()
    cfg = _cfg(tmp_path, data, model, deploy={"port": port})
    try:
        s = run_pipeline(cfg, progress=False)
        assert s["status"] == "completed", s.get("error")
        dep = s["promotion"]["deployment"]
        assert dep["endpoint"] == f"http://127.0.0.1:{port}" and dep["smoke"]["requests_ok"] == 4
        assert all(400 <= c < 500 for c in dep["smoke"]["malformed"].values())
        r = httpx.post(f"{dep['endpoint']}/predict", json={"texts": ["good great film", "bad awful dull"]})
        assert r.status_code == 200 and [p["label"] for p in r.json()["predictions"]] == ["pos", "neg"]
        assert r.json()["version"] == s["decision"]["champion"]
        assert httpx.post(f"{dep['endpoint']}/predict", json={"text": "x"}).status_code == 422
        assert httpx.get(f"{dep['endpoint']}/health").json()["status"] == "ok"
        mv = client_of(s).get_model_version("reviews-clf", s["decision"]["champion"])
        assert mv.tags["slimflow.deployed.endpoint"] == dep["endpoint"]
    finally:
        assert serve.stop(cfg.workdir_path(), "reviews-clf")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    d = s["decision"]
    assert d["outcome"] == "promoted" and d["promoted"] is True
    client = client_of(s)
    assert alias_version(client, "reviews-clf", "challenger") == d["challenger"] == d["champion"]
    versions = client.search_model_versions("name = 'reviews-clf'")
    assert len(versions) == len(s["promotion"]["registered"]) >= 1  # every passing candidate
    champ = client.get_model_version("reviews-clf", d["champion"])
    tags = champ.tags
    assert tags["slimflow.candidate"] == s["promotion"]["winner"]
    assert tags["slimflow.approval.decision"] == "auto"
    keys = ("slimflow.gates", "slimflow.data_fingerprint", "slimflow.git_commit", "slimflow.parent_run_id",
            "slimflow.p95_upper_ms", "slimflow.gx_result", "slimflow.model_card")  # fmt: skip
    for key in keys:
        assert tags.get(key), key
    reg_run = client.get_run(s["stages"]["register"]["mlflow_run_id"])
    arts = {a.path for a in client.list_artifacts(reg_run.info.run_id)}
    assert f"model_card_v{d['champion']}.md" in arts and "decision.json" in arts

    # the same candidates again: no duplicate versions, champion unchanged, no 'previous' churn
    again = run_pipeline(_cfg(tmp_path, data, model), progress=False)  # (deploy off)
    assert again["decision"]["champion"] == d["champion"]
    assert len(client.search_model_versions("name = 'reviews-clf'")) == len(versions)
    assert alias_version(client, "reviews-clf", "previous") is None


def test_an_impossible_latency_gate_promotes_nothing_and_names_the_gate(setup):
    tmp_path, data, model = setup
    s = run_pipeline(_cfg(tmp_path, data, model, gates={"max_p95_ms": 1e-6}), progress=False)
    assert s["status"] == "completed"
    d = s["decision"]
    assert d["outcome"] == "no_candidate_passes" and d["promoted"] is False
    assert d["failed_gates"] == ["max_p95_ms"] and d["best_effort"]
    assert "max_p95_ms" in d["reason"] and d["best_effort"] in d["reason"]
    client = client_of(s)
    assert client.search_model_versions("name = 'reviews-clf'") == []
    reg = client.get_run(s["stages"]["register"]["mlflow_run_id"])
    assert reg.data.tags["slimflow.decision"] == "no_candidate_passes"
    assert "max_p95_ms" in reg.data.tags["slimflow.decision.reason"]


def _run_in_thread(cfg: PipelineConfig) -> tuple[threading.Thread, dict]:
    box: dict = {}
    ctx = contextvars.copy_context()  # the test server's API settings live in context variables

    def target() -> None:
        try:
            box["summary"] = ctx.run(run_pipeline, cfg, None, False)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _wait_paused(cfg: PipelineConfig, timeout: float = 300) -> str:
    """The flow-run id once the pipeline is paused for review."""
    from prefect.client.orchestration import get_client

    from slimflow.models.release import tracking

    uri = tracking.tracking_uri(cfg.tracking, cfg.workdir_path())
    deadline = time.time() + timeout
    while time.time() < deadline:
        if Path(uri.removeprefix("sqlite:///")).exists():
            runs = tracking.client(uri).search_runs(
                [e.experiment_id for e in tracking.client(uri).search_experiments()],
                "tags.`slimflow.status` = 'awaiting_approval'",
            )
            if runs:
                fr = runs[0].data.tags["prefect.flow_run_id"]
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(fr).state
                if state is not None and state.is_paused():
                    return fr
        time.sleep(1)
    raise AssertionError("the pipeline never paused for approval")


def _form_description(flow_run_id: str) -> str:
    """The Markdown the Prefect UI shows above the approval form of a paused run."""
    from prefect.client.orchestration import get_client
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return read_flow_run_input(keyset_from_paused_state(state)["description"], flow_run_id=flow_run_id)


def _approve_cli(flow_run_id: str, *args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run(
        [sys.executable, "-m", "slimflow", "approve", flow_run_id, *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_approval_waits_then_slimflow_approve_promotes_and_reject_or_timeout_move_nothing(setup):
    tmp_path, data, model = setup
    required = {"approval": {"required": True, "timeout_s": 600}}

    # 1. approved from the terminal: champion moves, reviewer and comment stored on the version
    cfg = _cfg(tmp_path, data, model, **required)
    t, box = _run_in_thread(cfg)
    fr = _wait_paused(cfg)
    r = _approve_cli(fr, "--reviewer", "ana", "--comment", "figures look right")
    assert r.returncode == 0, r.stderr
    t.join(300)
    s = box.get("summary")
    assert s is not None, box.get("error")
    assert s["decision"]["outcome"] == "promoted" and "approved by ana" in s["decision"]["reason"]
    client = client_of(s)
    champ = s["decision"]["champion"]
    assert alias_version(client, "reviews-clf", "champion") == champ
    tags = client.get_model_version("reviews-clf", champ).tags
    assert (
        tags["slimflow.approval.reviewer"] == "ana"
        and tags["slimflow.approval.comment"] == "figures look right"
    )
    assert tags["slimflow.approval.decision"] == "approved" and tags["slimflow.approval.time"]
    card = client.get_model_version("reviews-clf", champ).description  # the card is the version's page
    assert card.startswith("# reviews-clf: ") and "- approved by **ana** at " in card
    assert "awaiting" not in card

    # 2. rejected: every alias stays where it was
    before = {a: alias_version(client, "reviews-clf", a) for a in ("challenger", "champion", "previous")}
    t, box = _run_in_thread(cfg)
    fr = _wait_paused(cfg)
    # what the reviewer sees in the Prefect UI's form: the evidence, against the champion of step 1
    desc = _form_description(fr)
    assert f"| | challenger v{before['challenger']} | champion v{champ} | teacher |" in desc, desc
    assert "| min_retention | >= 0.9 |" in desc and "Great Expectations: passed" in desc
    assert "| p95 latency, batch 1 |" in desc and "95% CI" in desc
    r = _approve_cli(fr, "--reviewer", "bo", "--reject", "--comment", "not tonight")
    assert r.returncode == 0, r.stderr
    t.join(300)
    s = box["summary"]
    assert s["decision"]["outcome"] == "rejected" and s["decision"]["promoted"] is False
    assert {a: alias_version(client, "reviews-clf", a) for a in before} == before

    # 3. nobody answers: the run ends at the timeout, nothing moves
    s = run_pipeline(_cfg(tmp_path, data, model, approval={"required": True, "timeout_s": 3}), progress=False)
    assert s["decision"]["outcome"] == "approval_timed_out" and s["decision"]["promoted"] is False
    assert {a: alias_version(client, "reviews-clf", a) for a in before} == before

    # a bad flow-run id is refused with a reason
    r = _approve_cli("not-a-uuid", "--reviewer", "ana")
    assert r.returncode == 2 and "not a flow-run id" in r.stderr


def test_a_run_that_promoted_says_so_when_the_deploy_after_it_fails(setup):
    """The registry changed, the endpoint did not: the summary says exactly that and names the step."""
    import json

    tmp_path, data, model = setup
    port = free_port()
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    summary = tmp_path / "summary.json"
    try:
        time.sleep(1.5)
        cfg = _cfg(tmp_path, data, model, deploy={"port": port})
        with pytest.raises(Exception, match="already served by something else"):
            run_pipeline(cfg, summary_path=str(summary), progress=False)
    finally:
        squatter.terminate()
        squatter.wait(10)
    s = json.loads(summary.read_text())
    d = s["decision"]
    assert s["status"] == "failed" and s["stages"]["deploy"]["status"] == "failed"
    assert (d["outcome"], d["promoted"], d["served"]) == ("promoted", True, False)
    assert "became champion; then deploy failed" in d["reason"] and "already served" in d["reason"]
    assert alias_version(client_of(s), "reviews-clf", "champion") == d["champion"]
