"""Local servers for the "real" deployment shape, on loopback by default.

A Prefect server, an MLflow tracking server (sqlite, or PostgreSQL from Debian's package as its
backend store), and optionally a Prefect process worker. Everything lives under one state folder
(default ``.slimflow/servers``): data, logs, and one record per process we started, holding its pid
*and* its start time, so that ``stop`` signals exactly those processes and never an unrelated one
that reused a pid.

Secrets: the PostgreSQL password is generated here, stored 0600 in the state folder and handed to
the MLflow server through ``PGPASSWORD``, never on a command line (``ps`` shows command lines).
The Prefect API requires an auth string by default (``ServerPlan.auth``; ``--no-auth`` turns it off):
``PREFECT_SERVER_API_AUTH_STRING`` when set, else one generated once and kept in
``STATE/prefect/auth`` (0600); it reaches the server, the worker and ``STATE/env`` (which reads the
file when sourced) through the environment. CSRF protection is on, so a browser page elsewhere
cannot make the API act with a user's credentials.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.processes import ProcessRef, process_start, spawn, terminate
from slimflow.models.core.secretfiles import ensure_secret, read_secret, write_secret
from slimflow.models.release.tracking import enable_wal

LOOPBACK = "127.0.0.1"
ORDER = ("worker", "prefect", "mlflow", "postgres")  # stop order: clients before servers


class ServerError(SlimflowError):
    """A server could not be started, reached or stopped; the message says which and why."""


@dataclass
class ServerPlan:
    state_dir: Path = Path(".slimflow/servers")
    host: str = LOOPBACK
    prefect_port: int = 4200
    mlflow_port: int = 5000
    postgres: bool = False
    postgres_port: int = 5433
    worker_pool: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    start_timeout_s: float = 120.0
    auth: bool = True  # the Prefect API requires an auth string (generated unless the env sets one)


# ------------------------------------------------------------------------------- process records
def _records_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "procs"


def _record(state_dir: Path, name: str, pid: int, **extra: Any) -> dict[str, Any]:
    rec = {"name": name, "pid": pid, "start": process_start(pid), **extra}
    d = _records_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(rec, indent=2), encoding="utf-8")
    return rec


def records(state_dir: Path) -> dict[str, dict[str, Any]]:
    d = _records_dir(state_dir)
    out = {}
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out[p.stem] = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return out


def _is_ours(rec: dict[str, Any]) -> bool:
    """The recorded process is still running and is the one we started (same start time)."""
    return ProcessRef.from_record(rec).running()


def _spawn(
    name: str, cmd: list[str], state_dir: Path, env: dict[str, str], cwd: Path | None = None, **extra: Any
) -> dict[str, Any]:
    log = Path(state_dir) / "logs" / f"{name}.log"
    proc = spawn(cmd, log, env, cwd)
    return _record(state_dir, name, proc.pid, cmd=_redact(cmd), log=str(log), **extra)


def _redact(cmd: list[str]) -> list[str]:
    return [("***" if any(s in c.lower() for s in ("password", "auth_string")) else c) for c in cmd]


def _wait_http(
    url: str, timeout_s: float, name: str, log: str, headers: dict[str, str] | None = None
) -> float:
    import httpx

    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout_s:
        try:
            r = httpx.get(url, timeout=3, headers=headers or {})
            if r.status_code == 200:
                return time.monotonic() - t0
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.5)
    raise ServerError(f"{name} did not answer {url} within {timeout_s:.0f} s (last: {last}); see {log}")


def _check_port_free(host: str, port: int, name: str) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServerError(
                f"{name}: {host}:{port} is already in use ({e.strerror}); stop what holds it or pick another"
                f" port (slimflow servers start --{name}-port N)"
            ) from None


# ------------------------------------------------------------------------------------ PostgreSQL
def postgres_bindir() -> Path:
    """Debian's server binaries (postgresql-NN); the newest version when several are installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ServerError(
        "PostgreSQL server binaries not found (initdb): install Debian's package"
        " (apt-get install -y postgresql) or run without --postgres (sqlite backend)"
    )


