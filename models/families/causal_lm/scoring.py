"""Scoring a generator on encoded chat examples: exact match of its greedy answers and perplexity
over the whole conversations. ``runner`` is anything with ``logits(ids)`` and
``generate(ids, max_new_tokens, stop)`` (onnxruntime-genai, PyTorch, Optimum runners); one that also
has ``answer_and_logits(prompt, ids, max_new_tokens, stop)`` gives both from one prefill."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Quality:
    """A candidate's answers and language modelling against the fine-tuned FP32 model."""

    exact_match: float
    perplexity: float
    answers: list[str]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"exact_match": self.exact_match, "perplexity": self.perplexity, "rows": self.rows}


def quality(runner: Any, data: Any, max_new_tokens: int) -> Quality:
    """Exact match of greedy answers and whole-text perplexity of ``runner`` (GenaiModel or
    TorchModel) on encoded chat examples (``ChatEncoded``: prompts, full texts, gold answers)."""
    answers, nll, n = [], 0.0, 0
    both = getattr(runner, "answer_and_logits", None)  # one prefill for both figures
    for prompt, feat in zip(data.prompts, data.features, strict=True):
        ids = feat["input_ids"]
        if both is not None:
            out, logits = both(prompt, ids, max_new_tokens, data.eos_ids)
        else:
            out, logits = runner.generate(prompt, max_new_tokens, data.eos_ids), runner.logits(ids)
        logits = logits[:-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        n += len(ids) - 1
        answers.append(data.tokenizer.decode(out, skip_special_tokens=True))
    from slimflow.models.families.causal_lm.chat import normalize_answer

    hits = [normalize_answer(a) == normalize_answer(g) for a, g in zip(answers, data.answers, strict=True)]
    return Quality(float(np.mean(hits)) if hits else 0.0, float(np.exp(nll / max(n, 1))), answers, len(hits))
