"""infra/ files, checked without Docker or a cluster (neither runs here): the compose file against
the Compose Specification's JSON schema, the Kubernetes work-pool template rendered by Prefect's own
templating and validated against the Kubernetes OpenAPI schema, the Dockerfile by a parser."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_file_matches_the_compose_specification(compose):
    import jsonschema

    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]
    # the schema really rejects nonsense (so the check above can fail)
    assert list(validator.iter_errors({"services": {"x": {"image": "a", "portz": ["1:1"]}}}))


def test_compose_has_the_team_stack_wired_together(compose):
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, f"{name}: pin the image ({image!r})"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if src.startswith("."):
                assert (INFRA / src).exists(), f"{name}: bind-mounted {src} missing"
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--allowed-hosts=" in mlflow_cmd and "postgresql://" in mlflow_cmd and "s3://" in mlflow_cmd
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith("${")
    assert services["worker"]["environment"]["PREFECT_API_AUTH_STRING"].startswith("${")
    build = services["worker"]["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).is_file()


def test_compose_takes_every_secret_from_the_environment(compose):
    text = (INFRA / "compose.yaml").read_text()
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|AUTH_STRING|TOKEN", key):
                assert str(value).startswith("${"), f"{key} must come from infra/.env, not the file"
    assert "infra/.env" in (ROOT / ".gitignore").read_text()
    example = (INFRA / ".env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z_]+):\?", text)):
        assert f"{var}=" in example, f"{var} missing from .env.example"


@pytest.fixture(scope="module")
def job_template() -> dict:
    return json.loads((INFRA / "k8s" / "base-job-template.json").read_text())


def test_k8s_job_template_variables_are_a_valid_schema_with_valid_defaults(job_template):
    import jsonschema

    variables = job_template["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.Draft7Validator(variables).validate(defaults)


def test_k8s_job_template_renders_to_a_valid_kubernetes_job(job_template):
    """Render as Prefect's Kubernetes worker does (its templating, env dict -> list, command ->
    args) and validate the Job against the Kubernetes 1.33 schema, strictly (unknown fields fail)."""
    import kubernetes_validate
    from prefect.utilities.templating import apply_values, find_placeholders

    config = job_template["job_configuration"]
    variables = job_template["variables"]["properties"]
    used = {p.name for p in find_placeholders(config)}
    assert used <= set(variables), f"placeholders without a variable: {used - set(variables)}"
    values = {k: v.get("default") for k, v in variables.items()}
    values.update(name="slimflow-nightly", command="prefect flow-run execute 1234")
    rendered = apply_values(config, values)
    manifest = rendered["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    container["args"] = shlex.split(container["args"])
    assert container["image"] == values["image"] and manifest["metadata"]["namespace"] == "slimflow"
    kubernetes_validate.validate(manifest, "1.33.0", strict=True)
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.33.0", strict=True)


def test_dockerfile_installs_torch_first_under_constraints_and_runs_unprivileged():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(INFRA / "docker" / "Dockerfile"))
    assert df.baseimage and ":" in df.baseimage and "latest" not in df.baseimage
    steps = [(i["instruction"], i["value"]) for i in df.structure]
    runs = [v for ins, v in steps if ins == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    deps_at = next(i for i, r in enumerate(runs) if "-c constraints.txt" in r and "pip install" in r)
    assert torch_at < deps_at
    # everything the package build reads is copied before it runs (setup.py maps the folders)
    install = next(i for i, (ins, v) in enumerate(steps) if ins == "RUN" and "-c constraints.txt" in v)
    copied = {src for ins, v in steps[:install] if ins == "COPY" for src in v.split()[:-1]}
    assert {"pyproject.toml", "setup.py", "slimflow", "models", "tasks", "flows"} <= copied, copied
    for ins, value in steps:
        if ins == "COPY":
            *sources, _ = value.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert ins != "ADD", "use COPY (ADD fetches URLs and unpacks archives)"
    users = [v for ins, v in steps if ins == "USER"]
    assert users and users[-1] not in ("root", "0")