def _pg_user() -> tuple[int, int] | None:
    """initdb and postgres refuse to run as root: as root we run them as the 'postgres' user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError(
            "running as root, PostgreSQL must run as another user, and there is no 'postgres' user"
            " (Debian's postgresql package creates it)"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _reachable_by(path: Path, uid: int) -> None:
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & 0o001:
            raise ServerError(
                f"PostgreSQL runs as the 'postgres' user, which cannot enter {parent} (mode"
                f" {oct(st.st_mode & 0o777)}): use a state folder it can reach, or chmod o+x {parent}"
            )


def _pg_run(bindir: Path, args: list[str], user: tuple[int, int] | None, **kw: Any) -> None:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    if user:
        kw.update(user=user[0], group=user[1], extra_groups=[])
    r = subprocess.run([str(bindir / args[0]), *args[1:]], check=False, **kw)
    if r.returncode != 0:
        raise ServerError(
            f"PostgreSQL {args[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}"
        )


SHELL_UNSAFE = set('"$`\\\n')


def check_postgres_path(root: Path) -> None:
    """pg_ctl puts the data and log paths into a shell command inside double quotes: spaces and
    single quotes are fine there, but '"', '$', '`', '\\' or a newline would be interpreted."""
    bad = sorted(SHELL_UNSAFE & set(str(root)))
    if bad:
        raise ServerError(
            f"PostgreSQL cannot use the state folder {str(root)!r}: pg_ctl passes it through a shell,"
            f" which would interpret {' '.join(repr(c) for c in bad)}; pick a folder without them (--dir)"
        )


def start_postgres(plan: ServerPlan) -> dict[str, Any]:
    root = (Path(plan.state_dir) / "postgres").resolve()
    check_postgres_path(root)
    bindir = postgres_bindir()
    user = _pg_user()
    data, sock = root / "data", root / "socket"
    pw_file = root / "password"
    root.mkdir(parents=True, exist_ok=True)
    password = ensure_secret(pw_file)
    for d in (data, sock):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)  # one made earlier with another mode
        if user:
            os.chown(d, *user)
    if user:
        _reachable_by(root, user[0])
    if not (data / "PG_VERSION").exists():
        tmp_pw = sock / ".pw"  # readable by the server's user only, removed right after initdb
        write_secret(tmp_pw, password + "\n", uid=user[0] if user else None, gid=user[1] if user else None)
        try:
            _pg_run(
                bindir,
                ["initdb", "-D", str(data), "-U", "slimflow", f"--pwfile={tmp_pw}", "-E", "UTF8",
                 "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--no-instructions"],
                user,
            )  # fmt: skip
        finally:
            tmp_pw.unlink(missing_ok=True)
    _check_port_free(plan.host, plan.postgres_port, "postgres")
    log = Path(plan.state_dir) / "logs" / "postgres.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if user:
        os.chown(log, *user)  # pg_ctl, running as 'postgres', appends to it
    # pg_ctl hands -o to a shell: quote every value (a state folder may hold spaces or quotes)
    opts = shlex.join(["-h", plan.host, "-p", str(plan.postgres_port), "-k", str(sock)])
    _pg_run(bindir, ["pg_ctl", "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"], user)
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    url = f"postgresql://slimflow@{plan.host}:{plan.postgres_port}/mlflow"
    rec = _record(plan.state_dir, "postgres", pid, url=url, data=str(data), bindir=str(bindir), log=str(log))
    _create_db(plan, password, "mlflow")
    return rec


def _create_db(plan: ServerPlan, password: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(
        host=plan.host, port=plan.postgres_port, user="slimflow", password=password, dbname="postgres"
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def postgres_password(state_dir: Path) -> str:
    return read_secret(Path(state_dir) / "postgres" / "password")


# ------------------------------------------------------------------------------ Prefect / MLflow
def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def auth_file(state_dir: Path) -> Path:
    return Path(state_dir) / "prefect" / "auth"


def prefect_auth(plan: ServerPlan) -> tuple[str | None, str]:
    """The auth string the Prefect server will require, and where it comes from ('env', 'file',
    'none'). Generated (and stored 0600) on first use when the environment sets none."""
    if not plan.auth:
        return None, "none"
    if os.environ.get("PREFECT_SERVER_API_AUTH_STRING"):
        return os.environ["PREFECT_SERVER_API_AUTH_STRING"], "env"
    return ensure_secret(auth_file(plan.state_dir), prefix="slimflow:"), "file"


def recorded_auth(state_dir: Path) -> str | None:
    """The auth string of the Prefect server recorded in ``state_dir`` (None when it has none)."""
    rec = records(state_dir).get("prefect") or {}
    source = rec.get("auth", "env")  # records written before auth was the default: the environment's
    if source == "file":
        return read_secret(auth_file(state_dir))
    if source == "env":
        return os.environ.get("PREFECT_API_AUTH_STRING") or os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    return None


def auth_headers(state_dir: Path) -> dict[str, str]:
    """Prefect's basic-auth header for the auth string of the server recorded in ``state_dir``."""
    import base64

    auth = recorded_auth(state_dir)
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def start_prefect(plan: ServerPlan) -> dict[str, Any]:
    _check_port_free(plan.host, plan.prefect_port, "prefect")
    home = (Path(plan.state_dir) / "prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = _base_env()
    env["PREFECT_HOME"] = str(home)  # its sqlite database and profiles live here
    env.pop("PREFECT_API_URL", None)
    auth, source = prefect_auth(plan)
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth  # by environment: never on the command line
    env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] = "true"
    # the UI asks its settings where the API is: without this it sends the browser to :4200
    env["PREFECT_UI_API_URL"] = f"http://{plan.host}:{plan.prefect_port}/api"
    exe = str(Path(sys.executable).parent / "prefect")
    # with its services (the scheduler is what makes cron deployments fire)
    cmd = [exe, "server", "start", "--host", plan.host, "--port", str(plan.prefect_port)]
    url = f"http://{plan.host}:{plan.prefect_port}/api"
    rec = _spawn("prefect", cmd, plan.state_dir, env, url=url, home=str(home), auth=source, csrf=True)
    try:
        rec["ready_s"] = round(_wait_http(f"{url}/health", plan.start_timeout_s, "Prefect server", rec["log"],
                                          auth_headers(plan.state_dir)), 1)  # fmt: skip
    except ServerError:
        stop(plan.state_dir, only=["prefect"])
        raise
    return rec


