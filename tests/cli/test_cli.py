"""The command line as a user meets it: help, exit codes, messages without tracebacks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slimflow.models.release import tracking
from tests.conftest import make_reviews

ROOT = Path(__file__).resolve().parents[2]


def slimflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "slimflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_config(tmp_path: Path, data_path: Path, **extra: str) -> Path:
    body = f"""
name: clitest
workdir: {tmp_path / "work"}
data:
  source: {data_path}
  text_column: review
  label_column: sentiment
  labels: [neg, pos]
  validation: {{min_per_class: 10}}
finetune:
  model: packaged:all-MiniLM-L6-v2
"""
    p = tmp_path / "cfg.yaml"
    p.write_text(body + "".join(f"{k}: {v}\n" for k, v in extra.items()), encoding="utf-8")
    return p


def test_help_lists_the_commands(tmp_path):
    r = slimflow("--help", cwd=tmp_path)
    assert r.returncode == 0
    for cmd in ("run", "validate-data", "ui", "show-config"):
        assert cmd in r.stdout
    r = slimflow("run", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--summary" in r.stdout and "--set" in r.stdout


def test_bad_config_exits_2_with_the_field_and_no_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("finetune:\n  train:\n    epochs: zero\n", encoding="utf-8")
    r = slimflow("run", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert "finetune.train.epochs" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / ".slimflow").exists()  # nothing started


def test_missing_config_and_bad_override_exit_2(tmp_path):
    r = slimflow("run", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "config file not found" in r.stderr
    cfg = write_config(tmp_path, tmp_path / "d.csv")
    r = slimflow("show-config", "--config", str(cfg), "--set", "finetune.train.epochs=-1", cwd=tmp_path)
    assert r.returncode == 2 and "finetune.train.epochs" in r.stderr


def test_missing_data_file_exits_2_before_any_work(tmp_path):
    cfg = write_config(tmp_path, tmp_path / "missing.csv")
    r = slimflow("run", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and "file not found" in r.stderr and "missing.csv" in r.stderr
    assert not (tmp_path / "work").exists()


def test_approval_without_a_reachable_prefect_server_exits_2_before_any_work(tmp_path):
    data = tmp_path / "d.csv"
    make_reviews(100).to_csv(data, index=False)
    cfg = write_config(
        tmp_path,
        data,
        optimize="{targets: [cpu]}",
        promote="{model_name: m, approval: {required: true}}",
    )
    r = slimflow("run", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and "needs a Prefect server" in r.stderr and "PREFECT_API_URL" in r.stderr
    assert not (tmp_path / "work").exists()


def test_unsafe_model_folder_exits_2(tmp_path):
    data = tmp_path / "d.csv"
    make_reviews().to_csv(data, index=False)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    cfg = write_config(tmp_path, data)
    r = slimflow("run", "--config", str(cfg), "--set", f"finetune.model={tmp_path / 'm'}", cwd=tmp_path)
    assert r.returncode == 2 and "safetensors" in r.stderr


def test_show_config_prints_the_resolved_yaml_with_each_fields_meaning(tmp_path):
    import yaml

    cfg = write_config(tmp_path, tmp_path / "d.csv")
    r = slimflow("show-config", "-c", str(cfg), "--set", "finetune.method.r=4", cwd=tmp_path)
    assert r.returncode == 0 and "learning_rate:" in r.stdout
    assert re.search(r"^    r: 4 +# ", r.stdout, re.M)  # the value and its description
    assert "# Peak AdamW learning rate." in r.stdout
    from slimflow.models.pipeline_config import load_config

    assert yaml.safe_load(r.stdout) == load_config(cfg, ["finetune.method.r=4"]).model_dump(mode="json")
    r = slimflow("show-config", cwd=tmp_path)  # no config: every default
    assert r.returncode == 0 and "name: slimflow" in r.stdout
    r = slimflow("show-config", "-c", str(cfg), "--plain", cwd=tmp_path)
    assert r.returncode == 0 and "#" not in r.stdout


def test_show_config_schema_lets_an_editor_check_every_plugin_kind(tmp_path):
    import jsonschema
    import yaml

    r = slimflow("show-config", "--schema", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check = jsonschema.Draft202012Validator(json.loads(r.stdout))
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert not list(check.iter_errors(yaml.safe_load(path.read_text()))), path
    lora = {"finetune": {"method": {"kind": "lora", "r": 8, "alpah": 16}}}  # misspelt: flagged
    assert list(check.iter_errors(lora))
    assert not list(check.iter_errors({"finetune": {"method": {"kind": "lora", "r": 8, "alpha": 16}}}))
    assert list(check.iter_errors({"optimize": {"quantize": [{"kind": "no_such_quantizer"}]}}))


def test_flags_show_no_value_type_in_help():
    from typer.testing import CliRunner

    from slimflow.cli import app

    for cmd in (["run", "--help"], ["init", "--help"], ["gc", "--help"]):
        r = CliRunner().invoke(app, cmd, env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "--debug" in r.output and "<bool>" not in r.output, r.output
        assert "<path>" in r.output or "<str>" in r.output or "<int" in r.output  # options keep theirs


def test_validate_data_passes_good_data(tmp_path):
    data = tmp_path / "d.csv"
    make_reviews().to_csv(data, index=False)
    r = slimflow("validate-data", "-c", str(write_config(tmp_path, data)), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "passed" in r.stdout and (tmp_path / "work" / "validate" / "data_docs" / "index.html").is_file()


@pytest.mark.parametrize("kind", ["conflict", "non_utf8"])
def test_validate_data_exits_3_on_bad_data(tmp_path, kind):
    data = tmp_path / "d.csv"
    df = make_reviews()
    if kind == "conflict":
        df.loc[3, "review"] = df.loc[4, "review"]
        df.to_csv(data, index=False)
    else:
        data.write_bytes(df.to_csv(index=False).replace("good", "g\xf6\xf6d").encode("latin-1"))
    r = slimflow("validate-data", "-c", str(write_config(tmp_path, data)), cwd=tmp_path)
    assert r.returncode == 3
    assert "Traceback" not in r.stderr
    expected = "no text carries two different labels" if kind == "conflict" else "not UTF-8"
    assert expected in r.stdout + r.stderr


def test_run_on_bad_data_exits_3_trains_nothing_and_writes_the_summary(tmp_path):
    data = tmp_path / "d.csv"
    df = make_reviews()
    df.loc[[5, 6, 7], "sentiment"] = "meh"
    df.to_csv(data, index=False)
    summary = tmp_path / "summary.json"
    r = slimflow("run", "-c", str(write_config(tmp_path, data)), "--summary", str(summary), cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "labels within" in r.stderr and "3 of 240 rows unexpected" in r.stderr
    assert "Traceback" not in r.stderr  # an expected rejection is one message, not a stack dump
    s = json.loads(summary.read_text())
    assert s["status"] == "data_invalid" and s["decision"]["promoted"] is False
    assert s["stages"]["validate-data"]["status"] == "failed" and "finetune-teacher" not in s["stages"]
    assert s["flow_run_id"] and s["mlflow_run_id"]
    assert not (tmp_path / "work" / "models").exists()  # nothing trained

    client = tracking.client(s["tracking_uri"])
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.info.status == "FAILED"
    assert client.search_registered_models() == []
    children = client.search_runs(
        [s["mlflow_experiment_id"]], f"tags.mlflow.parentRunId = '{s['mlflow_run_id']}'"
    )
    (child,) = children
    assert child.data.tags["slimflow.data.valid"] == "false"
    names = {a.path for a in client.list_artifacts(child.info.run_id, "data_validation")}
    assert "data_validation/validation_result.json" in names and "data_validation/data_docs" in names


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from slimflow.models.optimize.config import ExportConfig
    from slimflow.models.optimize.export import export_onnx
    from slimflow.models.optimize.targets import get_target
    from tests.conftest import build_tiny_model, train_tiny_teacher

    tmp = tmp_path_factory.mktemp("cli-bench")
    _, res = train_tiny_teacher(tmp, build_tiny_model(tmp / "base"), rows=120, epochs=1)
    texts = make_reviews(8)["review"].tolist()
    export_onnx(res.model_dir, tmp / "onnx", ExportConfig(), get_target("cpu"), texts, threads=1)
    return tmp / "onnx"


def test_bench_prints_percentiles_and_writes_json(tmp_path, tiny_onnx):
    texts = tmp_path / "texts.csv"
    make_reviews(40).to_csv(texts, index=False)
    out = tmp_path / "bench.json"
    r = slimflow(
        "bench", "-m", str(tiny_onnx), "--texts", str(texts), "--text-column", "review",
        "--batch-sizes", "1,4", "--lengths", "data", "--threads", "1", "--iterations", "10",
        "--warmup", "2", "--json", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "b1 data" in r.stdout and "b4 data" in r.stdout and "p50 95% CI" in r.stdout
    assert "threads 1 (runtime reports 1)" in r.stdout.replace("\n", " ")
    result = json.loads(out.read_text())
    assert result["isolated"] is True and [s["batch_size"] for s in result["settings"]] == [1, 4]


def test_bench_tune_searches_settings_saves_them_and_later_runs_use_them(tmp_path, tiny_onnx):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_onnx, model)
    texts = tmp_path / "texts.csv"
    make_reviews(40).to_csv(texts, index=False)
    args = ["bench", "-m", str(model), "--texts", str(texts), "--text-column", "review", "--batch-sizes",
            "1,4", "--lengths", "data", "--threads", "1", "--iterations", "10", "--warmup", "2"]  # fmt: skip
    r = slimflow(*args, "--tune", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "runtime settings searched" in r.stdout and "<- chosen" in r.stdout
    saved = json.loads((model / "runtime.json").read_text())
    chosen = {b: s for b, s in saved["by_batch"].items()}
    assert set(chosen) == {"1", "4"} and all(s["threads"] == 1 for s in chosen.values())
    spin = "on" if chosen["1"]["spinning"] else "off"
    assert f"b1 data: ran with 1 thread, spinning {spin}" in r.stdout
    again = slimflow(*args, cwd=tmp_path)  # no --tune: the saved settings still apply here
    assert again.returncode == 0 and "runtime settings searched" not in again.stdout
    assert f"b1 data: ran with 1 thread, spinning {spin}" in again.stdout


def test_bench_says_an_early_exits_second_part_takes_the_first_parts_settings(capsys):
    from slimflow.cli.bench import _print_tuning

    label = "2 threads, spinning on, graph all"
    trials = [{"spinning": "each part's own", "b1_p50_ms": 0.52, "vs_own": 1.0, "chosen": False},
              {"spinning": "fast spinning on, fallback spinning off", "b1_p50_ms": 0.47, "vs_own": 0.91,
               "chosen": True}]  # fmt: skip
    _print_tuning({"runtime_tuning": {
        "fallback": {"tuned": True, "copied_from": "fast", "by_batch": {"b1": label}, "trials": []},
        ".": {"tuned": True, "by_batch": {"cascade": trials[1]["spinning"]}, "trials": trials},
    }})  # fmt: skip
    got = capsys.readouterr().out
    assert f"runtime settings (fallback): the fast part's (b1: {label})" in got
    assert "fast spinning on, fallback spinning off" in got and "<- chosen" in got


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "/no/such/model"], "model not found"),
        (["-m", "{onnx}", "--batch-sizes", "1,x"], "bench options"),
        (["-m", "{onnx}", "--lengths", "data,100000"], "lengths"),
        (["-m", "{onnx}", "--texts", "/no/such.csv"], "--texts"),
        (["-m", "models:/nope@champion", "--tracking-uri", "sqlite:///{tmp}/m.db"], "models:/nope@champion"),
    ],
)
def test_bench_bad_input_exits_2_with_the_reason(tmp_path, tiny_onnx, args, message):
    args = [a.format(onnx=tiny_onnx, tmp=tmp_path) for a in args]
    r = slimflow("bench", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bench_resolves_a_registered_model_alias(tmp_path, tiny_onnx):
    """models:/NAME@ALIAS from a real sqlite registry: downloaded, found, measured."""

    from slimflow.models.release import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use(uri)
    client = tracking.client(uri)
    exp = client.create_experiment("b", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(tiny_onnx), "candidate")
    client.create_registered_model("tiny")
    v = client.create_model_version("tiny", f"runs:/{run.info.run_id}/candidate", run.info.run_id)
    client.set_registered_model_alias("tiny", "challenger", v.version)
    from slimflow.models.release.registry import resolve_candidate as resolve_model

    local = resolve_model("models:/tiny@challenger", uri, tmp_path / "dl")
    assert (local / "model.onnx").is_file() and local != tiny_onnx
    r = slimflow(
        "bench", "-m", "models:/tiny@challenger", "--tracking-uri", uri, "--batch-sizes", "1",
        "--lengths", "data", "--iterations", "5", "--warmup", "1", "--no-isolate", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "b1 data" in r.stdout


@pytest.fixture
def registry_with_model(tmp_path, tiny_onnx):
    """A sqlite registry with two versions of 'clf' (champion v2, previous v1)."""

    from slimflow.models.release import registry, tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use(uri)
    client = tracking.client(uri)
    exp = client.create_experiment("c", artifact_location=(tmp_path / "art").as_uri())
    for _ in range(2):
        run = client.create_run(exp).info.run_id
        v = registry.register_candidate(client, run, "clf", tiny_onnx, {}, "card")
        registry.promote(client, "clf", v, {})
    return uri


def test_predict_writes_labels_for_every_row(tmp_path, registry_with_model):
    rows = make_reviews(30)
    rows.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out" / "pred.jsonl"
    r = slimflow(
        "predict", "-m", "models:/clf@champion", "-i", str(tmp_path / "in.csv"), "-o", str(out),
        "--text-column", "review", "--batch-size", "7", "--tracking-uri", registry_with_model, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    import pandas as pd

    got = pd.read_json(out, lines=True)
    assert len(got) == 30 and got["review"].tolist() == rows["review"].tolist()
    assert set(got["label"]) <= {"neg", "pos"} and got["score"].between(0.5, 1.0).all()
    assert "30 rows" in r.stdout and "version 2" in r.stdout

    for args, msg in (
        (["-o", str(tmp_path / "x.txt")], "--output must end in"),
        (["--text-column", "nope", "-o", str(out)], "no column 'nope'"),
    ):
        base = [
            "-m",
            "models:/clf@champion",
            "-i",
            str(tmp_path / "in.csv"),
            "--tracking-uri",
            registry_with_model,
        ]
        bad = slimflow("predict", *base, "--text-column", "review", *args, cwd=tmp_path)
        assert bad.returncode == 2 and msg in bad.stderr, bad.stderr


def test_rollback_moves_champion_back_once_and_to_an_explicit_version(tmp_path, registry_with_model):
    from slimflow.models.release.registry import alias_version

    r = slimflow("rollback", "--model-name", "clf", "--tracking-uri", registry_with_model, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "from version 2 back to version 1" in r.stdout

    client = tracking.client(registry_with_model)
    assert (alias_version(client, "clf", "champion"), alias_version(client, "clf", "previous")) == ("1", "2")
    base = ["--model-name", "clf", "--tracking-uri", registry_with_model]
    r = slimflow("rollback", *base, cwd=tmp_path)  # again, by accident: refused, nothing moves
    assert r.returncode == 1 and "rolling back again would undo it" in r.stderr and "--to 2" in r.stderr
    r = slimflow("rollback", *base, "--to", "2", cwd=tmp_path)
    assert r.returncode == 0 and "from version 1 back to version 2" in r.stdout, r.stderr
    r = slimflow("rollback", *base, "--to", "2", cwd=tmp_path)
    assert r.returncode == 0 and "already is the champion; nothing moved" in r.stdout
    assert (alias_version(client, "clf", "champion"), alias_version(client, "clf", "previous")) == ("2", "1")
    r = slimflow("rollback", *base, "--to", "v2", cwd=tmp_path)
    assert r.returncode == 2 and "--to must be a version number" in r.stderr
    r = slimflow("rollback", cwd=tmp_path)
    assert r.returncode == 2 and "no model name" in r.stderr


def test_deploy_serves_the_champion_and_stop_stops_it(tmp_path, registry_with_model):
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = ["--model-name", "clf", "--tracking-uri", registry_with_model]
    try:
        r = slimflow("deploy", *base, "--port", str(port), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"clf v2 serving at http://127.0.0.1:{port}" in r.stdout.replace("\n", " ")
        got = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["good great film"]}, timeout=30)
        assert got.status_code == 200 and got.json()["version"] == "2"
        assert (
            httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": [1, 2]}, timeout=30).status_code
            == 422
        )
        first = httpx.get(f"http://127.0.0.1:{port}/health").json()
        # a second deploy (another version) replaces the first server blue/green on the same port
        r = slimflow("deploy", *base, "--port", str(port), "--alias", "previous", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"clf v1 serving at http://127.0.0.1:{port}" in r.stdout.replace("\n", " ")
        second = httpx.get(f"http://127.0.0.1:{port}/health").json()
        assert second["version"] == "1" and second["pid"] != first["pid"]
        from slimflow.models.core.processes import alive, is_zombie

        # stopped; a zombie waiting for its reaper (the exited deploy's orphan) has stopped too
        assert not alive(first["pid"]) or is_zombie(first["pid"])
    finally:
        r = slimflow("deploy", *base, "--stop", cwd=tmp_path)
    assert r.returncode == 0 and "server stopped" in r.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_version_and_shell_completion_are_offered():
    from typer.testing import CliRunner

    from slimflow.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("slimflow ")
    r = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in r.output and "--version" in r.output


def test_registry_commands_take_the_same_overrides_as_run(tmp_path, monkeypatch):
    """A pipeline run with `--set workdir=...` is stopped, rolled back and browsed with the same
    `--set`: the summary's hint repeats it; without -c a --set is refused."""
    from rich.console import Console

    from slimflow.cli.run import _print_summary

    cfg = tmp_path / "p.yaml"
    cfg.write_text("optimize: {}\npromote:\n  model_name: clf\n")
    work = tmp_path / "elsewhere"
    r = slimflow("deploy", "-c", str(cfg), "--set", f"workdir={work}", "--stop", cwd=tmp_path)
    assert r.returncode == 0 and "clf: no server was running" in r.stdout, r.stderr
    assert work.is_dir() and not (tmp_path / ".slimflow").exists()  # the overridden workdir was used
    r = slimflow("deploy", "--model-name", "clf", "--set", f"workdir={work}", "--stop", cwd=tmp_path)
    assert r.returncode == 2 and "--set overrides a config's fields: pass the config with -c" in r.stderr

    console = Console(record=True, width=400)
    monkeypatch.setattr("slimflow.cli.run.out", console)
    summary = {"stages": {}, "decision": {"outcome": "promoted", "model_name": "clf"},
               "promotion": {"deployment": {"version": "1", "endpoint": "http://127.0.0.1:1"}}}  # fmt: skip
    _print_summary(summary, cfg, [f"workdir={work}"])
    text = console.export_text()
    assert f"slimflow deploy --stop -c {cfg} --set workdir={work}" in text
    assert f"slimflow ui -c {cfg} --set workdir={work}" in text


def test_models_references_default_to_the_store_slimflow_run_writes(tmp_path, monkeypatch):
    from slimflow.cli.app import registry_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry_store(None) == f"sqlite:///{tmp_path.resolve()}/.slimflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert registry_store(None) == "http://127.0.0.1:5000"
    assert registry_store("sqlite:////x/y.db") == "sqlite:////x/y.db"
