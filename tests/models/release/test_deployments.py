"""Deployments that never lie: blue/green switch without failed requests, a failed deploy leaves
the old server serving, a port held by anything else is refused by name, recycled pids are never
signalled."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from slimflow.models.core.processes import ProcessRef, signal_process, terminate
from slimflow.models.release import deployments
from slimflow.models.release.config import ServeConfig
from slimflow.models.release.deployments import DeployError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def up(candidate, tmp_path, port, name="clf", settings=None):
    info = deployments.launch(str(candidate), None, tmp_path, name, port=port, settings=settings)
    try:
        deployments.wait_ready(info, None, timeout_s=90)
    except BaseException:
        deployments.stop_server(info)
        raise
    return info


def test_blue_green_switch_answers_every_request_and_leaves_one_server(candidates, tmp_path):
    port = free_port()
    blue = up(candidates["onnxruntime"], tmp_path, port)
    assert deployments.activate(tmp_path, "clf", blue) is None
    deployments.verify_public(blue)
    codes: list[int | str] = []
    seen: set[str] = set()
    done = threading.Event()

    def traffic():
        # a new connection per request: a client that keeps a connection alive to the old server
        # can have it closed under it at the switch (every HTTP server's restart; clients retry)
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not done.is_set():
                try:
                    r = c.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["good film"]})
                    codes.append(r.status_code)
                    seen.add(c.get(f"http://127.0.0.1:{port}/health").json()["instance"])
                except httpx.TransportError as e:
                    codes.append(type(e).__name__)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        green = up(candidates["torch"], tmp_path, port, settings=ServeConfig(max_texts=8))
        assert green.instance != blue.instance
        replaced = deployments.activate(tmp_path, "clf", green)
        assert replaced is not None and replaced.instance == blue.instance
        assert not blue.running()  # the old server was stopped, by its recorded identity
        deployments.verify_public(green)
        time.sleep(0.5)
    finally:
        done.set()
        t.join(30)
    try:
        # never an HTTP error; at most one connection reset (a connection the kernel had queued on
        # the old server's socket when it closed: Linux does not hand those to the other socket)
        failed = [c for c in codes if c != 200]
        assert len(codes) > 50 and not [c for c in failed if isinstance(c, int)], failed[:5]
        assert len(failed) <= 1, failed[:5]
        assert seen == {blue.instance, green.instance}  # traffic moved from blue to green
        assert deployments.current(tmp_path, "clf").instance == green.instance
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["settings"]["max_texts"] == 8
        assert "--max-texts" in " ".join(_cmdline(green.pid))
        assert "sqlite" not in " ".join(_cmdline(green.pid))  # the tracking URI is not on the command line
    finally:
        assert deployments.stop(tmp_path, "clf")
    assert not green.running() and deployments.current(tmp_path, "clf") is None


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def test_a_failed_new_server_leaves_the_old_one_serving(candidates, tmp_path):
    port = free_port()
    blue = up(candidates["onnxruntime"], tmp_path, port)
    deployments.activate(tmp_path, "clf", blue)
    try:
        broken = tmp_path / "broken"
        broken.mkdir()
        with pytest.raises(
            DeployError,
            match="exited before answering: slimflow model server: cannot load .*holds no slimflow candidate",
        ):
            up(broken, tmp_path, port)
        assert deployments.current(tmp_path, "clf").instance == blue.instance
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["instance"] == blue.instance
    finally:
        deployments.stop(tmp_path, "clf")


def test_a_port_held_by_another_process_is_refused_by_name(candidates, tmp_path):
    # 1. another HTTP server: refused before anything starts
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        with pytest.raises(DeployError, match="already served by something else"):
            deployments.check_port(f"http://127.0.0.1:{port}", None)
        # 2. the new server itself cannot take a port bound without SO_REUSEPORT, and says so
        with pytest.raises(DeployError, match="cannot listen on 127.0.0.1:.*Another process holds the port"):
            up(candidates["onnxruntime"], tmp_path, port)
    finally:
        other.terminate()
        other.wait(10)
    # 3. another slimflow deployment's server on the port is not taken for ours
    port = free_port()
    foreign = up(candidates["onnxruntime"], tmp_path / "elsewhere", port)
    try:
        with pytest.raises(DeployError, match=f"slimflow model server for .* \\(pid {foreign.pid}\\)"):
            deployments.check_port(f"http://127.0.0.1:{port}", None)
    finally:
        deployments.stop_server(foreign)


def test_recycled_pids_are_never_signalled(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        real = ProcessRef.of(sleeper.pid)
        stale = ProcessRef(sleeper.pid, str(int(real.start) - 1))  # same pid, another start time
        assert real.running() and not stale.running()
        assert signal_process(stale, 15) is False and not terminate(stale)
        # a deployment record naming this pid with another start time: stop() leaves it alone
        info = deployments.ServerInfo(sleeper.pid, stale.start, "x", "http://127.0.0.1:1", "", "", "m", 0.0)
        deployments._write_state(tmp_path, "clf", info)  # noqa: SLF001 - a record as a crash would leave it
        assert deployments.stop(tmp_path, "clf") is False
        assert sleeper.poll() is None and real.running()
        assert terminate(real, timeout_s=5)
        sleeper.wait(5)
        assert not real.running()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
