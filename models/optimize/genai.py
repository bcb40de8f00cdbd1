"""Decoder LLMs for onnxruntime-genai: build (the model builder: fused attention with a shared
key/value cache, weight-only INT4/INT8 MatMulNBits, FP16/BF16 for GPUs) and run (greedy answers,
logits of a whole text, and timed generation for the benchmark).

Tokenization stays with Hugging Face's tokenizer of the model folder: ids go in, ids come out, so
the built model needs no tokenizer fix of its own and answers are compared token for token.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from slimflow.models.config.base import Strict
from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.names import match_globs
from slimflow.models.families.causal_lm.scoring import Quality, quality, walk

__all__ = [
    "GenaiBuildConfig",
    "GenaiModel",
    "Quality",
    "TorchModel",
    "add_logit_bias",
    "answer_start_shift",
    "build",
    "check_build_options",
    "parity",
    "quality",
    "size_bytes",
    "size_mb",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8", "int4", "fp16", "bf16"]
BUILD_TIMEOUT_S = 3600


MixedPrecision = dict[Literal["last_matmul", "mixed_layers"], Literal["int4", "int8"]]


def check_build_options(symmetric: bool, algo: str, mixed_precision: MixedPrecision) -> None:
    """Weight-only options the builder cannot honour together. Asymmetric weights need a named
    algorithm: with ``default``, onnxruntime-genai 0.18's builder gives a tied embedding the head's
    uint4 weights without their scales and the model does not load (seen on SmolLM2). The
    ``*_last``/``*_mixed`` algorithms are aliases that already set mixed precision."""
    if not symmetric and algo == "default":
        raise ValueError(
            "symmetric: false needs algo 'rtn' or 'k_quant' (with 'default' onnxruntime-genai's builder "
            "wires a tied embedding to the wrong weights and the model does not load)"
        )
    if mixed_precision and algo.endswith(("_last", "_mixed")):
        raise ValueError(
            f"algo {algo!r} already sets mixed precision: use its base method (rtn or k_quant) with "
            "mixed_precision"
        )


class GenaiBuildConfig(Strict):
    """How onnxruntime-genai's model builder builds one candidate."""

    precision: Precision = Field("int4", description="Weights: fp32, int8/int4 weight-only, fp16/bf16 (GPU).")
    execution_provider: Literal["cpu", "cuda"] = Field("cpu", description="Where the model will run.")
    block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="int4/int8: weights per quantization block (smaller: closer to FP32, bigger file)."
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4,
        description="int4/int8: compute type of the quantized MatMuls (4 = int8 activations: fastest on "
        "CPUs with VNNI; 0 = the runtime's default).",
    )
    algo: Literal["default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed"] = Field(
        "default",
        description="int4/int8 algorithm; *_last keeps the LM head at int8, k_quant_mixed also the most "
        "sensitive layers (mixed precision).",
    )
    symmetric: bool = Field(
        True,
        description="int4/int8: weights centred on zero (int4/int8) or with a zero point per block "
        "(uint4/uint8: asymmetric, closer to FP32 where a block's weights are skewed).",
    )
    mixed_precision: MixedPrecision = Field(
        default_factory=dict,
        description="int4/int8: other widths for groups of MatMuls (the builder's matmul_mixed_precision): "
        "last_matmul = the LM head, mixed_layers = the most quantization-sensitive projections "
        "(llama.cpp's choice); e.g. {last_matmul: int4} on an int8 build.",
    )
    exclude_nodes: list[str] = Field(
        default_factory=list,
        description="Node names kept at full precision (e.g. /lm_head/MatMul).",
    )
    int8_nodes: list[str] = Field(
        default_factory=list,
        description="int4: MatMul node names built at int8 instead (the builder's per-node weight "
        "overrides), e.g. /model/layers.3/mlp/down_proj/MatMul; see decoder_matmuls.",
    )

    @model_validator(mode="after")
    def _options_fit_together(self) -> GenaiBuildConfig:
        if self.precision in ("int4", "int8"):
            check_build_options(self.symmetric, self.algo, self.mixed_precision)
        if self.int8_nodes and self.precision != "int4":
            raise ValueError(f"int8_nodes is for int4 builds (this one is {self.precision})")
        if self.int8_nodes and self.algo.endswith(("_last", "_mixed")):
            raise ValueError(
                f"algo {self.algo!r} sets its own mixed precision: use its base method with int8_nodes"
            )
        return self

    def _overrides(self) -> list[dict[str, Any]]:
        """The builder's structured weight overrides (first match wins): exclusions, the int8
        nodes, then the mixed-precision presets. Given as one list because a structured list
        replaces the builder's legacy options whole."""
        return [
            *({"match": {"name": n}, "exclude": True} for n in self.exclude_nodes),
            *({"match": {"name": n}, "type": "int8"} for n in self.int8_nodes),
            *({"match": {"preset": k}, "type": v} for k, v in self.mixed_precision.items()),
        ]

    def builder_args(self, tied_embeddings: bool = False) -> list[str]:
        """The builder's command-line options; ``tied_embeddings``: the model shares its embedding
        with the LM head (then the structured form must name Gather too, as the builder's legacy
        options do by themselves, or the embedding is left at full precision: +113 MB on SmolLM2)."""
        extra: list[str] = []
        structured: list[str] = []
        if self.precision in ("int4", "int8"):
            extra += [f"block_size={self.block_size}", f"algo_config={self.algo}"]
            if self.accuracy_level:
                extra.append(f"accuracy_level={self.accuracy_level}")
            if not self.symmetric:
                extra.append("is_symmetric=false")
            if self.int8_nodes:  # everything per node goes in one structured list
                ops = ["MatMul", "Gather"] if tied_embeddings else ["MatMul"]
                weights = {"op_types": ops, "overrides": self._overrides()}
                structured = ["--target_options", json.dumps({"quant_config": {"weights": weights}})]
            elif self.mixed_precision:
                extra.append(
                    "matmul_mixed_precision=" + ",".join(f"{k}:{v}" for k, v in self.mixed_precision.items())
                )
            if self.exclude_nodes and not self.int8_nodes:
                extra.append("nodes_to_exclude=" + ",".join(self.exclude_nodes))
        args = ["-p", self.precision, "-e", self.execution_provider]
        return args + (["--extra_options", *extra] if extra else []) + structured

    def label(self) -> str:
        if self.precision not in ("int4", "int8"):
            return f"genai_{self.precision}"
        algo = "" if self.algo == "default" else f"_{self.algo}"
        asym = "" if self.symmetric else "_asym"
        mixed = "".join(f"_{k}-{v}" for k, v in self.mixed_precision.items())
        mixed += f"_int8x{len(self.int8_nodes)}" if self.int8_nodes else ""
        return f"genai_{self.precision}{algo}{asym}{mixed}_b{self.block_size}"


