"""The OpenAI-compatible routes of a generative candidate (a tiny causal LM fine-tuned here and
built with onnxruntime-genai): whole and streamed answers agree with the model's greedy answer,
concurrent clients all get theirs, limits answer with the right status and never echo input."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pandas as pd
import pytest

from slimflow.models.release.config import ServeConfig

BASE = "http://slimflow.test"


@pytest.fixture(scope="module")
def served(tiny_genai_candidate):
    from slimflow.models.release.serving import _Served

    return _Served(str(tiny_genai_candidate))


@pytest.fixture(scope="module")
def prompts(tiny_sft) -> list[list[dict]]:
    _, _, prepared = tiny_sft
    return [json.loads(p) for p in pd.read_parquet(prepared.path("test"))["prompt"].head(8)]


async def _post(app, path: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, timeout=60) as c:
        return await c.post(path, json=body)


def _events(resp: httpx.Response) -> list[dict | str]:
    out: list[dict | str] = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_chat_completion_whole_and_streamed_give_the_greedy_answer(served, prompts) -> None:
    from slimflow.models.release.serving import create_app

    app = create_app(served, "models:/tiny-llm@champion", "2", ServeConfig())
    want = served.generator.predict([json.dumps(prompts[0])])[0]
    whole = asyncio.run(_post(app, "/v1/chat/completions", {"messages": prompts[0], "max_tokens": 8}))
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["object"] == "chat.completion" and body["model"] == "models:/tiny-llm@champion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want} and choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(served.generator.prompt_ids(prompts[0]))
    assert (
        usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > usage["prompt_tokens"]
    )

    streamed = asyncio.run(
        _post(app, "/v1/chat/completions", {"messages": prompts[0], "max_tokens": 8, "stream": True})
    )
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_length_finish_and_plain_completions(served, prompts) -> None:
    from slimflow.models.release.serving import create_app

    app = create_app(served, "m", None, ServeConfig())
    cut = asyncio.run(_post(app, "/v1/chat/completions", {"messages": prompts[1], "max_tokens": 1}))
    assert cut.json()["choices"][0]["finish_reason"] == "length"
    assert cut.json()["usage"]["completion_tokens"] == 1
    prompt = "the film was good and"
    gen = served.generator
    ids = gen.text_ids(prompt)
    want = gen.tokenizer.decode(gen.runner.generate(ids, 5, gen.ends), skip_special_tokens=True)
    whole = asyncio.run(_post(app, "/v1/completions", {"prompt": prompt, "max_tokens": 5})).json()
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == want
    streamed = asyncio.run(_post(app, "/v1/completions", {"prompt": prompt, "max_tokens": 5, "stream": True}))
    chunks = [e for e in _events(streamed) if isinstance(e, dict)]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want


def test_concurrent_chat_clients_all_get_their_own_answers(served, prompts) -> None:
    from slimflow.models.release.serving import create_app

    app = create_app(served, "m", None, ServeConfig(workers=4, max_concurrent=64))
    alone = served.generator.predict([json.dumps(p) for p in prompts])

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/v1/chat/completions", json={"messages": p, "max_tokens": 8, "stream": i % 2 == 1}
                    )
                    for i, p in enumerate(prompts * 3)
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(responses)
    for i, (r, want) in enumerate(zip(responses, alone * 3, strict=True)):
        if i % 2:
            got = "".join(
                e["choices"][0]["delta"].get("content", "") for e in _events(r) if isinstance(e, dict)
            )
        else:
            got = r.json()["choices"][0]["message"]["content"]
        assert got == want


def test_limits_and_unsupported_sampling_are_refused_by_name_without_echo(served, prompts) -> None:
    from slimflow.models.release.serving import create_app

    secret = "confidential-prompt-text"
    settings = ServeConfig(max_body_bytes=8 * 1024, max_chars=300, max_new_tokens=16)
    app = create_app(served, "m", None, settings)
    msg = [{"role": "user", "content": secret}]
    cases = {
        "temperature": ({"messages": msg, "temperature": 0.7}, 422, "temperature"),
        "n": ({"messages": msg, "n": 2}, 422, "one choice"),
        "stop": ({"messages": msg, "stop": ["\n"]}, 422, "stop sequences"),
        "tokens": ({"messages": msg, "max_tokens": 17}, 422, "at most 16 new tokens"),
        "chars": ({"messages": [{"role": "user", "content": secret * 20}]}, 422, "over 300"),
        "role": ({"messages": [{"role": "wizard", "content": secret}]}, 422, "role"),
        "empty": ({"messages": []}, 422, "messages"),
        "extra": ({"messages": msg, "logit_bias": {"1": 5}}, 422, "logit_bias"),
        "body": ({"messages": [{"role": "user", "content": "x" * 9000}]}, 413, "max_body_bytes"),
    }
    for name, (body, status, words) in cases.items():
        r = asyncio.run(_post(app, "/v1/chat/completions", body))
        assert r.status_code == status, (name, r.text[:300])
        assert words in r.text and secret not in r.text, (name, r.text[:300])
    ok = asyncio.run(_post(app, "/v1/chat/completions", {"messages": msg, "temperature": 0, "max_tokens": 2}))
    assert ok.status_code == 200
    small = create_app(served, "m", None, ServeConfig(max_new_tokens=100_000))
    served.generator.context_length, before = 40, served.generator.context_length
    try:
        r = asyncio.run(_post(small, "/v1/chat/completions", {"messages": prompts[0], "max_tokens": 30}))
    finally:
        served.generator.context_length = before
    assert r.status_code == 400 and "exceeds the model's context of 40 tokens" in r.text


class _BlockingGenerator:
    """A generative predictor whose answers wait for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.context_length = 1000

    def prompt_ids(self, turns):
        return [1, 2, 3]

    def text_ids(self, text):
        return [1, 2, 3]

    def stream(self, ids, n):
        self.release.wait(30)
        yield "ok", 1


class _Generative:
    def __init__(self) -> None:
        from slimflow.models.families import get_family

        self.family = get_family("causal-lm")
        self.generator = _BlockingGenerator()

    def predict_records(self, inputs):
        return [{"text": "ok"} for _ in inputs]


def test_busy_generation_answers_503_and_health_stays_fast() -> None:
    from slimflow.models.release.serving import create_app

    model = _Generative()
    app = create_app(model, "m", None, ServeConfig(max_concurrent=2, workers=2))
    body = {"messages": [{"role": "user", "content": "hi"}]}

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, timeout=60) as c:
            held = [
                asyncio.create_task(c.post("/v1/chat/completions", json={**body, "stream": s}))
                for s in (0, 1)
            ]
            while app.in_flight < 2:
                await asyncio.sleep(0.01)
            busy = await c.post("/v1/completions", json={"prompt": "one more"})
            health = await c.get("/health")
            await asyncio.to_thread(model.generator.release.set)
            return busy, health, await asyncio.gather(*held)

    busy, health, done = asyncio.run(run())
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert health.status_code == 200 and health.json()["in_flight"] == 2
    assert [r.status_code for r in done] == [200, 200]
