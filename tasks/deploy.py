"""Tasks of the deploy flow: start the server, smoke-test it over HTTP, record the deployment."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slimflow.models.core.errors import SlimflowError
from slimflow.models.release import deployments, tracking
from slimflow.models.release.config import ServeConfig
from slimflow.models.release.deployments import DeployError
from slimflow.models.release.serving import load_registered


class SmokeTestFailed(SlimflowError):
    """The served model does not answer like the registered one."""


def _still_serving(old: dict[str, Any] | None) -> str:
    if old is None:
        return "; nothing was serving this model before, nothing serves it now"
    return f"; the previous server ({old['model_uri']}, pid {old['pid']}) is still serving {old['endpoint']}"


@task(name="start-server", cache_policy=NO_CACHE)
def start_server(
    model_name: str,
    version: str,
    tracking_uri: str,
    workdir: str,
    host: str,
    port: int,
    settings: ServeConfig | None = None,
) -> dict[str, Any]:
    """Start the new server beside the old one (blue/green) and wait until it answers as itself."""
    old = deployments.current(workdir, model_name)
    deployments.check_port(f"http://{host}:{port}", old)
    info = deployments.launch(
        f"models:/{model_name}/{version}", tracking_uri, workdir, model_name, host, port, settings
    )
    try:
        health = deployments.wait_ready(info, version)
    except BaseException as e:
        deployments.stop_server(info)
        raise DeployError(f"{e}{_still_serving(old.to_dict() if old else None)}") from None
    return {**info.to_dict(), "health": health, "old": old.to_dict() if old else None}


@task(name="switch-server", cache_policy=NO_CACHE)
def switch_server(workdir: str, model_name: str, info: dict[str, Any]) -> dict[str, Any]:
    """Record the new server as the deployment, stop the old one, check the port answers as the new."""
    new = deployments.ServerInfo.from_dict(info)
    old = deployments.activate(workdir, model_name, new)
    deployments.verify_public(new)
    return {"replaced": old.to_dict() if old else None}


@task(name="smoke-test", cache_policy=NO_CACHE)
def smoke_test(
    endpoint: str, model_name: str, version: str, tracking_uri: str, texts: list[str]
) -> dict[str, Any]:
    """Real HTTP requests to ``endpoint`` (the new server's control port, before it takes traffic):
    predictions must equal the registered model's; bad requests get 4xx; a generative model also
    answers a chat completion with the registered model's greedy answer."""
    import httpx
    import pandas as pd

    model, _ = load_registered(f"models:/{model_name}/{version}", tracking_uri)
    family = model.family
    t0 = time.perf_counter()
    r = httpx.post(f"{endpoint}/predict", json={"texts": texts}, timeout=120)
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        raise SmokeTestFailed(f"{endpoint}/predict answered HTTP {r.status_code}: {r.text[:300]}")
    served = [p[family.output_key] for p in r.json()["predictions"]]
    expected = model.predict(pd.DataFrame({family.input_column: texts}))[family.output_key].tolist()
    mismatches = sum(a != b for a, b in zip(served, expected, strict=True))
    if mismatches:
        raise SmokeTestFailed(
            f"{mismatches} of {len(texts)} served predictions differ from the registered model's"
        )
    chat = _chat_smoke(endpoint, texts[0], expected[0], model.generator) if model.generator else None
    bad = {
        "empty": httpx.post(f"{endpoint}/predict", json={"texts": []}, timeout=10).status_code,
        "wrong_type": httpx.post(f"{endpoint}/predict", json={"texts": "not a list"}, timeout=10).status_code,
        "not_json": httpx.post(
            f"{endpoint}/predict", content=b"{", headers={"content-type": "application/json"}, timeout=10
        ).status_code,
    }
    if not all(400 <= code < 500 for code in bad.values()):
        raise SmokeTestFailed(f"malformed requests were not refused with 4xx: {bad}")
    health = httpx.get(f"{endpoint}/health", timeout=10).json()
    out = {"requests_ok": len(texts), "batch_seconds": seconds, "malformed": bad, "health": health}
    return {**out, "chat": chat} if chat else out


def _chat_smoke(endpoint: str, prompt: str, expected: str, generator: Any) -> dict[str, Any]:
    """``POST /v1/chat/completions`` with ``prompt`` as the user's turn: the answer must be the
    registered model's greedy answer to it (same token budget), a malformed chat must get 4xx."""
    import httpx

    limit = httpx.get(f"{endpoint}/health", timeout=10).json()["settings"]["max_new_tokens"]
    room = generator.context_length - len(generator.prompt_ids(prompt))  # the server refuses more (400)
    budget = max(1, min(generator.info.max_new_tokens, limit, room))
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": budget}
    t0 = time.perf_counter()
    r = httpx.post(f"{endpoint}/v1/chat/completions", json=body, timeout=120)
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        raise SmokeTestFailed(f"{endpoint}/v1/chat/completions answered HTTP {r.status_code}: {r.text[:300]}")
    got = r.json()["choices"][0]["message"]["content"]
    if budget == generator.info.max_new_tokens and got != expected:  # same budget: same greedy answer
        raise SmokeTestFailed("the served chat answer differs from the registered model's greedy answer")
    bad = httpx.post(
        f"{endpoint}/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]}, timeout=10
    ).status_code
    if not 400 <= bad < 500:
        raise SmokeTestFailed(f"a chat with an unknown role was not refused with 4xx (HTTP {bad})")
    return {"answer_chars": len(got), "seconds": seconds, "malformed": bad}


@task(name="record-deployment", cache_policy=NO_CACHE)
def record_deployment(
    model_name: str,
    version: str,
    tracking_uri: str,
    experiment: str,
    info: dict[str, Any],
    smoke: dict[str, Any],
) -> str:
    import json

    client = tracking.client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run = client.create_run(
        exp_id, run_name=f"deploy-{model_name}-v{version}", tags={"slimflow.stage": "deploy"}
    )
    rid = run.info.run_id
    for k, v in {
        "model_name": model_name,
        "version": version,
        "endpoint": info["endpoint"],
        "time": when,
    }.items():
        client.log_param(rid, k, v)
    client.log_metric(rid, "smoke.batch_seconds", smoke["batch_seconds"])
    client.log_metric(rid, "smoke.requests_ok", smoke["requests_ok"])
    client.log_text(
        rid, json.dumps({"server": info, "smoke": smoke}, indent=2, default=str), "deployment.json"
    )
    client.set_terminated(rid, "FINISHED")
    client.set_model_version_tag(model_name, version, "slimflow.deployed.endpoint", info["endpoint"])
    client.set_model_version_tag(model_name, version, "slimflow.deployed.time", when)
    client.set_model_version_tag(model_name, version, "slimflow.deployed.run_id", rid)
    return rid
