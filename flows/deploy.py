"""The deploy flow: serve ``models:/NAME@champion`` (blue/green: the new server is started and
smoke-tested beside the old one, which is stopped only once the new one has passed), record it.

Runs right after a promotion (pipeline) or alone: ``slimflow deploy -c CONFIG``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from slimflow.models.core.errors import ConfigError
from slimflow.models.core.names import check_name
from slimflow.models.core.redact import redact
from slimflow.models.release import deployments, tracking
from slimflow.models.release.config import ServeConfig
from slimflow.models.release.deployments import DeployError
from slimflow.tasks.deploy import record_deployment, smoke_test, start_server, switch_server

DEFAULT_SAMPLE = [
    "A gripping, beautifully acted film.",
    "Dull, overlong and badly written.",
    "It has its moments, but the plot drags.",
    "One of the best films of the year.",
]


@flow(name="slimflow-deploy", flow_run_name="deploy-{model_name}-{alias}", log_prints=True)
def deploy(
    model_name: str,
    tracking_uri: str | None = None,
    workdir: str = ".slimflow",
    experiment: str = "slimflow",
    alias: str = "champion",
    host: str = "127.0.0.1",
    port: int = 8088,
    sample: list[str] | None = None,
    server: ServeConfig | None = None,
) -> dict[str, Any]:
    """Serve ``models:/model_name@alias``. ``tracking_uri`` defaults to $MLFLOW_TRACKING_URI (a
    worker's environment); ``workdir`` holds the server's log and state file."""
    import os

    check_name(model_name, "model name")
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise ConfigError("deploy: no MLflow store: pass tracking_uri or set MLFLOW_TRACKING_URI")
    try:
        version = str(tracking.client(tracking_uri).get_model_version_by_alias(model_name, alias).version)
    except Exception as e:  # the state message is stored by Prefect and shown in its UI: no credentials
        if tracking.server_silent(e):
            raise DeployError(tracking.silent_server_message(tracking_uri)) from None
        raise DeployError(f"{model_name}@{alias}: {redact(str(e).splitlines()[0])}") from None
    with deployments.deploy_lock(workdir, model_name):  # one deployment of this model at a time
        info = start_server(model_name, version, tracking_uri, workdir, host, port, server)
        try:  # smoke-tested on its own control port, before it takes any traffic
            smoke = smoke_test(info["control"], model_name, version, tracking_uri, sample or DEFAULT_SAMPLE)
        except BaseException as e:
            deployments.stop_server(deployments.ServerInfo.from_dict(info))  # never leave it up
            old = info["old"]
            still = f"the previous server (pid {old['pid']}) is still serving" if old else "nothing serves it"
            raise DeployError(f"{model_name} v{version} not deployed: {e}; {still}") from None
        switched = switch_server(workdir, model_name, info)
    info["replaced"] = switched["replaced"]
    run_id = record_deployment(model_name, version, tracking_uri, experiment, info, smoke)
    print(f"serving {model_name} v{version} at {info['endpoint']} (pid {info['pid']}); MLflow run {run_id}")
    return {
        "endpoint": info["endpoint"],
        "version": version,
        "pid": info["pid"],
        "smoke": smoke,
        "run_id": run_id,
    }
