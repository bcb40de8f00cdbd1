"""Chat examples as token ids: the tokenizer's chat template, the loss on the answer only, and
batched greedy generation (left-padded) for exact-match scoring.

Tokenizers without a chat template (base models, the tiny test tokenizers) get ChatML, the
format SmolLM2 and many instruction-tuned models use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimflow.models.families.batching import IGNORE_INDEX, Encoded

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> Any:
    """The tokenizer, with ChatML where it has no chat template, and a pad token (its EOS)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt (JSON text of turns, or the turns) ending where the answer starts."""
    turns = json.loads(prompt) if isinstance(prompt, str) else prompt
    return _ids(tokenizer, turns, True)


def answer_ids(tokenizer: Any, prompt: list[int], full: list[int], answer: str) -> list[int]:
    """The answer's tokens: what the full conversation adds after the prompt (with the template's
    end-of-turn tokens, so the model learns to stop)."""
    if full[: len(prompt)] == prompt:
        return full[len(prompt) :]
    # a template that renders earlier turns differently once answered (rare): the answer text
    # tokenized alone, then the end token
    ids = [int(i) for i in tokenizer(answer, add_special_tokens=False)["input_ids"]]
    return ids + ([int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else [])


@dataclass
class ChatEncoded(Encoded):
    """Encoded chat examples: ``features`` hold input_ids/attention_mask/labels (labels are
    IGNORE_INDEX on prompt tokens); ``prompts`` the prompt-only ids and ``answers`` the gold text,
    for generation. ``labels`` (one integer per row) is the row index: nothing classifies here."""

    prompts: list[list[int]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    truncated: int = 0
    tokenizer: Any = None  # decodes generated answers
    eos_ids: list[int] = field(default_factory=list)  # tokens that end an answer

    def subset(self, idx: np.ndarray | list[int]) -> ChatEncoded:
        idx = [int(i) for i in idx]
        return ChatEncoded(
            [self.features[i] for i in idx],
            self.labels[np.asarray(idx, dtype=int)],
            [self.prompts[i] for i in idx],
            [self.answers[i] for i in idx],
            tokenizer=self.tokenizer,
            eos_ids=self.eos_ids,
        )

    def completion_tokens(self) -> int:
        return sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in self.features)


def encode_chat(tokenizer: Any, prompts: list[str], answers: list[str], max_length: int) -> ChatEncoded:
    """Encode (prompt turns as JSON, answer) pairs. Too long: the prompt is cut from the left (the
    answer and the question's end are what matter), then the answer from the right."""
    ensure_chat_template(tokenizer)
    ends = end_ids(tokenizer)
    feats, prompt_only, truncated = [], [], 0
    for prompt, answer in zip(prompts, answers, strict=True):
        turns = json.loads(prompt)
        p = _ids(tokenizer, turns, True)
        full = _ids(tokenizer, [*turns, {"role": "assistant", "content": answer}], False)
        a = answer_ids(tokenizer, p, full, answer)
        stop = next((j for j, t in enumerate(a) if t in ends), None)
        if stop is not None:  # what a template adds after the end token (a newline) is not trained
            a = a[: stop + 1]
        if len(p) + len(a) > max_length:
            truncated += 1
            a = a[: max(1, max_length // 2)] if len(a) > max_length // 2 else a
            p = p[len(p) - (max_length - len(a)) :]
        ids = p + a
        feats.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(p) + a}
        )
        prompt_only.append(p)
    rows = np.arange(len(feats), dtype=np.int64)
    return ChatEncoded(feats, rows, prompt_only, [str(a) for a in answers], truncated, tokenizer, ends)


def end_ids(tokenizer: Any) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS and, for chat templates, the end-of-turn token."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return sorted(ids)


def normalize_answer(text: str) -> str:
    """Exact match compares answers case-folded, whitespace collapsed, end punctuation dropped."""
    return " ".join(text.split()).casefold().rstrip(" .!?;:,")


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, n - len(s) :] = 1
    return ids, mask


