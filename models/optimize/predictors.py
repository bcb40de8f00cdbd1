"""Run a model for inference, whatever it is: an ONNX graph on a target's execution provider, or the
saved PyTorch model (FP32, or quantized to INT8 on load). Benchmarks, parity checks, accuracy
evaluation and serving all go through the same ``Predictor`` so that they measure the same thing;
what the outputs mean is the task family's business (``predictor.family``).

A *candidate folder* holds ``candidate.json`` (what it is and how to run it), the tokenizer, and
either ``model.onnx`` or the PyTorch weights (safetensors). PyTorch INT8 is not saved quantized:
torchao tensors are not safetensors-serialisable, so the recipe is stored and applied on load.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slimflow.models.archs import position_limit
from slimflow.models.core.modelfiles import config_labels, read_config, read_meta
from slimflow.models.families import DEFAULT_TASK, TaskFamily, get_family
from slimflow.models.optimize.quantizers.torch_int8 import quantize_module
from slimflow.models.optimize.targets import SessionSettings, get_target

CANDIDATE_FILE = "candidate.json"
Batch = dict[str, np.ndarray]

# Loading, exporting and quantizing models are not thread-safe in this stack (transformers builds
# models under a process-wide meta-device context; torch.onnx keeps a global "exporting" flag), so
# they hold this lock. Running loaded models concurrently is safe and is where parallel tasks gain.
MODEL_LOCK = threading.RLock()


@dataclass
class CandidateInfo:
    runtime: Literal["onnxruntime", "torch", "onnxruntime-genai", "cascade"]
    target: str = "cpu"
    variant: str = "fp32"
    source: str = ""
    model_file: str | None = None  # ONNX file inside the folder
    max_length: int = 128
    labels: list[str] = field(default_factory=list)
    torch_quant: dict[str, Any] | None = None  # quantizer config applied on load (torch runtime)
    task: str = DEFAULT_TASK  # the task family (candidates written before families existed: classifiers)
    max_new_tokens: int = 256  # generative families: longest answer generated

    def save(self, folder: Path) -> None:
        (folder / CANDIDATE_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> CandidateInfo:
        return cls(**json.loads((folder / CANDIDATE_FILE).read_text(encoding="utf-8")))


class Predictor:
    """Tokenize, run, return logits. ``logits()`` is the timed part; tokenization is not."""

    def __init__(self, tokenizer: Any, info: CandidateInfo, file_bytes: int, folder: Path) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.info = info
        self.file_bytes = file_bytes
        self._tok_lock = threading.Lock()

    @property
    def family(self) -> TaskFamily:
        return get_family(self.info.task)

    @property
    def position_limit(self) -> int:
        """Longest input (tokens) the model has position embeddings for."""
        return position_limit(self.folder)

    @property
    def input_names(self) -> set[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def logits(self, batch: Batch) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(self, texts: list[str], length: int | None = None) -> Batch:
        """Tokenize ``texts``: padded to the longest (``length`` None) or to exactly ``length``.

        Safe to call from many threads (a model server): transformers' fast tokenizers reconfigure
        their shared Rust tokenizer on each call, so they are called under a lock; ``FastTokenizer``
        needs none."""
        with nullcontext() if getattr(self.tokenizer, "thread_safe", False) else self._tok_lock:
            if length is None:
                enc = self.tokenizer(
                    list(texts), truncation=True, max_length=self.info.max_length, padding=True
                )
            else:
                enc = self.tokenizer(list(texts), truncation=True, max_length=length, padding="max_length")
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.input_names}

    def predict(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Logits for every text, in order (batches sorted by length to keep padding small)."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            logits = self.logits(self.encode([texts[i] for i in idx]))
            if out is None:
                out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
        return out if out is not None else np.zeros((0, len(self.info.labels)), dtype=np.float32)


class OrtPredictor(Predictor):
    """An ONNX graph on its target. With tuned runtime settings (``runtime.json`` measured on this
    hardware, see ``runtime_tuning.py``) each batch runs on the session of the setting tuned for
    its size (all made at load); ``threads`` then caps the tuned thread counts."""

    def __init__(
        self, path: Path, tokenizer: Any, info: CandidateInfo, threads: int | None, tuned: bool = True
    ) -> None:
        from slimflow.models.optimize.runtime_tuning import load_tuned

        super().__init__(tokenizer, info, path.stat().st_size, path.parent)
        self.path, self.threads = path, threads
        self.tuned = load_tuned(path.parent) if tuned else None
        self._sessions: dict[SessionSettings, Any] = {}
        self._session_lock = threading.Lock()
        self.session = self.session_for(1)
        for b in self.tuned.by_batch if self.tuned is not None else ():
            self.session_for(b)  # every session now: a server's first large batch does not pay for one
        self._inputs = {i.name for i in self.session.get_inputs()}

    def settings_for(self, rows: int) -> SessionSettings:
        if self.tuned is None:
            return SessionSettings(threads=self.threads or 0)
        s = self.tuned.for_rows(rows)
        if self.threads and s.threads > self.threads:
            s = dataclasses.replace(s, threads=self.threads)
        return s

    def session_for(self, rows: int) -> Any:
        s = self.settings_for(rows)
        sess = self._sessions.get(s)
        if sess is None:
            with self._session_lock:
                sess = self._sessions.get(s)
                if sess is None:
                    sess = get_target(self.info.target).session(self.path, settings=s)
                    self._sessions[s] = sess
        return sess

    @property
    def input_names(self) -> set[str]:
        return self._inputs

    def outputs(self, batch: Batch) -> list[np.ndarray]:
        """Every output of the graph, in its order (the first is the logits)."""
        rows = len(next(iter(batch.values()))) if batch else 1
        session = self.session_for(rows) if self.tuned is not None else self.session
        return list(session.run(None, {k: v for k, v in batch.items() if k in self._inputs}))

    def logits(self, batch: Batch) -> np.ndarray:
        return self.outputs(batch)[0]


class TorchPredictor(Predictor):
    def __init__(self, folder: Path, tokenizer: Any, info: CandidateInfo, threads: int | None) -> None:
        import torch

        if get_target(info.target).device != "cpu":
            raise ValueError(f"PyTorch candidates run on CPU targets here, not {info.target!r}")
        if threads:
            torch.set_num_threads(threads)
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        super().__init__(tokenizer, info, size, folder)
        self.model, _ = get_family(info.task).load_trained(folder)
        if info.torch_quant:
            quantize_module(self.model, info.torch_quant)
        # the signature, not __code__: transformers wraps forward() in decorators (Llama's takes **kwargs)
        fwd_args = inspect.signature(self.model.forward).parameters
        self._inputs = {k for k in ("input_ids", "attention_mask", "token_type_ids") if k in fwd_args}
        self._torch = torch

    @property
    def input_names(self) -> set[str]:
        return self._inputs

    def logits(self, batch: Batch) -> np.ndarray:
        with self._torch.inference_mode():
            inputs = {k: self._torch.from_numpy(v) for k, v in batch.items() if k in self._inputs}
            return self.model(**inputs).logits.float().numpy()


class GenerativePredictor:
    """A causal LM: prompts in, greedy answers out (text). A prompt is the JSON text of chat turns
    (as the prepared data holds them) or plain text, taken as one user turn. Runs an
    onnxruntime-genai build or the PyTorch model through the runners of ``genai.py``."""

    def __init__(self, folder: Path, tokenizer: Any, info: CandidateInfo, threads: int | None) -> None:
        from slimflow.models.families.causal_lm.chat import end_ids, ensure_chat_template
        from slimflow.models.optimize import genai as G

        self.folder, self.info = folder, info
        self.tokenizer = ensure_chat_template(tokenizer)
        if info.runtime == "onnxruntime-genai":
            self.runner: Any = G.GenaiModel(folder, threads)
            self.file_bytes = G.size_bytes(folder)
        else:
            if get_target(info.target).device != "cpu":
                raise ValueError(f"PyTorch candidates run on CPU targets here, not {info.target!r}")
            model, _ = get_family(info.task).load_trained(folder)
            self.runner = G.TorchModel(model, threads)
            self.file_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        self.ends = end_ids(self.tokenizer)
        self._tok_lock = threading.Lock()  # a fast tokenizer is reconfigured per call: one at a time
        ctx = getattr(self.runner, "context_length", None) or read_config(folder).get(
            "max_position_embeddings"
        )
        self.context_length = int(ctx or 2048)

    @property
    def family(self) -> TaskFamily:
        return get_family(self.info.task)

    def prompt_ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation (turns, or their JSON text; plain text is one user turn),
        ending where the answer starts."""
        from slimflow.models.families.causal_lm.chat import prompt_ids

        turns: Any = prompt
        if isinstance(prompt, str):
            try:
                turns = json.loads(prompt)
            except json.JSONDecodeError:
                turns = None
            if not (isinstance(turns, list) and all(isinstance(t, dict) for t in turns)):
                turns = [{"role": "user", "content": prompt}]
        with self._tok_lock:
            return prompt_ids(self.tokenizer, turns)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of raw text (a completion prompt: no chat template)."""
        with self._tok_lock:
            return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def stream(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[str, int]]:
        """(text piece, tokens so far) as greedy tokens come; pieces are decoded from the whole
        answer so far, so a character made of several tokens is never split."""
        out: list[int] = []
        sent = ""
        for t in self.runner.tokens(ids, max_new_tokens, self.ends):
            out.append(t)
            with self._tok_lock:
                text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an incomplete character: wait for its next byte
                continue
            if len(text) > len(sent):
                yield text[len(sent) :], len(out)
                sent = text
        if out:  # what was held back (and the final token count)
            with self._tok_lock:
                text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text != sent:
                yield text[len(sent) :], len(out)

    def predict(self, prompts: list[str], batch_size: int = 1) -> list[str]:
        """Greedy answers; ``batch_size`` > 1 batches them where the runner can (PyTorch)."""
        from slimflow.models.families.causal_lm.scoring import answers

        ids = [self.prompt_ids(p) for p in prompts]
        if batch_size > 1 and hasattr(self.runner, "generate_batch"):
            made = self.runner.generate_batch(ids, self.info.max_new_tokens, self.ends, batch_size)
        else:  # one by one on one cache: the prompts' shared prefix runs once
            made = answers(self.runner, ids, self.info.max_new_tokens, self.ends)
        return [self.tokenizer.decode(m, skip_special_tokens=True) for m in made]


def describe(path: str | Path) -> CandidateInfo:
    """What kind of model ``path`` is, without loading it (a candidate, a slimflow model, an ONNX file)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".onnx":
        return CandidateInfo(runtime="onnxruntime", model_file=p.name, **_meta(p.parent))
    if not p.is_dir():
        raise FileNotFoundError(f"model not found: {p} (expected a folder or an .onnx file)")
    if (p / CANDIDATE_FILE).exists():
        return CandidateInfo.load(p)
    onnx_files = sorted(p.glob("*.onnx"))
    if onnx_files:
        name = "model.onnx" if (p / "model.onnx").exists() else onnx_files[0].name
        return CandidateInfo(runtime="onnxruntime", model_file=name, **_meta(p))
    if list(p.glob("*.safetensors")) or (p / "adapter_config.json").exists():
        return CandidateInfo(runtime="torch", **_meta(p))
    raise FileNotFoundError(f"{p}: no candidate.json, .onnx file or .safetensors weights in this folder")


