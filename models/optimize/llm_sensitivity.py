"""Which MatMuls of a decoder LLM can take INT4: weight-only quantization emulated in PyTorch and
judged where it matters for an answer.

The emulation is onnxruntime's ``MatMulNBits`` default (symmetric) quantizer: blocks of
``block_size`` weights along the input dimension, each scaled so that its largest-magnitude weight
maps to the most negative code (-8 for 4 bits, -128 for 8), round to nearest as MLAS does it
(tests/models/optimize/test_llm_sensitivity.py checks it against a real onnxruntime-genai build).
A plan puts every MatMul at INT4 except those matching its INT8 globs (the builder's names,
``genai.decoder_matmuls``); it is scored on the next-token distribution at the end of each prompt
(the token that starts the answer) against FP32: mean KL(FP32 || plan) and the share of prompts whose
top token is unchanged. One forward pass of the prompts per plan, no build: a screen for
``int8_matmuls`` that the real build and its agreement check then confirm.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass
from typing import Any

# Hugging Face module name (Llama-style) -> the builder's MatMul (q, k and v are one qkv_proj there)
_PROJECTIONS = {
    "self_attn.q_proj": "attn/qkv_proj",
    "self_attn.k_proj": "attn/qkv_proj",
    "self_attn.v_proj": "attn/qkv_proj",
    "self_attn.o_proj": "attn/o_proj",
    "mlp.gate_proj": "mlp/gate_proj",
    "mlp.up_proj": "mlp/up_proj",
    "mlp.down_proj": "mlp/down_proj",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def builder_name(module: str) -> str | None:
    """The builder's MatMul name for a Hugging Face Linear (``model.layers.3.mlp.down_proj`` ->
    ``/model/layers.3/mlp/down_proj/MatMul``); None for modules the builder does not emit."""
    if module == "lm_head":
        return "/lm_head/MatMul"
    m = _LAYER.match(module)
    if m and m.group(2) in _PROJECTIONS:
        return f"/model/layers.{m.group(1)}/{_PROJECTIONS[m.group(2)]}/MatMul"
    return None


def fake_quantize(weight: Any, bits: int, block_size: int) -> Any:
    """``weight`` [out, in] rounded as MatMulNBits's symmetric default quantizer rounds it."""
    import torch

    out_f, in_f = weight.shape
    pad = (-in_f) % block_size
    w = torch.nn.functional.pad(weight.detach().float(), (0, pad))
    g = w.reshape(out_f, -1, block_size)
    hi, lo = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
    extreme = torch.where(hi.abs() > lo.abs(), hi, lo)
    scale = extreme / -(2 ** (bits - 1))  # the extreme weight maps to the most negative code
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    # as MLAS computes the code: multiply by the reciprocal, add the zero point (2^(bits-1)), round
    # halves away from zero, all in float32 (each step can move a value that sits near .5)
    zero = float(2 ** (bits - 1))
    y = (g * (1.0 / safe) + zero).float()
    lower = torch.floor(y)
    q = (lower + (y - lower >= 0.5).float()).clamp(0, 2 * zero - 1) - zero
    q = torch.where(scale == 0, torch.zeros_like(g), q)
    return (q * scale).reshape(out_f, -1)[:, :in_f].to(weight.dtype)


@dataclass
class PlanScore:
    plan: str  # its INT8 globs, or "all INT4" / "all INT8"
    int8_matmuls: int  # how many MatMuls the plan keeps at INT8
    int8_weight_share: float  # their share of the MatMul weights
    kl: float  # mean KL(FP32 || plan) of the next-token distribution at the answer start
    agreement: float  # share of prompts whose top next token is FP32's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Emulator:
    """Scores INT4/INT8 plans of ``model`` (a Hugging Face causal LM, FP32, evaluated in place: its
    Linear weights are swapped per plan, a tied embedding with the head's) on ``prompts`` (token
    ids ending where the answer starts)."""

    def __init__(
        self, model: Any, prompts: list[list[int]], pad_id: int, block_size: int = 32, batch_size: int = 16
    ) -> None:
        import torch

        if not prompts:
            raise ValueError("the sensitivity screen needs at least one prompt")
        # a tied embedding stays tied: it takes the head's rounded weights, as the builder shares
        # the head's INT4 weights with the embedding lookup
        self.model = model.float().eval()
        self.linears: dict[str, Any] = {}  # "<builder name>#<module name>" -> Linear
        for mod_name, mod in model.named_modules():
            name = builder_name(mod_name)
            if isinstance(mod, torch.nn.Linear) and name is not None:
                self.linears[f"{name}#{mod_name}"] = mod
        if not self.linears:
            raise ValueError("no Llama-style projections found (model.layers.N.self_attn/mlp.*_proj)")
        self.fp32 = {k: m.weight.detach().clone() for k, m in self.linears.items()}
        self.sizes: dict[str, int] = {}  # builder name -> weights (q, k and v add up in qkv_proj)
        for k, m in self.linears.items():
            name = k.split("#")[0]
            self.sizes[name] = self.sizes.get(name, 0) + m.weight.numel()
        self.prompts, self.pad_id, self.block, self.batch = prompts, pad_id, block_size, batch_size
        self._cache: dict[tuple[str, int], Any] = {}
        self.reference = self._logits()

    def matmuls(self) -> list[str]:
        """The builder's names of the MatMuls the model has, in order."""
        return list(self.sizes)

    def _logits(self) -> Any:
        import torch

        from slimflow.models.families.causal_lm.chat import _batches_by_length, _left_pad

        parts, order = [], []
        with torch.no_grad():
            for rows in _batches_by_length(self.prompts, self.batch):
                ids, mask = _left_pad([self.prompts[i] for i in rows], self.pad_id)
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
                parts.append(logits[:, -1].float())
                order += rows
        out = torch.cat(parts)
        return out[torch.argsort(torch.tensor(order))]

    def _set(self, bits: dict[str, int | None]) -> None:
        for key, mod in self.linears.items():
            b = bits.get(key.split("#")[0])
            if b is None:
                mod.weight.data = self.fp32[key]
                continue
            if (key, b) not in self._cache:
                self._cache[(key, b)] = fake_quantize(self.fp32[key], b, self.block)
            mod.weight.data = self._cache[(key, b)]

    def score(self, int8: list[str], label: str | None = None, rest: int = 4) -> PlanScore:
        """Every MatMul at ``rest`` bits except those matching a glob of ``int8`` (at 8 bits)."""
        import torch

        names = self.matmuls()
        picked = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in int8)}
        self._set({n: 8 if n in picked else rest for n in names})
        try:
            got = self._logits()
        finally:
            self._set({})
        ref_lp, got_lp = torch.log_softmax(self.reference, -1), torch.log_softmax(got, -1)
        kl = float((ref_lp.exp() * (ref_lp - got_lp)).sum(-1).mean())
        agree = float((self.reference.argmax(-1) == got.argmax(-1)).float().mean())
        share = sum(self.sizes[n] for n in picked) / sum(self.sizes.values())
        return PlanScore(label or ", ".join(int8) or f"all INT{rest}", len(picked), share, kl, agree)
