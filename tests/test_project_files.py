"""prefect.yaml and the Makefile point at things that exist; the package installs under one name;
the import contracts hold and catch a forbidden import."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_entrypoints_and_configs_exist():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert doc["deployments"], "no deployments"
    for dep in doc["deployments"]:
        from prefect.flows import load_flow_from_entrypoint

        path, _ = dep["entrypoint"].split(":")
        assert (ROOT / path).is_file(), path
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))  # as a worker loads it
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


def test_the_wheel_installs_one_top_level_package(tmp_path):
    """models/, tasks/ and flows/ install as slimflow.models, .tasks, .flows: nothing named
    'models' lands in a user's environment to shadow their own package. Built from a copy holding
    only what the Dockerfile copies, so the build needs nothing else (and leaves no build/ here)."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("slimflow", "models", "tasks", "flows"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    subprocess.run([*build, str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("slimflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"slimflow", wheel.name.split("-py3")[0] + ".dist-info"}
    sources = set()
    for folder in ("slimflow", "models", "tasks", "flows"):
        prefix = "slimflow" if folder == "slimflow" else f"slimflow/{folder}"
        sources |= {
            f"{prefix}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")
        }
    assert (
        "slimflow/models/families/classification/family.py" in sources
        and "slimflow/flows/pipeline.py" in sources
    )
    assert sources <= set(names), sorted(sources - set(names))[:5]


def lint_imports(*extra: str) -> subprocess.CompletedProcess:
    args = [a for e in extra for a in ("--extra", e)]
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "lint_imports.py"), *args], capture_output=True, text=True
    )


def test_import_contracts_hold():
    r = lint_imports()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    ("path", "source", "broken"),
    [
        # the bottom layer reaching up to the registry
        (
            "slimflow/models/core/bad.py",
            "from slimflow.models.release import tracking",
            "one import direction",
        ),
        # the library importing the CLI
        ("slimflow/models/train/bad.py", "import slimflow.cli.app", "one import direction"),
        # training and optimization are independent
        (
            "slimflow/models/train/bad.py",
            "from slimflow.models.optimize import bench",
            "one import direction",
        ),
        # Prefect in the library
        ("slimflow/models/data/bad.py", "import prefect", "never imports Prefect"),
        # a cycle hidden in function-level imports
        (
            "slimflow/models/core/bad.py",
            "def f():\n    from slimflow.models.core import names",
            "no import cycles",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(path, source, broken):
    extra = [f"{path}={source.replace(chr(92) + 'n', chr(10))}"]
    if "cycles" in broken:  # make names import bad back
        extra.append("slimflow/models/core/names2.py=from slimflow.models.core import bad")
        extra[0] = f"{path}=from slimflow.models.core import names2"
    r = lint_imports(*extra)
    assert r.returncode != 0
    assert f"{broken}" in r.stdout and "BROKEN" in r.stdout, r.stdout[-3000:]
