"""prefect.yaml and the Makefile point at things that exist."""

import importlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_entrypoints_and_configs_exist():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert doc["deployments"], "no deployments"
    for dep in doc["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "deploy"), f"{dep['entrypoint']} is not a Prefect flow"
        params = dep.get("parameters", {})
        assert set(params) <= set(flow.parameters.properties), dep["name"]
        assert set(flow.parameters.required or []) <= set(params), (
            f"{dep['name']}: required parameter missing"
        )
        if params.get("config"):
            assert (ROOT / params["config"]).is_file(), params["config"]
        assert dep["work_pool"]["name"] == "slimflow-process"


def test_prefect_yaml_has_a_cron_pipeline_and_a_deploy_flow():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_entry = {d["entrypoint"]: d for d in doc["deployments"]}
    nightly = by_entry["flows/pipeline.py:pipeline"]
    assert [s["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert "flows/deploy.py:deploy" in by_entry
    env = nightly["work_pool"]["job_variables"]["env"]
    assert env["HF_HUB_OFFLINE"] == "1" and not any("SECRET" in k or "PASSWORD" in k for k in env)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme
