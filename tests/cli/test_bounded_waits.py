"""Every command that talks to the MLflow tracking server gives up within one documented bound, with
one clear message: against a closed port and against a server that accepts connections but never
answers. (MLflow's own defaults retry for minutes.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slimflow.cli.registry import PREFECT_WAIT_BOUNDS
from slimflow.models.release.tracking import WAIT_BOUNDS


def run(args: list[str], cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    full.pop("MLFLOW_TRACKING_URI", None)
    for k in [*WAIT_BOUNDS, *PREFECT_WAIT_BOUNDS]:  # the documented defaults, not this shell's
        full.pop(k, None)
    full.update(env)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "slimflow", *args], cwd=cwd, env=full, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    return r, time.monotonic() - t0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Silent:
    """Accepts TCP connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)
            except OSError:
                return

    def close(self) -> None:
        self.stop = True
        self.sock.close()
        for c in self.held:
            c.close()


COMMANDS = {
    "rollback": lambda uri, tmp: ["rollback", "--model-name", "clf", "--tracking-uri", uri],
    "deploy": lambda uri, tmp: ["deploy", "--model-name", "clf", "--tracking-uri", uri, "--port", "18999"],
    "predict": lambda uri, tmp: [
        "predict",
        "--model",
        "models:/clf@champion",
        "--input",
        str(tmp / "in.csv"),
        "--output",
        str(tmp / "out.csv"),
        "--tracking-uri",
        uri,
    ],  # fmt: skip
    "bench": lambda uri, tmp: ["bench", "-m", "models:/clf@champion", "--tracking-uri", uri],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_closed_port_fails_fast_with_one_message(tmp_path, command):
    (tmp_path / "in.csv").write_text("text\ngood film\n")
    uri = f"http://user:hunter2@127.0.0.1:{closed_port()}"
    r, seconds = run(COMMANDS[command](uri, tmp_path), tmp_path)
    assert r.returncode != 0
    assert "did not answer" in r.stderr or "not answer" in r.stderr, r.stderr[-1500:]
    assert "hunter2" not in r.stderr + r.stdout  # the password is never echoed
    assert "Traceback" not in r.stderr
    assert seconds < 40, seconds  # interpreter start + (1 + 2) s backoff


@pytest.mark.parametrize("command", ["rollback", "predict"])
def test_a_server_that_never_answers_is_given_up_on_within_the_bound(tmp_path, command):
    (tmp_path / "in.csv").write_text("text\ngood film\n")
    silent = Silent()
    try:
        uri = f"http://127.0.0.1:{silent.port}"
        # the bound is (retries + 1) x timeout + backoff: 3 x 2 s + 3 s here
        r, seconds = run(COMMANDS[command](uri, tmp_path), tmp_path, MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    finally:
        silent.close()
    assert r.returncode != 0 and "did not answer" in r.stderr, r.stderr[-1500:]
    assert "2 retries, 2 s timeout each" in r.stderr
    assert seconds < 60, seconds


APPROVE = ["approve", "6f1c2d8e-1111-4222-8333-444455556666", "--reviewer", "bob"]


def test_approve_against_a_closed_port_or_a_silent_prefect_server_gives_up_within_its_bound(tmp_path):
    r, seconds = run(APPROVE, tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{closed_port()}/api")
    assert r.returncode == 1 and "the Prefect API at" in r.stderr and "did not answer" in r.stderr, r.stderr
    assert "MLflow" not in r.stderr and "Traceback" not in r.stderr
    assert seconds < 40, seconds
    silent = Silent()
    try:
        # Prefect's own defaults wait 60 s x 6 attempts (measured: 424 s); ours 3 attempts x the timeout
        r, seconds = run(APPROVE, tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{silent.port}/api",
                         PREFECT_API_REQUEST_TIMEOUT="2")  # fmt: skip
    finally:
        silent.close()
    assert r.returncode == 1 and "did not answer (2 retries, 2 s timeout each)" in r.stderr, r.stderr
    assert "was not answered" in r.stderr and "Traceback" not in r.stderr
    assert seconds < 60, seconds


def test_approve_names_a_missing_api_url_and_refused_credentials_without_echoing_them(tmp_path):
    import http.server

    r, _ = run(APPROVE, tmp_path, PREFECT_API_URL="")
    assert r.returncode != 0 and "PREFECT_API_URL is not set" in r.stderr, r.stderr

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": "Unauthorized"}')

        do_GET = do_POST = _refuse

        def log_message(self, *a) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r, seconds = run(APPROVE, tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{server.server_port}/api",
                         PREFECT_API_AUTH_STRING="admin:wrong-secret")  # fmt: skip
    finally:
        server.shutdown()
    assert r.returncode == 1 and "refused the request (HTTP 401)" in r.stderr, r.stderr
    assert "PREFECT_API_AUTH_STRING" in r.stderr and "wrong-secret" not in r.stderr + r.stdout