def mlflow_allowed_hosts(plan: ServerPlan) -> str:
    hosts = {f"{plan.host}:{plan.mlflow_port}", f"{plan.host}", f"localhost:{plan.mlflow_port}", "localhost"}
    return ",".join(sorted(hosts | set(plan.allowed_hosts)))


def start_mlflow(plan: ServerPlan, backend: str | None = None) -> dict[str, Any]:
    _check_port_free(plan.host, plan.mlflow_port, "mlflow")
    root = (Path(plan.state_dir) / "mlflow").resolve()
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    env = _base_env()
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job processes
    if backend is None:
        backend = f"sqlite:///{root / 'mlflow.db'}"
        enable_wal(root / "mlflow.db")  # a server with several workers or clients writes concurrently
    else:
        env["PGPASSWORD"] = postgres_password(plan.state_dir)
    exe = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        exe, "server", "--host", plan.host, "--port", str(plan.mlflow_port), "--workers", "1",
        "--backend-store-uri", backend, "--artifacts-destination", str(root / "artifacts"),
        "--allowed-hosts", mlflow_allowed_hosts(plan),
    ]  # fmt: skip
    url = f"http://{plan.host}:{plan.mlflow_port}"
    rec = _spawn("mlflow", cmd, plan.state_dir, env, url=url, backend=backend.split("@")[-1])
    try:
        rec["ready_s"] = round(
            _wait_http(f"{url}/health", plan.start_timeout_s, "MLflow server", rec["log"]), 1
        )
    except ServerError:
        stop(plan.state_dir, only=["mlflow"])
        raise
    return rec


def client_env(state_dir: Path, secrets: bool = True) -> dict[str, str]:
    """What a client (CLI, worker, tests) needs to use the running servers; with ``secrets`` the
    Prefect auth string too (keep such a dict out of files, logs and command lines)."""
    recs = records(state_dir)
    env = {}
    if "prefect" in recs:
        env["PREFECT_API_URL"] = recs["prefect"]["url"]
        auth = recorded_auth(state_dir) if secrets else None
        if auth:
            env["PREFECT_API_AUTH_STRING"] = auth
    if "mlflow" in recs:
        env["MLFLOW_TRACKING_URI"] = recs["mlflow"]["url"]
    return env


