"""Scoring a generator on encoded chat examples: exact match of its greedy answers and perplexity
over the whole conversations. ``runner`` is anything with ``logits(ids)`` and
``generate(ids, max_new_tokens, stop)`` (onnxruntime-genai, PyTorch, Optimum runners).

A runner that also has ``session(length)`` (onnxruntime-genai, PyTorch) is walked row by row on one
key/value cache: the prefix every prompt shares (the chat template's system turn and the task's
question: 41 of the quickstart's 72 prompt tokens) runs once, and each row rewinds to it, appends
its own tokens, decodes its answer, rewinds to its prompt and appends the rest of its conversation
for the perplexity. A session has ``append(ids) -> logits [len(ids), vocab]``, ``greedy(max_new_tokens,
stop) -> tokens`` (decoding after the last append, end tokens left out) and ``rewind(length)``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from slimflow.models.families.causal_lm.chat import normalize_answer, shared_prefix


@dataclass
class Quality:
    """A candidate's answers and language modelling against the fine-tuned FP32 model."""

    exact_match: float
    perplexity: float
    answers: list[str]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"exact_match": self.exact_match, "perplexity": self.perplexity, "rows": self.rows}


def walk(
    runner: Any,
    prompts: list[list[int]],
    fulls: list[list[int]] | None = None,
    max_new_tokens: int = 0,
    stop: list[int] | None = None,
    last: bool = False,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """For each prompt, in order: its greedy answer (``max_new_tokens`` at most; none when 0) and
    the logits at every position of its ``fulls`` row (a conversation beginning with the prompt),
    or of the prompt itself when ``fulls`` is None. The same figures as ``generate`` and ``logits``
    row by row (bit-identical on the quickstart's INT8 and FP32 builds) from one cache (``session``);
    a runner without one gets exactly those calls. ``last``: only the last position's logits
    ([1, vocab]), for callers that keep no more (the prefix's are not copied onto every row:
    ~15% of an INT8 walk of the quickstart's 128 calibration prompts)."""
    rows = fulls if fulls is not None else prompts
    if len(rows) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(rows)} conversations to score")
    stop = list(stop or [])
    cut = slice(-1, None) if last else slice(None)
    if not hasattr(runner, "session"):
        for p, f in zip(prompts, rows, strict=True):
            yield (runner.generate(p, max_new_tokens, stop) if max_new_tokens else []), runner.logits(f)[cut]
        return
    n = shared_prefix(prompts) if len(prompts) > 1 else 0  # one prompt: one prefill, not two
    length = max(max(len(p) + max_new_tokens, len(f)) for p, f in zip(prompts, rows, strict=True))
    s = runner.session(length)
    head = s.append(prompts[0][:n]) if n else None
    for p, f in zip(prompts, rows, strict=True):
        s.rewind(n)
        logits = s.append(p[n:])
        if head is not None and not last:
            logits = np.concatenate([head, logits])
        answer = s.greedy(max_new_tokens, stop) if max_new_tokens else []
        if list(f[: len(p)]) != list(p):  # not a continuation of its prompt: a prefill of its own
            logits = runner.logits(f)
        elif len(f) > len(p):
            s.rewind(len(p))
            rest = s.append(f[len(p) :])
            logits = rest if last else np.concatenate([logits, rest])
        yield answer, logits[cut]


def answers(runner: Any, prompts: list[list[int]], max_new_tokens: int, stop: list[int]) -> list[list[int]]:
    """Greedy answers to many prompts (their shared prefix once, as ``walk``). A lone prompt (a
    served request) is plain ``generate``: no prefix to share, and no logits to copy out."""
    if not hasattr(runner, "session") or len(prompts) < 2:
        return [runner.generate(p, max_new_tokens, stop) for p in prompts]
    return [a for a, _ in walk(runner, prompts, None, max_new_tokens, stop, last=True)]


def quality(runner: Any, data: Any, max_new_tokens: int) -> Quality:
    """Exact match of greedy answers and whole-text perplexity of ``runner`` (GenaiModel or
    TorchModel) on encoded chat examples (``ChatEncoded``: prompts, full texts, gold answers)."""
    texts, nll, n = [], 0.0, 0
    fulls = [feat["input_ids"] for feat in data.features]
    for (out, logits), ids in zip(
        walk(runner, data.prompts, fulls, max_new_tokens, data.eos_ids), fulls, strict=True
    ):
        x = logits[:-1]  # float32 log-sum-exp, summed in float64: 13 ms a row instead of 34-45
        top = x.max(-1)
        lse = np.log(np.exp(x - top[:, None]).sum(-1)) + top
        nll += float((lse.astype(np.float64) - x[np.arange(len(ids) - 1), ids[1:]]).sum())
        n += len(ids) - 1
        texts.append(data.tokenizer.decode(out, skip_special_tokens=True))
    hits = [normalize_answer(a) == normalize_answer(g) for a, g in zip(texts, data.answers, strict=True)]
    return Quality(float(np.mean(hits)) if hits else 0.0, float(np.exp(nll / max(n, 1))), texts, len(hits))
