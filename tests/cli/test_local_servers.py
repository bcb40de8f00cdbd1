"""slimflow.servers without starting servers: process records, stop() safety, plan errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from slimflow.cli import local_servers as servers


def test_stop_signals_our_process_group_and_nothing_else(tmp_path):
    # ours: a process group of two (parent + child), like a server and its uvicorn worker
    code = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)'])"
    ours = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(60)"], start_new_session=True)
    # not ours: its pid is in a record whose start time does not match (a reused pid)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        time.sleep(0.5)
        servers._record(tmp_path, "mlflow", ours.pid)
        rec = servers._record(tmp_path, "prefect", other.pid)
        rec["start"] = "1"  # pretend the recorded process started at another time
        (tmp_path / "procs" / "prefect.json").write_text(__import__("json").dumps(rec))
        assert servers.status(tmp_path)["mlflow"]["running"] is True
        assert servers.status(tmp_path)["prefect"]["running"] is False
        stopped = servers.stop(tmp_path, timeout_s=6)
        assert stopped == ["mlflow"]
        assert ours.wait(timeout=5) is not None
        assert other.poll() is None, "a process that merely reused a recorded pid was signalled"
        assert servers.records(tmp_path) == {}  # stale records are dropped
    finally:
        for p in (ours, other):
            if p.poll() is None:
                os.killpg(p.pid, 9)


def test_port_in_use_is_named_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        plan = servers.ServerPlan(state_dir=tmp_path, mlflow_port=port)
        with pytest.raises(servers.ServerError, match=f"127.0.0.1:{port} is already in use"):
            servers.start(plan)
    assert servers.records(tmp_path) == {}


def test_mlflow_allowed_hosts_cover_loopback_and_extra_names():
    plan = servers.ServerPlan(mlflow_port=5123, allowed_hosts=["mlflow.internal:443"])
    hosts = servers.mlflow_allowed_hosts(plan).split(",")
    assert {"127.0.0.1:5123", "localhost:5123", "mlflow.internal:443"} <= set(hosts)
    assert "*" not in hosts


def test_command_lines_are_recorded_without_secrets():
    assert servers._redact(["x", "--password=abc", "PREFECT_SERVER_API_AUTH_STRING=u:p"]) == [
        "x",
        "***",
        "***",
    ]


def test_servers_cli_help_and_status_of_nothing(tmp_path):
    from typer.testing import CliRunner

    from slimflow.cli import app

    r = CliRunner().invoke(app, ["servers", "start", "--help"])
    assert r.exit_code == 0 and "--postgres" in r.output and "127.0.0.1" in r.output
    r = CliRunner().invoke(app, ["servers", "status", "--dir", str(tmp_path)])
    assert r.exit_code == 1
    r = CliRunner().invoke(app, ["servers", "stop", "--dir", str(tmp_path)])
    assert r.exit_code == 0 and "nothing was running" in r.output


def test_prefect_auth_is_required_by_default_generated_once_and_never_written_in_clear(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("PREFECT_SERVER_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    state = tmp_path / "state with 'quotes' and $HOME"
    plan = servers.ServerPlan(state_dir=state)
    auth, source = servers.prefect_auth(plan)
    assert source == "file" and auth.startswith("slimflow:")
    assert servers.auth_file(state).stat().st_mode & 0o777 == 0o600
    assert servers.prefect_auth(plan) == (auth, "file")  # the same string on a restart
    # what `start` records for a server started with it, and the env file made from the record
    servers._record(state, "prefect", os.getpid(), url="http://127.0.0.1:4200/api", auth="file")
    assert servers.client_env(state)["PREFECT_API_AUTH_STRING"] == auth
    assert "PREFECT_API_AUTH_STRING" not in servers.client_env(state, secrets=False)
    text = servers.env_file_text(state)
    assert auth not in text
    env_file = tmp_path / "env"
    env_file.write_text(text)
    show = 'printf "%s|%s" "$PREFECT_API_URL" "$PREFECT_API_AUTH_STRING"'
    r = subprocess.run(
        ["bash", "-c", f'source "{env_file}" && {show}'],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert r.stdout == f"http://127.0.0.1:4200/api|{auth}", r.stderr
    assert servers.auth_headers(state)["Authorization"].startswith("Basic ")

    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "admin:from-env")
    assert servers.prefect_auth(plan) == ("admin:from-env", "env")
    assert servers.prefect_auth(servers.ServerPlan(state_dir=state, auth=False)) == (None, "none")


def test_no_auth_is_an_explicit_choice_in_the_cli():
    from typer.testing import CliRunner

    from slimflow.cli import app

    r = CliRunner().invoke(app, ["servers", "start", "--help"], env={"COLUMNS": "200"})
    assert "--no-auth" in r.output and "0600" in r.output