def _batches_by_length(seqs: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for s in range(0, len(order), batch_size):
        yield [int(i) for i in order[s : s + batch_size]]


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt shares, short of the shortest prompt: each row appends
    at least one token of its own, whose logits start its answer."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = next((k for k in range(n) if p[k] != first[k]), n)
    return max(n, 0)


@dataclass
class PromptBatch:
    """Prompts laid out for one batched pass: the ``prefix`` tokens they all share, then each
    prompt's own tokens left-padded (``[prefix][pads][own tokens]``), so every prompt ends at the
    last column; ``cache`` holds the prefix's keys and values, computed once and repeated across
    the rows (None when nothing worth sharing: plain left padding)."""

    ids: Any
    mask: Any
    prefix: int
    cache: Any

    @property
    def positions(self) -> Any:
        """Position ids that skip the pads, for the columns after the prefix."""
        return (self.mask.cumsum(-1) - 1).clamp(min=0)[:, self.prefix :]


def prompt_batch(model: Any, prompts: list[list[int]], pad_id: int) -> PromptBatch:
    """``prompts`` as a PromptBatch on the model's device, the shared prefix run (callers hold
    ``torch.no_grad``) when it is at least SHARED_PREFIX_MIN_TOKENS long and the model allows it
    (``shares_prefix``).
    The quickstart's 150 validation prompts (41 shared tokens of ~75): greedy answers 10.5-12 s
    instead of 19.3 s and answer-start logits 9-10 s instead of 21-23 s (2-core AMD EPYC), the
    same answers and argmaxes (logits within 1e-4)."""
    import torch

    device = next(model.parameters()).device
    n = shared_prefix(prompts) if len(prompts) > 1 and shares_prefix(model) else 0
    n = n if n >= SHARED_PREFIX_MIN_TOKENS else 0
    own = max(len(p) for p in prompts) - n
    ids = torch.full((len(prompts), n + own), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, :n], mask[i, :n] = torch.tensor(p[:n], dtype=torch.long), 1
        ids[i, n + own - (len(p) - n) :] = torch.tensor(p[n:], dtype=torch.long)
        mask[i, n + own - (len(p) - n) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = None
    if n:
        cache = model(input_ids=ids[:1, :n], use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(len(prompts))
    return PromptBatch(ids, mask, n, cache)


def generate_greedy(
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    pad_id: int,
    eos_ids: list[int],
) -> list[list[int]]:
    """Greedy continuations of each prompt (token ids, up to the first end token, which is left
    out), in the input order. Prompts go in batches of similar length (``prompt_batch``: their
    shared prefix once, then left-padded; ``generate`` runs only the columns the cache lacks)."""
    import torch

    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in prompts]
    stop = set(eos_ids)
    with torch.no_grad():
        for rows in _batches_by_length(prompts, batch_size):
            b = prompt_batch(model, [prompts[i] for i in rows], pad_id)
            gen = model.generate(
                input_ids=b.ids,
                attention_mask=b.mask,
                past_key_values=b.cache,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=list(stop),
            )
            new = gen[:, b.ids.shape[1] :].cpu().tolist()
            for i, seq in zip(rows, new, strict=True):
                cut = next((j for j, t in enumerate(seq) if t in stop), len(seq))
                out[i] = seq[:cut]
    model.train(was_training)
    return out


def token_nll(
    model: Any, data: ChatEncoded, batch_size: int, pad_id: int, follows_gold: np.ndarray | None = None
) -> tuple[float, float, int, int]:
    """(answer NLL sum, whole-text NLL sum, answer tokens, text tokens) over ``data``: the answer
    loss is what training minimises; the whole-text figure gives the perplexity that compression
    must keep (it sees the prompt's language too).

    ``follows_gold`` (bool, one per row) is set where the most likely token is the gold one at
    every answer position: there greedy decoding would write exactly the gold answer."""
    import torch

    from slimflow.models.families.batching import batches

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ans_sum = all_sum = 0.0
    ans_n = all_n = 0
    vocab = _vocab_size(model)
    with torch.no_grad():
        for batch, _, group in batches(data, batch_size, pad_id, shuffle=False):
            # [rows, tokens, vocabulary] logits and their log-probabilities are the memory peak of
            # an evaluation (32 x 300 x 49,152 floats = 1.9 GB each): rows go through in groups
            # that keep them under LOGITS_BUDGET_BYTES
            step = max(1, LOGITS_BUDGET_BYTES // (2 * 4 * vocab * batch["input_ids"].shape[1]))
            for r in range(0, len(batch["input_ids"]), step):
                inputs = {k: v[r : r + step].to(device) for k, v in batch.items()}
                labels = inputs.pop("labels")
                n = batch_prefix(inputs["input_ids"], inputs["attention_mask"]) if shares_prefix(model) else 0
                if n >= SHARED_PREFIX_MIN_TOKENS and len(inputs["input_ids"]) > 1:
                    head, rest = split_forward(model, inputs["input_ids"], inputs["attention_mask"], n,
                                               prefix_logits=True)  # fmt: skip
                    logits = torch.cat([head.expand(len(rest), -1, -1), rest], 1).float()[:, :-1]
                    del head, rest
                else:
                    logits = model(**inputs).logits.float()[:, :-1]
                target = inputs["input_ids"][:, 1:]
                real = inputs["attention_mask"][:, 1:].bool()
                ans = labels[:, 1:] != IGNORE_INDEX
                if follows_gold is not None:
                    hit = (logits.argmax(-1) == target) | ~ans
                    follows_gold[group[r : r + step]] = (hit.all(1) & ans.any(1)).cpu().numpy()
                # log-softmax at the target: logsumexp reads the logits once (half the time of a
                # full log_softmax and a gather here)
                nll = torch.logsumexp(logits, -1) - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                del logits
                ans_sum += float(nll[ans].sum())
                all_sum += float(nll[real].sum())
                ans_n += int(ans.sum())
                all_n += int(real.sum())
    model.train(was_training)
    return ans_sum, all_sum, ans_n, all_n


LOGITS_BUDGET_BYTES = 512 * 2**20

# A batch's shared leading tokens run once (``split_forward``) from this many on: below it the
# extra forward call costs more than it saves.
SHARED_PREFIX_MIN_TOKENS = 8


def batch_prefix(input_ids: Any, attention_mask: Any, limit: int | None = None) -> int:
    """How many leading tokens every row of a right-padded batch shares (real tokens in every row,
    each row keeping at least one of its own), at most ``limit``."""
    same = (input_ids == input_ids[:1]).all(0)
    n = int(same.long().cumprod(0).sum())
    n = min(n, int(attention_mask.sum(1).min()) - 1)
    return max(0, n if limit is None else min(n, limit))


def shares_prefix(model: Any) -> bool:
    """Whether a forward pass of ``model`` may be split at a shared prefix: not under
    DistributedDataParallel (one forward per backward) nor for prompt-learning adapters (prefix
    tuning owns ``past_key_values``)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return False
    peft_cfg = getattr(model, "active_peft_config", None)
    return not getattr(peft_cfg, "is_prompt_learning", False)


def split_forward(
    model: Any, input_ids: Any, attention_mask: Any, prefix: int, keep: int = 0, prefix_logits: bool = False
) -> tuple[Any, Any]:
    """One forward pass over a right-padded batch whose rows share their first ``prefix`` tokens,
    with those tokens run once: their keys and values are repeated across the batch for the rest.
    The same pass mathematically (causal attention: the prefix never sees what follows it), and
    gradients flow through the repeated cache into the prefix's one computation. The quickstart's
    chats share 41 of ~75 tokens (SmolLM2's system turn and the question): a LoRA training step
    took 3.3-3.6 s instead of 6.6-7.5 s (2-core AMD EPYC), with the same loss and gradients (max
    |diff| 1e-6). Dropout (LoRA's included) draws one mask for the prefix, shared by the rows.

    Returns (the prefix's logits [1, prefix, V] when ``prefix_logits``, else None; the logits of
    positions ``prefix`` on [rows, L - prefix, V], or of the last ``keep`` of them)."""
    head = model(input_ids=input_ids[:1, :prefix], use_cache=True, logits_to_keep=0 if prefix_logits else 1)
    cache = head.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):
        raise TypeError(f"{type(model).__name__} returned no key/value cache to share a prompt prefix with")
    cache.batch_repeat_interleave(int(input_ids.shape[0]))
    rest = model(
        input_ids=input_ids[:, prefix:], attention_mask=attention_mask, past_key_values=cache,
        use_cache=True, logits_to_keep=keep,
    )  # fmt: skip
    return (head.logits if prefix_logits else None), rest.logits


def _vocab_size(model: Any) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(getattr(model.config, "vocab_size", 0) or 50_000)


def answer_start_logits(model: Any, data: ChatEncoded, batch_size: int, pad_id: int) -> np.ndarray:
    """Logits at the last prompt token of each row (they choose the answer's first token)."""
    return prompt_end_logits(model, data.prompts, batch_size, pad_id)


def prompt_end_logits(model: Any, prompts: list[list[int]], batch_size: int, pad_id: int) -> np.ndarray:
    """Next-token logits after each prompt, [rows, vocab], in batches of similar length
    (``prompt_batch``: the shared prefix once)."""
    import torch

    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    with torch.no_grad():
        for rows in _batches_by_length(prompts, batch_size):
            b = prompt_batch(model, [prompts[i] for i in rows], pad_id)
            logits = model(
                input_ids=b.ids[:, b.prefix :], attention_mask=b.mask, position_ids=b.positions,
                past_key_values=b.cache, use_cache=b.cache is not None, logits_to_keep=1,
            ).logits[:, -1]  # fmt: skip
            logits = logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((len(prompts), logits.shape[-1]), dtype=np.float32)
            out[rows] = logits
    model.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