def _meta(folder: Path) -> dict[str, Any]:
    meta = read_meta(folder)
    out: dict[str, Any] = {}
    if meta.get("max_length"):
        out["max_length"] = int(meta["max_length"])
    if meta.get("labels"):
        out["labels"] = list(meta["labels"])
    if meta.get("task"):
        out["task"] = str(meta["task"])
    if meta.get("max_new_tokens"):
        out["max_new_tokens"] = int(meta["max_new_tokens"])
    if "labels" not in out:
        out["labels"] = config_labels(folder)
    return out


class FastTokenizer:
    """The model's ``tokenizer.json`` run by the ``tokenizers`` library alone.

    Same ids as transformers' fast tokenizer (tested), without importing transformers and torch:
    an ONNX Runtime candidate then starts in a fraction of a second and its measured memory is its
    own, as it would be in an ONNX-only server.
    """

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        pad = cfg.get("pad_token") or "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        self.pad_token = pad
        self.pad_token_id = self._tok.token_to_id(pad) or 0
        self.padding_side = cfg.get("padding_side", "right")
        self._tok.no_truncation()
        self._tok.no_padding()
        self._spec = self._tok.to_str()
        self._truncating: dict[int, Any] = {}
        self._lock = threading.Lock()

    thread_safe = True  # each setting has its own Tokenizer, configured once and never changed after

    def _for(self, max_length: int | None) -> Any:
        """The tokenizer truncating at ``max_length`` (None: not truncating). A ``tokenizers.Tokenizer``
        must not be reconfigured while another thread encodes with it ("Already borrowed"), so each
        setting gets its own copy, built once under a lock and only read afterwards."""
        if not max_length:
            return self._tok
        tok = self._truncating.get(max_length)
        if tok is None:
            from tokenizers import Tokenizer

            with self._lock:
                tok = self._truncating.get(max_length)
                if tok is None:
                    tok = Tokenizer.from_str(self._spec)
                    tok.enable_truncation(max_length)
                    self._truncating[max_length] = tok
        return tok

    def __call__(
        self,
        texts: list[str],
        truncation: bool = True,
        max_length: int | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        encs = self._for(max_length if truncation else None).encode_batch(list(texts))
        width = max((len(e.ids) for e in encs), default=0)
        if padding == "max_length" and max_length:
            width = max_length
        out: dict[str, list[list[int]]] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        for e in encs:
            n = width - len(e.ids) if padding else 0
            fill = (
                (lambda row, v, n=n: [v] * n + row)
                if self.padding_side == "left"
                else (lambda row, v, n=n: row + [v] * n)
            )
            out["input_ids"].append(fill(list(e.ids), self.pad_token_id))
            out["token_type_ids"].append(fill(list(e.type_ids), 0))
            out["attention_mask"].append(fill(list(e.attention_mask), 0))
        if return_tensors == "np":
            return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        return out


def load_tokenizer(folder: Path, runtime: str) -> Any:
    """``FastTokenizer`` for ONNX Runtime candidates that ship a tokenizer.json, else transformers'."""
    if runtime == "onnxruntime" and (folder / "tokenizer.json").exists():
        return FastTokenizer(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


# Runtimes whose candidates are made of other candidates (a cascade: ``cascade.py`` registers it
# when the package is imported): runtime -> loader(folder, info, threads).
COMPOSITE_RUNTIMES: dict[str, Callable[[Path, CandidateInfo, int | None], Predictor]] = {}


def load_predictor(path: str | Path, threads: int | None = None) -> Predictor:
    """Load any model slimflow makes, ready for inference with ``threads`` intra-op threads."""
    p = Path(path)
    info = describe(p)
    folder = p.parent if p.is_file() else p
    if info.runtime in COMPOSITE_RUNTIMES:  # made of other candidates, each loading its own
        return COMPOSITE_RUNTIMES[info.runtime](folder, info, threads)
    with MODEL_LOCK:
        tokenizer = load_tokenizer(folder, info.runtime)
        if get_family(info.task).generative:
            return GenerativePredictor(folder, tokenizer, info, threads)  # type: ignore[return-value]
        if info.runtime == "onnxruntime":
            return OrtPredictor(folder / (info.model_file or "model.onnx"), tokenizer, info, threads)
        return TorchPredictor(folder, tokenizer, info, threads)
