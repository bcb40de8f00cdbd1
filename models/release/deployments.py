"""Model servers as deployed processes: start one, prove it, switch traffic to it, stop the old one.

A deployment never lies about what serves:

* every server gets an ``instance`` id; health checks accept an answer only from the process just
  started, serving the expected version (a port answered by anything else fails the deploy, naming
  what answered);
* blue/green: the new server shares the public port with the old one (SO_REUSEPORT) and also
  listens on a private loopback control port; it is health-checked and smoke-tested there, and
  only then is it recorded as the deployment and the old one stopped. A failed deploy stops the new
  server and leaves the old one serving;
* processes are named by pid *and* start time (``ProcessRef``): a recycled pid is never signalled;
* one deployment of a model name at a time (``deploy_lock``).

The record of what serves ``NAME`` is ``<workdir>/deploy/NAME.json``, replaced atomically.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.locks import file_lock
from slimflow.models.core.names import check_name
from slimflow.models.core.processes import ProcessRef, spawn, terminate
from slimflow.models.release.config import ServeConfig


class DeployError(SlimflowError, RuntimeError):
    """A model server did not start, did not answer as itself, or the port belongs to another."""


@dataclass
class ServerInfo:
    pid: int
    start: str
    instance: str
    endpoint: str  # the public address (shared with the previous server during a switch)
    control: str  # the loopback address only this server answers
    log: str
    model_uri: str
    started: float

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start)

    def running(self) -> bool:
        return self.ref.running()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServerInfo:
        return cls(
            **{k: d.get(k, "" if k not in ("pid", "started") else 0) for k in cls.__dataclass_fields__}
        )


def _dir(workdir: str | Path) -> Path:
    return Path(workdir) / "deploy"


def state_file(workdir: str | Path, name: str) -> Path:
    return _dir(workdir) / f"{check_name(name, 'model name')}.json"


@contextmanager
def deploy_lock(workdir: str | Path, name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """One deployment (or stop) of model ``name`` at a time on this machine."""
    with file_lock(_dir(workdir) / f".{check_name(name, 'model name')}.lock", timeout_s):
        yield


def current(workdir: str | Path, name: str) -> ServerInfo | None:
    """The recorded server of ``name`` if it is still that process; None otherwise."""
    path = state_file(workdir, name)
    try:
        info = ServerInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return info if info.running() else None


def _write_state(workdir: str | Path, name: str, info: ServerInfo) -> None:
    path = state_file(workdir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info.to_dict(), indent=2), encoding="utf-8")
    tmp.replace(path)


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_flags(settings: ServeConfig) -> list[str]:
    """The server's command-line flags for the settings that differ from the defaults."""
    out: list[str] = []
    default = ServeConfig()
    for key in ServeConfig.model_fields:
        value = getattr(settings, key)
        if value == getattr(default, key):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            out += [flag, str(value)]
    return out


def launch(
    model_uri: str,
    tracking_uri: str | None,
    workdir: str | Path,
    name: str,
    host: str = "127.0.0.1",
    port: int = 8088,
    settings: ServeConfig | None = None,
) -> ServerInfo:
    """Start a model server as a detached process (it outlives the flow). The tracking URI travels
    in the environment, never on the command line (``ps`` shows command lines to every user)."""
    folder = _dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    instance = secrets.token_hex(8)
    control_port = _free_loopback_port()
    log = folder / f"{check_name(name, 'model name')}-{instance}.log"
    cmd = [sys.executable, "-m", "slimflow.models.release.serving", "--model", model_uri, "--host", host,
           "--port", str(port), "--control-port", str(control_port), "--instance", instance,
           *settings_flags(settings or ServeConfig())]  # fmt: skip
    env = dict(os.environ)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    proc = spawn(cmd, log, env)
    return ServerInfo(
        pid=proc.pid,
        start=proc.start,
        instance=instance,
        endpoint=f"http://{host}:{port}",
        control=f"http://127.0.0.1:{control_port}",
        log=str(log),
        model_uri=model_uri,
        started=time.time(),
    )


def _log_tail(log: str | Path, lines: int = 5) -> str:
    p = Path(log)
    if not p.exists():
        return ""
    return " | ".join(p.read_text(errors="replace").strip().splitlines()[-lines:])


def wait_ready(info: ServerInfo, version: str | None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Wait until the server answers /health on its control port *as itself* (its instance id and
    pid) with ``version``. A server that exits first fails at once with its log's tail."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not info.running():
            raise DeployError(
                f"the model server for {info.endpoint} exited before answering: {_log_tail(info.log)}"
            )
        try:
            r = httpx.get(f"{info.control}/health", timeout=2)
            if r.status_code == 200:
                health = r.json()
                if health.get("instance") != info.instance or health.get("pid") != info.pid:
                    raise DeployError(
                        f"{info.control} is answered by another process (pid {health.get('pid')}, "
                        f"model {health.get('model')}), not the server just started (pid {info.pid})"
                    )
                if version is not None and str(health.get("version")) != str(version):
                    raise DeployError(f"the new server serves version {health.get('version')}, not {version}")
                return health
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.3)
    raise DeployError(
        f"the model server for {info.endpoint} did not answer within {timeout_s:.0f} s (last: {last})"
    )


def check_port(endpoint: str, old: ServerInfo | None) -> None:
    """Before starting: a port answered by a server that is not this deployment's is refused."""
    import httpx

    try:
        r = httpx.get(f"{endpoint}/health", timeout=2)
    except httpx.HTTPError:
        return  # nothing answers HTTP there (a non-HTTP holder makes the new server's bind fail)
    try:
        health = r.json() if r.status_code == 200 else {}
    except ValueError:
        health = {}
    if old is not None and health.get("instance") == old.instance:
        return
    what = (
        f"slimflow model server for {health.get('model')} (pid {health.get('pid')})"
        if health.get("instance")
        else f"something else (HTTP {r.status_code} on /health)"
    )
    raise DeployError(
        f"{endpoint} is already served by {what}, not by this deployment; stop it or pick another port"
    )


def verify_public(info: ServerInfo, tries: int = 6) -> None:
    """After the switch: every answer on the public port comes from the new server."""
    import httpx

    for _ in range(tries):
        try:
            health = httpx.get(f"{info.endpoint}/health", timeout=5).json()
        except (httpx.HTTPError, ValueError) as e:
            raise DeployError(
                f"{info.endpoint} does not answer after the switch ({type(e).__name__})"
            ) from None
        if health.get("instance") != info.instance:
            raise DeployError(
                f"{info.endpoint} is also answered by another server (pid {health.get('pid')}, "
                f"model {health.get('model')}): the port is shared with a process this deployment "
                "did not start"
            )


def activate(workdir: str | Path, name: str, new: ServerInfo) -> ServerInfo | None:
    """Record ``new`` as what serves ``name``, then stop the server it replaces (if still running).
    Returns the replaced server."""
    old = current(workdir, name)
    _write_state(workdir, name, new)
    if old is not None and old.instance != new.instance:
        terminate(old.ref, timeout_s=35.0)  # SIGTERM: uvicorn finishes requests in flight first
    return old


def stop_server(info: ServerInfo, timeout_s: float = 10.0) -> bool:
    return terminate(info.ref, timeout_s)


def stop(workdir: str | Path, name: str, timeout_s: float = 35.0) -> bool:
    """Stop the recorded server of ``name`` (only that process); True if one ran."""
    path = state_file(workdir, name)
    info = current(workdir, name)
    path.unlink(missing_ok=True)
    return info is not None and terminate(info.ref, timeout_s)