def _ties_embeddings(model_dir: Path) -> bool:
    """Whether the model's config.json ties its embedding to the LM head (False when there is none
    to read: the builder then reports what is missing)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("tie_word_embeddings", False))


def build(model_dir: str | Path, out_dir: str | Path, cfg: GenaiBuildConfig, cache_dir: str | Path) -> Path:
    """Build ``model_dir`` (a saved Hugging Face causal LM) into ``out_dir`` with the model builder,
    in a child process (``genai_builder``: the builder under this project's transformers)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tied = _ties_embeddings(Path(model_dir))
    cmd = [sys.executable, "-m", "slimflow.models.optimize.genai_builder",
           "-i", str(model_dir), "-o", str(out), "-c", str(cache_dir), *cfg.builder_args(tied)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SlimflowError(
            f"onnxruntime-genai's model builder failed for {model_dir} ({cfg.label()}):\n{tail}"
        )
    log.info("built %s in %.1f s", cfg.label(), time.perf_counter() - t0)
    return out


# The builder's MatMul names in a Llama-style decoder (onnxruntime-genai 0.18: q, k and v packed
# into one qkv_proj MatMul); the LM head is /lm_head/MatMul.
DECODER_MATMULS = ("attn/qkv_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")


def decoder_matmuls(num_layers: int) -> list[str]:
    """Every weight MatMul the builder emits for a ``num_layers``-layer Llama-style decoder."""
    names = [f"/model/layers.{i}/{m}/MatMul" for i in range(num_layers) for m in DECODER_MATMULS]
    return [*names, "/lm_head/MatMul"]


def select_matmuls(patterns: list[str], model_dir: str | Path) -> list[str]:
    """The decoder MatMuls of the model in ``model_dir`` (its config.json's layer count) that
    match any glob of ``patterns`` (e.g. ``*/attn/*``, ``/model/layers.2[0-9]/*``)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return select_matmuls_of(patterns, int(config["num_hidden_layers"]))


def select_matmuls_of(patterns: list[str], num_layers: int) -> list[str]:
    """The MatMuls of a ``num_layers``-layer decoder matching any glob of ``patterns``; a pattern
    that matches nothing is an error naming the MatMuls there are."""
    kinds = ", ".join(f"/model/layers.N/{m}/MatMul" for m in DECODER_MATMULS)
    return match_globs(
        patterns,
        decoder_matmuls(num_layers),
        lambda pat: f"int8 MatMul pattern {pat!r} matches no MatMul (they are {kinds}, /lm_head/MatMul)",
    )


def size_bytes(folder: str | Path) -> int:
    """Size of the model files (ONNX graph and its external weights) in bytes."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.startswith("model.onnx"))


def size_mb(folder: str | Path) -> float:
    return size_bytes(folder) / 1e6


# ------------------------------------------------------------------------------------- runtime
class GenaiModel:
    """A built model, run with onnxruntime-genai on ``threads`` intra-op threads (None = runtime
    default). Greedy decoding only: the pipeline compares and gates deterministic answers."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime_genai as og

        self.folder = Path(folder)
        config = og.Config(str(self.folder))
        if threads:
            options = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self._og = og
        meta = json.loads((self.folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
        self.context_length = int(meta.get("context_length") or 2048)
        self.vocab_size = int(meta.get("vocab_size") or 0)
        eos = meta.get("eos_token_id")
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def _generator(self, length: int, batch: int = 1, min_length: int = 0) -> Any:
        params = self._og.GeneratorParams(self.model)
        opts = {"max_length": int(length), "do_sample": False, "batch_size": int(batch)}
        if min_length:
            opts["min_length"] = int(min_length)
        params.set_search_options(**opts)
        return self._og.Generator(self.model, params)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids`` ([len(ids), vocab]), from one prefill."""
        g = self._generator(len(ids) + 1)
        g.append_tokens([list(ids)])
        out = np.asarray(g.get_output("logits"), dtype=np.float32)
        return out.reshape(-1, out.shape[-1])[-len(ids) :]

    def tokens(self, ids: list[int], max_new_tokens: int, stop: list[int]) -> Iterator[int]:
        """Greedy tokens after ``ids``, one at a time, up to the first ``stop`` token or the model's
        own end token (neither is yielded), at most ``max_new_tokens``."""
        s = self.session(len(ids) + max_new_tokens)
        s.feed(ids)
        yield from s.stream(max_new_tokens, stop)

    def generate(self, ids: list[int], max_new_tokens: int, stop: list[int]) -> list[int]:
        """Greedy continuation of ``ids`` up to the first ``stop`` or end token (left out)."""
        return list(self.tokens(ids, max_new_tokens, stop))

    def session(self, length: int) -> _GenaiSession:
        """One generator for many rows (``scoring.walk``): append, decode greedily, rewind; room
        for ``length`` tokens (at most the context)."""
        return _GenaiSession(self, min(self.context_length, int(length)))

    def timed(self, batch: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        """Time to first token and each later token's time (seconds) for a batch of equal-length
        prompts, generating exactly ``new_tokens`` per row (end tokens do not stop it)."""
        length = len(batch[0]) + new_tokens
        g = self._generator(length, len(batch), min_length=length)
        t0 = time.perf_counter()
        g.append_tokens([list(b) for b in batch])
        g.generate_next_token()
        ttft = time.perf_counter() - t0
        steps = []
        for _ in range(new_tokens - 1):
            t = time.perf_counter()
            g.generate_next_token()
            steps.append(time.perf_counter() - t)
        return ttft, steps


class _GenaiSession:
    """A generator walked by ``scoring.walk``: the answers come from onnxruntime-genai's own greedy
    search (``generate_next_token``), the logits are copied out (the runtime reuses its buffer)."""

    def __init__(self, model: GenaiModel, length: int) -> None:
        self.model, self.length = model, length
        self.g, self.fresh = model._generator(length), True

    def feed(self, ids: list[int]) -> None:
        """Append ``ids`` (one prefill) without copying their logits out."""
        self.g.append_tokens([list(ids)])
        self.fresh = False

    def append(self, ids: list[int]) -> np.ndarray:
        self.feed(ids)
        out = np.array(self.g.get_output("logits"), dtype=np.float32)
        return out.reshape(-1, out.shape[-1])[-len(ids) :]

    def stream(self, max_new_tokens: int, stop: list[int]) -> Iterator[int]:
        """Greedy tokens after the last append, one at a time, up to the first ``stop`` or end
        token (not yielded), at most ``max_new_tokens`` (the one decode loop of this runtime)."""
        ends, n = set(stop) | self.model.eos_ids, 0
        while not self.g.is_done() and n < max_new_tokens:
            self.g.generate_next_token()
            t = int(self.g.get_next_tokens()[0])
            if t in ends:
                return
            n += 1
            yield t

    def greedy(self, max_new_tokens: int, stop: list[int]) -> list[int]:
        return list(self.stream(max_new_tokens, stop))

    def rewind(self, length: int) -> None:
        if length:
            self.g.rewind_to(int(length))
        elif not self.fresh:  # back to nothing: a new generator
            self.g, self.fresh = self.model._generator(self.length), True


class TorchModel:
    """The same interface over a Hugging Face causal LM in PyTorch (the FP32 reference)."""

    def __init__(self, model: Any, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.model = model.eval()
        self._torch = torch

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()

    def ends(self, stop: list[int]) -> set[int]:
        """``stop`` and the model's own end tokens (its generation config's)."""
        own = self.model.generation_config.eos_token_id
        return set(stop) | set([own] if isinstance(own, int) else (own or []))

    def tokens(self, ids: list[int], max_new_tokens: int, stop: list[int]) -> Iterator[int]:
        """Greedy tokens with the key/value cache, one forward per token, up to the first ``stop``
        or end token (not yielded), at most ``max_new_tokens`` (as GenaiModel)."""
        if max_new_tokens <= 0:  # no token wanted: not even the prompt's forward pass
            return
        s = self.session(len(ids) + max_new_tokens)
        s.feed(ids)
        yield from s.stream(max_new_tokens, stop)

    def generate(self, ids: list[int], max_new_tokens: int, stop: list[int]) -> list[int]:
        return list(self.tokens(ids, max_new_tokens, stop))

    def generate_batch(
        self, prompts: list[list[int]], max_new_tokens: int, stop: list[int], batch_size: int
    ) -> list[list[int]]:
        """``generate`` for many prompts, left-padded in batches of similar length (the quickstart's
        150 validation prompts: 30 s instead of 62 s one by one, the same answers, 2-core AMD EPYC)."""
        from slimflow.models.families.causal_lm.chat import generate_greedy

        ends = sorted(self.ends(stop))
        pad = self.model.config.pad_token_id
        return generate_greedy(
            self.model, prompts, max_new_tokens, batch_size, ends[0] if pad is None else pad, ends
        )

    def prompt_end_logits(self, prompts: list[list[int]], batch_size: int) -> np.ndarray:
        """Next-token logits after each prompt, [rows, vocab], batched (``chat.prompt_end_logits``,
        the shared prefix once: the quickstart's 150 validation prompts in 9-10 s; its 128
        calibration prompts took 22 s walked one by one, 19 s in plain left-padded batches)."""
        from slimflow.models.families.causal_lm.chat import prompt_end_logits

        pad = self.model.config.pad_token_id
        return prompt_end_logits(
            self.model, prompts, batch_size, sorted(self.ends([]))[0] if pad is None else pad
        )

    def session(self, length: int) -> _TorchSession:
        """One key/value cache for many rows (``scoring.walk``), cropped back between them."""
        return _TorchSession(self)

    def timed(self, batch: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        """Greedy decoding with the key/value cache, one forward per token (eager PyTorch)."""
        with self._torch.no_grad():
            return timed_with_cache(self.model, batch, new_tokens)


class _TorchSession:
    """A dynamic key/value cache walked by ``scoring.walk``: appended tokens run in one forward,
    greedy decoding runs one forward per answer token (none for the last), ``rewind`` crops."""

    def __init__(self, runner: TorchModel) -> None:
        self.runner, self.past, self.last = runner, None, None

    def feed(self, ids: list[int]) -> Any:
        """Append ``ids`` in one forward; returns its logits tensor [1, len(ids), vocab]."""
        torch = self.runner._torch
        with torch.no_grad():
            out = self.runner.model(input_ids=torch.tensor([ids]), past_key_values=self.past, use_cache=True)
        self.past, self.last = out.past_key_values, out.logits[0, -1]
        return out.logits

    def append(self, ids: list[int]) -> np.ndarray:
        return self.feed(ids)[0].float().numpy()

    def stream(self, max_new_tokens: int, stop: list[int]) -> Iterator[int]:
        """Greedy tokens after the last append, one forward per token (none after the last one),
        up to the first ``stop`` or end token (not yielded), at most ``max_new_tokens``."""
        ends, n = self.runner.ends(stop), 0
        t = int(self.last.argmax())
        while t not in ends and n < max_new_tokens:
            n += 1
            yield t
            if n < max_new_tokens:
                self.feed([t])
                t = int(self.last.argmax())

    def greedy(self, max_new_tokens: int, stop: list[int]) -> list[int]:
        return list(self.stream(max_new_tokens, stop))

    def rewind(self, length: int) -> None:
        if not length:
            self.past = None
        elif self.past is not None:
            self.past.crop(int(length))


def timed_with_cache(model: Any, batch: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
    """Time to first token and each later token's time of greedy decoding with the key/value cache,
    for any model called like a transformers causal LM (PyTorch, Optimum's ORTModelForCausalLM)."""
    import torch

    ids = torch.tensor(batch)
    mask = torch.ones_like(ids)
    t0 = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    ttft = time.perf_counter() - t0
    past, steps = out.past_key_values, []
    for _ in range(new_tokens - 1):
        t = time.perf_counter()
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        out = model(input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        past = out.past_key_values
        steps.append(time.perf_counter() - t)
    return ttft, steps


# ------------------------------------------------------------------------ logit bias correction
LOGIT_BIAS = "slimflow_logit_bias"


def answer_start_shift(reference: Any, candidate: Any, prompts: list[list[int]]) -> np.ndarray:
    """The mean of (reference - candidate) next-token logits where the answers start (the last
    prompt position), each row centred first (a constant added to every logit changes no
    probability): [vocab] float32. Added to the candidate's logits it removes the systematic part
    of its quantization error there (empirical bias correction, as in Nagel et al. 2019, on the
    output); what varies from prompt to prompt stays."""
    if not prompts:
        raise ValueError("logit bias correction needs at least one calibration prompt")
    d = _prompt_end_logits(reference, prompts).astype(np.float64)
    d -= _prompt_end_logits(candidate, prompts)
    d -= d.mean(-1, keepdims=True)
    return d.mean(0).astype(np.float32)


PROMPT_END_BATCH = 32  # prompts per batch where a runner computes prompt-end logits batched (PyTorch)


def _prompt_end_logits(runner: Any, prompts: list[list[int]]) -> np.ndarray:
    """[rows, vocab] next-token logits after each prompt: batched where the runner can (PyTorch),
    else walked with the prompts' shared prefix once (onnxruntime-genai: the quickstart's 128
    share 41 of ~72 tokens)."""
    if hasattr(runner, "prompt_end_logits"):
        return runner.prompt_end_logits(prompts, PROMPT_END_BATCH)
    return np.concatenate([logits for _, logits in walk(runner, prompts, last=True)])


def add_logit_bias(folder: str | Path, bias: np.ndarray) -> None:
    """Add ``bias`` ([vocab]) to the logits output of the onnxruntime-genai model in ``folder``: one
    ``Add`` after the node that makes the logits, its constant stored in the graph file (the
    external weights are not rewritten). A model that already has one is refused."""
    import onnx
    from onnx import helper, numpy_helper

    folder = Path(folder)
    meta = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
    name = (meta.get("decoder", {}).get("outputs") or {}).get("logits", "logits")
    graph_file = folder / meta.get("decoder", {}).get("filename", "model.onnx")
    model = onnx.load(str(graph_file), load_external_data=False)
    g = model.graph
    if any(init.name == LOGIT_BIAS for init in g.initializer):
        raise ValueError(f"{graph_file} already has a logit bias")
    out = next((o for o in g.output if o.name == name), None)
    producer = next((n for n in g.node if name in n.output), None)
    if out is None or producer is None:
        raise ValueError(f"{graph_file}: no graph output {name!r} to add a logit bias to")
    vocab = out.type.tensor_type.shape.dim[-1].dim_value
    if vocab and vocab != bias.shape[-1]:
        raise ValueError(f"logit bias has {bias.shape[-1]} entries, the model's vocabulary {vocab}")
    dtype = helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type)
    producer.output[list(producer.output).index(name)] = f"{name}_unbiased"
    g.initializer.append(numpy_helper.from_array(np.asarray(bias, dtype=dtype), LOGIT_BIAS))
    g.node.append(
        helper.make_node("Add", [f"{name}_unbiased", LOGIT_BIAS], [name], name="/slimflow/logit_bias/Add")
    )
    onnx.save(model, str(graph_file))


# ------------------------------------------------------------------------------------ quality
def parity(
    reference: Any, candidate: Any, prompts: list[list[int]], new_tokens: int, stop: list[int] | None = None
) -> dict[str, float]:
    """Max |logit difference| over every position of the prompts, and the share of the reference's
    greedy tokens (up to ``new_tokens``, ending at an end token) the candidate reproduces in order."""
    diff, agree, total = 0.0, 0, 0
    for ids in prompts:
        diff = max(diff, float(np.abs(reference.logits(ids) - candidate.logits(ids)).max()))
        a = reference.generate(ids, new_tokens, stop or [])
        b = candidate.generate(ids, new_tokens, stop or [])
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        agree += same
        total += max(len(a), 1)
    return {"max_abs_logit_diff": diff, "greedy_token_agreement": agree / max(total, 1)}
