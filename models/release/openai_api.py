"""OpenAI-compatible routes for generative models: ``POST /v1/chat/completions`` and
``POST /v1/completions``, streamed as server-sent events (``"stream": true``) or answered whole.

Greedy decoding only (what the pipeline measured and gated): ``temperature`` must be 0 or left out,
``top_p`` 1, ``n`` 1; anything else is refused with 422 naming the field, as are stop sequences
(not supported yet). The server's limits apply as to ``/predict`` (the Guard in serving.py counts
these routes: body size 413, concurrency 503), plus ``max_new_tokens`` per request and the model's
context length (400 naming both numbers). Generation runs on the server's model threads; a client
that goes away stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimflow.models.release.config import ServeConfig

ROUTES = ("/v1/chat/completions", "/v1/completions")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None


class _Common(BaseModel):
    """Fields both routes share. ``user`` and ``seed`` are accepted and have no effect (greedy
    decoding is deterministic)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Ignored: the server serves one model.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _greedy_only(self) -> _Common:
        if self.temperature not in (None, 0, 0.0):
            raise ValueError("temperature: this server decodes greedily; send 0 or leave it out")
        if self.top_p not in (None, 1, 1.0):
            raise ValueError("top_p: this server decodes greedily; send 1 or leave it out")
        if self.n not in (None, 1):
            raise ValueError("n: one choice per request")
        if self.stop:
            raise ValueError("stop: stop sequences are not supported yet")
        return self


def request_models(settings: ServeConfig) -> tuple[type[BaseModel], type[BaseModel]]:
    """The two request bodies, bounded by the server's limits (errors name fields, never echo)."""

    def _bounded_tokens(v: int | None) -> int | None:
        if v is not None and v > settings.max_new_tokens:
            raise ValueError(f"at most {settings.max_new_tokens} new tokens per request (max_new_tokens)")
        return v

    class ChatCompletionRequest(_Common):
        messages: list[Message] = Field(..., min_length=1, max_length=settings.max_texts)
        max_completion_tokens: int | None = Field(None, ge=1)

        @field_validator("messages")
        @classmethod
        def _chars(cls, v: list[Message]) -> list[Message]:
            total = sum(len(m.content) for m in v)
            if total > settings.max_chars:
                raise ValueError(f"messages hold {total} characters, over {settings.max_chars} (max_chars)")
            return v

        @field_validator("max_tokens", "max_completion_tokens")
        @classmethod
        def _tokens(cls, v: int | None) -> int | None:
            return _bounded_tokens(v)

        def new_tokens(self) -> int:
            return self.max_completion_tokens or self.max_tokens or settings.max_new_tokens

    class CompletionRequest(_Common):
        prompt: str = Field(..., min_length=1)

        @field_validator("prompt")
        @classmethod
        def _chars(cls, v: str) -> str:
            if len(v) > settings.max_chars:
                raise ValueError(f"prompt is longer than {settings.max_chars} characters (max_chars)")
            return v

        @field_validator("max_tokens")
        @classmethod
        def _tokens(cls, v: int | None) -> int | None:
            return _bounded_tokens(v)

        def new_tokens(self) -> int:
            return self.max_tokens or min(16, settings.max_new_tokens)  # OpenAI's default is 16

    return ChatCompletionRequest, CompletionRequest


def add_routes(app: Any, generator: Any, model_uri: str, settings: ServeConfig) -> ThreadPoolExecutor:
    """Mount both routes on ``app`` for ``generator`` (a ``GenerativePredictor``); returns the
    thread pool generation runs on (the caller shuts it down)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="generate")
    ChatRequest, CompletionRequest = request_models(settings)

    def too_long(n_prompt: int, n_new: int) -> JSONResponse | None:
        if n_prompt + n_new > generator.context_length:
            msg = (f"prompt of {n_prompt} tokens plus {n_new} new tokens exceeds the model's context of "
                   f"{generator.context_length} tokens")  # fmt: skip
            return JSONResponse({"detail": msg}, status_code=400)
        return None

    async def run(ids: list[int], n_new: int, kind: str, stream: bool) -> Any:
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        loop = asyncio.get_running_loop()
        if not stream:

            def whole() -> tuple[str, int]:
                pieces = list(generator.stream(ids, n_new))
                return "".join(p for p, _ in pieces), (pieces[-1][1] if pieces else 0)

            text, count = await loop.run_in_executor(pool, whole)
            finish = "length" if count >= n_new else "stop"
            usage = {"prompt_tokens": len(ids), "completion_tokens": count, "total_tokens": len(ids) + count}
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            obj = "chat.completion" if kind == "chat" else "text_completion"
            return {"id": rid, "object": obj, "created": created, "model": model_uri, "choices": [choice],
                    "usage": usage}  # fmt: skip
        return StreamingResponse(
            _events(generator, pool, ids, n_new, kind, rid, created, model_uri),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def chat(req: Any) -> Any:
        ids = await asyncio.get_running_loop().run_in_executor(
            pool, generator.prompt_ids, [m.model_dump(exclude_none=True) for m in req.messages]
        )
        n_new = req.new_tokens()
        return too_long(len(ids), n_new) or await run(ids, n_new, "chat", req.stream)

    async def completions(req: Any) -> Any:
        ids = await asyncio.get_running_loop().run_in_executor(pool, generator.text_ids, req.prompt)
        n_new = req.new_tokens()
        return too_long(len(ids), n_new) or await run(ids, n_new, "text", req.stream)

    chat.__annotations__ = {"req": ChatRequest, "return": Any}
    completions.__annotations__ = {"req": CompletionRequest, "return": Any}
    app.post("/v1/chat/completions")(chat)
    app.post("/v1/completions")(completions)
    return pool


async def _events(
    generator: Any, pool: ThreadPoolExecutor, ids: list[int], n_new: int, kind: str, rid: str, created: int,
    model_uri: str,
) -> AsyncIterator[bytes]:  # fmt: skip
    """Server-sent events: one chunk per text piece as it is generated, a last chunk with the
    finish reason, then ``[DONE]``. The generation thread stops when the client is gone."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, int] | None | BaseException] = asyncio.Queue()
    gone = False

    def produce() -> None:
        try:
            for item in generator.stream(ids, n_new):
                if gone:
                    return
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as e:  # noqa: BLE001 - handed to the event loop, which reports it
            loop.call_soon_threadsafe(queue.put_nowait, e)
            return
        loop.call_soon_threadsafe(queue.put_nowait, None)

    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(delta: dict[str, Any] | str, finish: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if kind == "chat":
            choice["delta"] = delta
        else:
            choice["text"] = delta
        body = {"id": rid, "object": obj, "created": created, "model": model_uri, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n".encode()

    loop.run_in_executor(pool, produce)
    count = 0
    try:
        if kind == "chat":
            yield chunk({"role": "assistant", "content": ""}, None)
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            piece, count = item
            yield chunk({"content": piece} if kind == "chat" else piece, None)
        yield chunk({} if kind == "chat" else "", "length" if count >= n_new else "stop")
        yield b"data: [DONE]\n\n"
    finally:  # done, or the client went away: the thread stops at its next token
        gone = True
