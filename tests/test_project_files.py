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
        cfg = dep.get("parameters", {}).get("config")
        if cfg:
            assert (ROOT / cfg).is_file(), cfg
            assert set(dep["parameters"]) <= set(flow.parameters.properties)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme
