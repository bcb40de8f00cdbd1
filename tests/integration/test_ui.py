"""`slimflow ui` serves the MLflow UI for the configured store, on loopback only."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store_on_loopback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"workdir: {tmp_path / 'work'}\ntracking:\n  experiment: ui-test\n", encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimflow", "ui", "-c", str(cfg), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, body = time.monotonic() + 120, b""
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"ui exited early: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(1)
        assert body.strip() == b"OK"
        conns = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        if conns:  # `ss` may be missing on minimal machines
            local = {line.split()[3].rsplit(":", 1)[0] for line in conns.splitlines()}
            assert local == {"127.0.0.1"}, conns
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
