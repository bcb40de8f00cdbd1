"""The model server for a registered model: ``POST /predict`` (a batch of inputs) and ``GET /health``.
Binds to 127.0.0.1 unless told otherwise.

    python -m slimflow.models.release.serving --model models:/NAME@champion --tracking-uri URI --port 8088

Request and response bodies are the task family's (classification: ``{"texts": [...]}`` in, labels
with scores out). Built to sit behind real traffic:

* limits (``ServeConfig``): a body over ``max_body_bytes`` is refused with 413 before it is read
  whole; too many or too long texts, wrong types and invalid Unicode get 422 naming the field and
  position, never echoing the input; more than ``max_concurrent`` prediction requests get 503 with
  Retry-After;
* predictions run on a small pool of model threads (``workers``), with dynamic batching: requests
  arriving within ``batch_window_ms`` share one model call of up to ``max_batch_texts`` texts;
* ``/health`` runs on the event loop, so it answers at once however busy the model is, and names
  the served model, version, process and instance (a deploy checks that it talks to its own server).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.names import parse_model_uri
from slimflow.models.core.yamlfiles import load_yaml
from slimflow.models.optimize.predictors import CANDIDATE_FILE
from slimflow.models.release import tracking
from slimflow.models.release.config import ServeConfig
from slimflow.models.release.registry import RegistryError, check_artifacts


def load_registered(model_uri: str, tracking_uri: str | None) -> tuple[Any, str | None]:
    """The pyfunc model and its registry version (None for a plain path)."""
    import mlflow

    tracking.bounded_waits()
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

    @property
    def generator(self) -> Any:
        """The generative predictor (prompts in, streamed text out), for the OpenAI-style routes."""
        return self.impl.predictor if self.family.generative else None

    def predict(self, frame: Any) -> Any:
        return self.impl.predict(None, frame)

    def predict_records(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """One response record per input, in order (the server's model call); a model that routes
        between parts (a cascade) also says which part answered each."""
        predictor = self.impl.predictor
        if not inputs:
            return []
        routed = getattr(predictor, "predict_routed", None)
        if routed is None:
            return self.family.predictions(predictor.predict(inputs), predictor.info.labels)
        outputs, parts = routed(inputs)
        records = self.family.predictions(outputs, predictor.info.labels)
        return [{**r, "answered_by": part} for r, part in zip(records, parts, strict=True)]


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

    for mlmodel in sorted(local.rglob("MLmodel"), key=lambda q: len(q.parts)):
        flavors = (load_yaml(mlmodel.read_text(encoding="utf-8"), str(mlmodel)) or {}).get("flavors", {})
        art = (flavors.get("python_function", {}).get("artifacts") or {}).get("candidate") or {}
        path = (mlmodel.parent / str(art.get("path", ""))).resolve()
        if art.get("path") and path.is_dir() and path.is_relative_to(mlmodel.parent.resolve()):
            return path
    hits = sorted(local.rglob(CANDIDATE_FILE), key=lambda q: len(q.parts))
    if not hits:
        raise RegistryError(f"{model_uri}: holds no slimflow candidate; refusing to load it")
    return hits[0].parent


async def _send_json(
    send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware in front of the app: the body-size and concurrency limits of ``/predict``,
    enforced before anything is parsed. The body is read here, at most ``max_body_bytes`` of it,
    and replayed to the app."""

    def __init__(self, app: Any, settings: ServeConfig, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app = app
        self.settings = settings
        self.paths = set(paths)
        self.in_flight = 0
        self.refused = {"413": 0, "503": 0}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if size > limit:
                self.refused["413"] += 1
                msg = f"request body of {size} bytes is over the server's limit of {limit} bytes"
                await _send_json(send, 413, {"detail": msg + " (max_body_bytes)"})
                return
        if self.in_flight >= self.settings.max_concurrent:
            self.refused["503"] += 1
            await _send_json(
                send,
                503,
                {"detail": f"server busy: {self.in_flight} prediction requests in progress "
                           f"(max_concurrent {self.settings.max_concurrent}); retry shortly"},
                {"retry-after": "1"},
            )  # fmt: skip
            return
        self.in_flight += 1
        try:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > limit:  # chunked bodies declare no length: counted as they come
                    self.refused["413"] += 1
                    msg = f"request body is over the server's limit of {limit} bytes (max_body_bytes)"
                    await _send_json(send, 413, {"detail": msg})
                    return
                if not message.get("more_body", False):
                    break
            try:
                bytes(body).decode("utf-8")
            except UnicodeDecodeError as e:  # JSON is UTF-8 (RFC 8259); say where, not what
                await _send_json(send, 422, {"detail": f"request body is not valid UTF-8 (byte {e.start})"})
                return
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1


def create_app(
    model: Any,
    model_uri: str,
    version: str | None,
    settings: ServeConfig | None = None,
    instance: str = "",
) -> Any:
    """The ASGI app serving ``model`` (anything with ``family`` and ``predict_records``)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from slimflow.models.release.batching import Batcher

    settings = settings or ServeConfig()
    family = model.family
    PredictRequest = family.request_schema(settings.max_texts, settings.max_chars)
    PredictResponse = family.response_schema()
    batcher = Batcher(
        model.predict_records,
        batching=settings.batching,
        window_s=settings.batch_window_ms / 1000,
        max_items=settings.max_batch_texts,
        workers=settings.workers,
        pending=lambda: guard.in_flight,
    )

    pools: list[Any] = []

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        yield
        await batcher.stop()
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="slimflow model server", version="1", lifespan=lifespan)
    started = time.time()
    name = None
    if model_uri.startswith("models:/"):
        name = parse_model_uri(model_uri)[0]

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input back (all 10,000 texts of a too-long list)
        errors = exc.errors()
        detail = [
            {"loc": list(e.get("loc", ()))[:6], "msg": str(e.get("msg", ""))[:300], "type": e.get("type")}
            for e in errors[:10]
        ]
        return JSONResponse({"detail": detail, "errors": len(errors)}, status_code=422)

    @app.get("/health")
    async def health() -> dict[str, Any]:  # async: answered by the event loop, never queued
        return {
            "status": "ok",
            "name": name,
            "model": model_uri,
            "version": version,
            "pid": os.getpid(),
            "instance": instance,
            "uptime_s": round(time.time() - started, 1),
            "in_flight": guard.in_flight,
            "refused": dict(guard.refused),
            "model_calls": batcher.calls,
            "inputs_predicted": batcher.items,
            "settings": settings.model_dump(),
        }

    async def predict(req: Any) -> Any:
        out = await batcher.submit(req.inputs())
        return {"predictions": out, "model": model_uri, "version": version}

    # the body type is the family's, known only now: give FastAPI the class itself, not a name
    predict.__annotations__ = {"req": PredictRequest, "return": Any}
    app.post("/predict", response_model=PredictResponse)(predict)
    paths: tuple[str, ...] = ("/predict",)
    if getattr(model, "generator", None) is not None:  # generative families: OpenAI-style routes too
        from slimflow.models.release import openai_api

        pools.append(openai_api.add_routes(app, model.generator, model_uri, settings))
        paths += openai_api.ROUTES
    guard = Guard(app, settings, paths)
    return guard


def _settings_args(ap: argparse.ArgumentParser) -> None:
    """One --flag per ServeConfig field, with its description as help."""
    for key, field in ServeConfig.model_fields.items():
        flag = "--" + key.replace("_", "-")
        if field.annotation is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                            help=field.description)  # fmt: skip
        else:
            ap.add_argument(flag, type=field.annotation, default=field.default,
                            help=f"{field.description} (default: {field.default})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a model path")
    ap.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI; pass credentials by environment)",
    )
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ap.add_argument("--port", type=int, default=8088)
    ap.add_argument("--instance", default="", help="an id /health reports (deploys check it)")
    ap.add_argument(
        "--control-port",
        type=int,
        default=0,
        help="also answer on this loopback port, which no other server shares (deploys smoke-test "
        "the new server there before it takes over; 0 = none)",
    )
    _settings_args(ap)
    args = ap.parse_args(argv)
    from pydantic import ValidationError

    try:
        settings = ServeConfig(**{k: getattr(args, k) for k in ServeConfig.model_fields})
    except ValidationError as e:
        ap.error("; ".join(f"--{str(x['loc'][0]).replace('_', '-')}: {x['msg']}" for x in e.errors()))
    import uvicorn

    from slimflow.models.core.env import apply_defaults

    apply_defaults()
    sockets = [listen(args.host, args.port, shared=True)]
    if args.control_port:
        sockets.append(listen("127.0.0.1", args.control_port, shared=False))
    try:
        model, version = load_registered(
            args.model, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        )
    except (SlimflowError, OSError) as e:  # one line in the log a deploy shows, not a traceback
        for sock in sockets:
            sock.close()
        raise SystemExit(f"slimflow model server: cannot load {args.model}: {e}") from None
    config = uvicorn.Config(
        create_app(model, args.model, version, settings, args.instance),
        log_level="warning",
        # a backstop for connections of any kind (the Guard answers /predict's own limit with 503)
        limit_concurrency=settings.max_concurrent + 64,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run(sockets=sockets)


def listen(host: str, port: int, shared: bool) -> Any:
    """A listening socket. ``shared`` sets SO_REUSEPORT: the next deployment's server binds the same
    port while this one still serves (blue/green without a proxy); a port held by any other kind of
    process stays refused, and the server exits saying so."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of sockets that say
    # TCP; without it each response (headers, then body) waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(
            f"slimflow model server: cannot listen on {host}:{port}: {e.strerror}. Another process holds"
            " the port (also an older slimflow server that did not share its port: stop that one with"
            " `slimflow deploy --stop`)."
        ) from None
    sock.listen(2048)
    return sock


if __name__ == "__main__":
    main()
