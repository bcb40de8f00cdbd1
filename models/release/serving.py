"""A small HTTP server for a registered model: ``POST /predict`` (a batch of texts) and
``GET /health``. Binds to 127.0.0.1 unless told otherwise.

    python -m slimflow.models.release.serving --model models:/NAME@champion --tracking-uri URI --port 8088

The request and response bodies are the task family's (classification: ``{"texts": [...]}`` in,
labels with scores out). Requests are validated by pydantic (FastAPI answers 422 with the reason
for a malformed body, too many inputs or an over-long text); the model runs in a thread pool so
the event loop stays free.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from slimflow.models.core.names import check_name, parse_model_uri
from slimflow.models.core.processes import alive, is_zombie
from slimflow.models.optimize.predictors import CANDIDATE_FILE
from slimflow.models.release import tracking
from slimflow.models.release.registry import RegistryError, check_artifacts

MAX_BATCH = 1024
MAX_CHARS = 20_000


def load_registered(model_uri: str, tracking_uri: str | None) -> tuple[Any, str | None]:
    """The pyfunc model and its registry version (None for a plain path)."""
    import mlflow

    if tracking_uri:
        tracking.use(tracking_uri)
    version = None
    if model_uri.startswith("models:/"):
        name, alias, version = parse_model_uri(model_uri)
        if alias:
            version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
            model_uri = f"models:/{name}/{version}"  # pin: an alias moving later must not change this server
    return load_as_data(model_uri), version


class _Context:
    def __init__(self, candidate: str) -> None:
        self.artifacts = {"candidate": candidate}


class _Served:
    """The registered model's own predictor, loaded as data: the downloaded entry code is not run."""

    def __init__(self, candidate: str) -> None:
        from slimflow.models.release.pyfunc import SlimflowModel

        self.impl = SlimflowModel()
        self.impl.load_context(_Context(candidate))

    @property
    def family(self) -> Any:
        return self.impl.predictor.family

    def predict(self, frame: Any) -> Any:
        return self.impl.predict(None, frame)


def load_as_data(model_uri: str) -> Any:
    """Download a registered model (or take a local one) and load it without executing anything
    that came with it: no unpickling, no downloaded code; weights from safetensors or ONNX only.
    A download holding pickle-type files, or not made by slimflow, is refused with the reason."""
    import mlflow

    local = (
        Path(model_uri)
        if Path(model_uri).exists()
        else Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    )
    check_artifacts(local)
    return _Served(str(candidate_dir(local, model_uri)))


def candidate_dir(local: Any, model_uri: str) -> Any:
    """The candidate folder inside a downloaded model: where its MLmodel says the 'candidate'
    artifact is, else the shallowest folder holding candidate.json."""
    import yaml

    for mlmodel in sorted(local.rglob("MLmodel"), key=lambda q: len(q.parts)):
        flavors = (yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}).get("flavors", {})
        art = (flavors.get("python_function", {}).get("artifacts") or {}).get("candidate") or {}
        path = (mlmodel.parent / str(art.get("path", ""))).resolve()
        if art.get("path") and path.is_dir() and path.is_relative_to(mlmodel.parent.resolve()):
            return path
    hits = sorted(local.rglob(CANDIDATE_FILE), key=lambda q: len(q.parts))
    if not hits:
        raise RegistryError(f"{model_uri}: holds no slimflow candidate; refusing to load it")
    return hits[0].parent


def create_app(model: Any, model_uri: str, version: str | None) -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool

    family = model.family
    PredictRequest = family.request_schema(MAX_BATCH, MAX_CHARS)
    PredictResponse = family.response_schema()
    app = FastAPI(title="slimflow model server", version="1")
    started = time.time()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_uri,
            "version": version,
            "uptime_s": round(time.time() - started, 1),
        }

    async def predict(req: Any) -> Any:
        try:
            req.check()
        except ValueError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        out = await run_in_threadpool(model.predict, req.inputs())
        return {"predictions": out.to_dict(orient="records"), "model": model_uri, "version": version}

    # the body type is the family's, known only now: give FastAPI the class itself, not a name
    predict.__annotations__ = {"req": PredictRequest, "return": Any}
    app.post("/predict", response_model=PredictResponse)(predict)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a model path")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ap.add_argument("--port", type=int, default=8088)
    args = ap.parse_args(argv)
    import uvicorn

    from slimflow.models.core.env import apply_defaults

    apply_defaults()
    model, version = load_registered(args.model, args.tracking_uri)
    uvicorn.run(create_app(model, args.model, version), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------ process control
def _state_file(workdir: Any, name: str) -> Any:
    return Path(workdir) / "deploy" / f"{check_name(name, 'model name')}.json"


def start(
    model_uri: str,
    tracking_uri: str | None,
    workdir: Any,
    name: str,
    host: str = "127.0.0.1",
    port: int = 8088,
) -> dict[str, Any]:
    """Start the server as a detached process (it outlives the flow); log and state under workdir."""
    import json
    import os
    import subprocess
    import sys

    state = _state_file(workdir, name)
    state.parent.mkdir(parents=True, exist_ok=True)
    log = state.with_suffix(".log").open("ab")
    cmd = [sys.executable, "-m", "slimflow.models.release.serving", "--model", model_uri, "--host", host,
           "--port", str(port)]  # fmt: skip
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
    )
    info = {
        "pid": proc.pid,
        "log": str(state.with_suffix(".log")),
        "endpoint": f"http://{host}:{port}",
        "model_uri": model_uri,
        "started": time.time(),
    }
    state.write_text(json.dumps(info), encoding="utf-8")
    return info


def stop(workdir: Any, name: str, timeout_s: float = 10.0) -> bool:
    """Stop the server started by ``start`` for ``name`` (only that process); True if one ran."""
    import json
    import os
    import signal

    state = _state_file(workdir, name)
    if not state.exists():
        return False
    pid = int(json.loads(state.read_text(encoding="utf-8"))["pid"])
    state.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
            if is_zombie(pid):
                break
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    return True


def wait_healthy(
    endpoint: str, timeout_s: float = 120.0, pid: int | None = None, log: Any = None
) -> dict[str, Any]:
    """Wait for /health; a server process that exits first fails at once with its log's tail."""
    import httpx

    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        if pid is not None and (is_zombie(pid) or not alive(pid)):
            tail = ""
            if log is not None and Path(log).exists():
                tail = ": " + " | ".join(Path(log).read_text(errors="replace").strip().splitlines()[-5:])
            raise RuntimeError(f"the model server for {endpoint} exited before answering{tail}")
        try:
            r = httpx.get(f"{endpoint}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.5)
    raise TimeoutError(f"{endpoint} not healthy after {timeout_s:.0f} s (last: {last})")