def env_file_text(state_dir: Path) -> str:
    """``STATE/env`` for ``source``: URLs, and the auth string read from its 0600 file when sourced
    (the env file itself holds no secret)."""
    lines = [f"export {k}={shlex.quote(v)}\n" for k, v in client_env(state_dir, secrets=False).items()]
    source = (records(state_dir).get("prefect") or {}).get("auth")
    if source == "file":
        path = shlex.quote(str(auth_file(state_dir).resolve()))
        lines.append(f'export PREFECT_API_AUTH_STRING="$(cat {path})"\n')
    elif source == "env":
        lines.append("# the Prefect server takes the auth string from PREFECT_SERVER_API_AUTH_STRING:\n")
        lines.append("# export PREFECT_API_AUTH_STRING=... in the shell that uses it\n")
    return "".join(lines)


def start_worker(plan: ServerPlan, project_dir: Path) -> dict[str, Any]:
    env = _base_env()
    env.pop("PREFECT_API_AUTH_STRING", None)
    env.update(client_env(plan.state_dir))  # the auth string by environment
    env["SLIMFLOW_PROJECT_DIR"] = str(Path(project_dir).resolve())
    exe = str(Path(sys.executable).parent / "prefect")
    pool = plan.worker_pool or "slimflow-process"
    r = subprocess.run(
        [exe, "work-pool", "create", pool, "--type", "process", "--overwrite"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise ServerError(f"could not create work pool {pool!r}: {(r.stderr or r.stdout).strip()[-600:]}")
    cmd = [exe, "worker", "start", "--pool", pool, "--type", "process", "--name", f"slimflow-{os.getpid()}"]
    return _spawn("worker", cmd, plan.state_dir, env, cwd=Path(project_dir), pool=pool)


# ------------------------------------------------------------------------------- start/stop/status
def start(plan: ServerPlan, project_dir: Path | None = None) -> dict[str, Any]:
    """Start what ``plan`` asks for, skipping servers already running from this state folder.
    On any failure, what this call started is stopped again."""
    state = Path(plan.state_dir)
    if plan.postgres:
        check_postgres_path((state / "postgres").resolve())  # before anything is created
    state.mkdir(parents=True, exist_ok=True)
    running = {n for n, r in records(state).items() if _is_ours(r)}
    started: list[str] = []
    try:
        if plan.postgres and "postgres" not in running:
            start_postgres(plan)
            started.append("postgres")
        if "mlflow" not in running:
            backend = records(state)["postgres"]["url"] if plan.postgres else None
            start_mlflow(plan, backend)
            started.append("mlflow")
        if "prefect" not in running:
            start_prefect(plan)
            started.append("prefect")
        if plan.worker_pool and "worker" not in running:
            start_worker(plan, project_dir or Path.cwd())
            started.append("worker")
    except BaseException:
        stop(state, only=started)
        raise
    info = {"started": started, "already_running": sorted(running), "env": client_env(state, secrets=False)}
    env_file = state / "env"
    write_secret(env_file, env_file_text(state))  # 0600 anyway: it names where the secret lives
    info["env_file"] = str(env_file)
    (state / "servers.json").write_text(json.dumps({**info, "plan": asdict(plan)}, indent=2, default=str))
    info["env"] = client_env(state)  # for the caller's child processes, never written
    info["auth"] = (records(state).get("prefect") or {}).get("auth", "none")
    return info


def stop(state_dir: Path, only: list[str] | None = None, timeout_s: float = 20.0) -> list[str]:
    """Stop the processes recorded in ``state_dir`` (workers first, PostgreSQL last). A record whose
    pid now belongs to another process (different start time) is dropped without signalling it."""
    recs = records(state_dir)
    stopped = []
    for name in ORDER:
        if name not in recs or (only is not None and name not in only):
            continue
        rec = recs[name]
        if _is_ours(rec):
            if name == "postgres":
                user = _pg_user()
                try:
                    _pg_run(
                        Path(rec["bindir"]), ["pg_ctl", "-D", rec["data"], "-m", "fast", "-w", "stop"], user
                    )
                except ServerError:
                    pass
                terminate(ProcessRef.from_record(rec), timeout_s)
            else:
                # SIGTERM twice (Prefect's worker and server shut down cleanly on the second at the latest)
                terminate(ProcessRef.from_record(rec), timeout_s, sigterms=2)
            stopped.append(name)
        (_records_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)
    return stopped


def status(state_dir: Path) -> dict[str, dict[str, Any]]:
    return {n: {**r, "running": _is_ours(r)} for n, r in records(state_dir).items()}
