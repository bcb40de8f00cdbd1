"""Weight-only INT8 / INT4 decoder LLMs built by onnxruntime-genai's model builder (causal-lm only):
fused GroupQueryAttention with a shared key/value cache, ``MatMulNBits`` weights in blocks, the
candidate run by onnxruntime-genai. Measured in one run on SmolLM2-135M fine-tuned on the packaged
review chats (2-core Xeon, README "Mixed INT4/INT8"): INT8 4.2x PyTorch's decode tokens/s, 0.977 of
its answers; INT4 6.15x, 0.813; INT4 with ``int8_matmuls: ["*/attn/*", "*/mlp/down_proj/*"]`` 5.0x,
0.937 and the best perplexity.

Two kinds: ``genai_int8`` and ``genai_int4`` (each may appear more than once under its own
``name``). The FP32 build every one of them is compared with is the plan's ``genai_fp32`` candidate.
``logit_bias_correction`` then calibrates a per-token offset of the build's logits against the
fine-tuned FP32 model where the answers of training prompts start: on the AMD host's model it took
INT8's test answers from 0.967 to 0.997 equal to FP32's (README "Logit bias correction").
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from slimflow.models.config.base import Strict
from slimflow.models.optimize.quantizers.base import (
    QuantContext,
    QuantizerConfig,
    QuantReport,
    register_quantizer,
)

log = logging.getLogger(__name__)


class LogitBiasCorrection(Strict):
    """Calibrate a constant per-token offset of the built model's logits on training prompts."""

    prompts: int = Field(
        128,
        ge=1,
        le=4096,
        description="Training prompts (the first ones of the split) on which the built model's "
        "next-token logits where the answer starts are compared with the fine-tuned FP32 model's.",
    )


class _GenaiConfig(QuantizerConfig):
    precision: ClassVar[str] = "int4"
    runtime: ClassVar[str] = "onnxruntime-genai"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "gpu")  # MatMulNBits has CPU and CUDA kernels
    families: ClassVar[tuple[str, ...]] = ("causal-lm",)
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="Weights per quantization block.")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4,
        description="Compute type of the quantized MatMuls on CPUs: 4 = int8 activations (VNNI), "
        "0 = default.",
    )
    algo: Literal["default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed"] = Field(
        "default",
        description="Algorithm; *_last keeps the LM head at int8, k_quant_mixed also the sensitive layers.",
    )
    symmetric: bool = Field(
        True,
        description="Weights centred on zero (true) or with a zero point per block (false: asymmetric; "
        "needs algo rtn or k_quant).",
    )
    mixed_precision: dict[Literal["last_matmul", "mixed_layers"], Literal["int4", "int8"]] = Field(
        default_factory=dict,
        description="Other widths for groups of MatMuls: last_matmul = the LM head (and a tied "
        "embedding), mixed_layers = the most quantization-sensitive projections; e.g. {last_matmul: "
        "int4} on genai_int8.",
    )
    keep_full_precision: list[str] = Field(
        default_factory=list, description="Node names kept at full precision (e.g. /lm_head/MatMul)."
    )
    int8_matmuls: list[str] = Field(
        default_factory=list,
        description="genai_int4: MatMuls built at INT8 instead, as globs over the builder's names "
        "(/model/layers.N/attn/qkv_proj/MatMul, .../attn/o_proj/..., .../mlp/gate_proj/..., "
        ".../mlp/up_proj/..., .../mlp/down_proj/..., /lm_head/MatMul), e.g. ['*/attn/*', "
        "'*/mlp/down_proj/*']: the projections whose INT4 error changes answers most (README).",
    )
    logit_bias_correction: LogitBiasCorrection | None = Field(
        None,
        description="After the build, add to its logits the mean difference between the fine-tuned "
        "FP32 model's and the build's next-token logits where the answers of training prompts start "
        "(e.g. {prompts: 128}): removes a systematic shift quantization gives one answer over another "
        "(README). CPU targets only (the build runs to calibrate it).",
    )

    @model_validator(mode="after")
    def _options_fit_together(self) -> _GenaiConfig:
        from slimflow.models.optimize.genai import check_build_options, select_matmuls_of

        check_build_options(self.symmetric, self.algo, self.mixed_precision)
        if self.int8_matmuls:
            if self.precision != "int4":
                raise ValueError(f"int8_matmuls is for genai_int4 (this is {self.kind})")
            if self.algo.endswith(("_last", "_mixed")):
                raise ValueError(f"algo {self.algo!r} sets its own mixed precision: drop int8_matmuls")
            select_matmuls_of(self.int8_matmuls, 256)  # a glob that can match nothing fails here
        return self


class GenaiInt8Config(_GenaiConfig):
    kind: Literal["genai_int8"] = "genai_int8"
    precision: ClassVar[str] = "int8"


class GenaiInt4Config(_GenaiConfig):
    kind: Literal["genai_int4"] = "genai_int4"
    precision: ClassVar[str] = "int4"


def _build(cfg: _GenaiConfig, ctx: QuantContext, out_dir: Path) -> QuantReport:
    from slimflow.models.optimize import genai as G

    if cfg.logit_bias_correction and ctx.target.device != "cpu":
        raise ValueError(
            f"logit_bias_correction runs the built model on this machine to calibrate it: CPU targets "
            f"only (this one is {ctx.target.name!r})"
        )
    build = G.GenaiBuildConfig(
        precision=cfg.precision,  # type: ignore[arg-type]
        execution_provider="cuda" if ctx.target.device == "gpu" else "cpu",
        block_size=cfg.block_size,
        accuracy_level=cfg.accuracy_level,
        algo=cfg.algo,
        symmetric=cfg.symmetric,
        mixed_precision=cfg.mixed_precision,
        exclude_nodes=cfg.keep_full_precision,
        int8_nodes=G.select_matmuls(cfg.int8_matmuls, ctx.torch_dir) if cfg.int8_matmuls else [],
    )
    with tempfile.TemporaryDirectory(prefix="genai-cache-") as cache:
        G.build(ctx.torch_dir, out_dir, build, cache)
    figures = {"size_mb": G.size_mb(out_dir)}
    notes = [f"onnxruntime-genai {build.label()}"]
    if cfg.logit_bias_correction:
        figures.update(_correct_logit_bias(cfg.logit_bias_correction, ctx, out_dir))
        notes.append(
            f"logit bias correction on {int(figures['logit_bias_prompts'])} training prompts "
            f"(max |offset| {figures['logit_bias_max_abs']:.3f})"
        )
    return QuantReport(cfg.kind, figures, notes)


def _correct_logit_bias(cfg: LogitBiasCorrection, ctx: QuantContext, out_dir: Path) -> dict[str, float]:
    """Calibrate the offset on the first ``cfg.prompts`` training prompts and add it to the build."""
    from slimflow.models.families.causal_lm.chat import prompt_ids
    from slimflow.models.optimize import genai as G

    texts = ctx.calibration_texts[: cfg.prompts]
    if not texts:
        raise ValueError("logit_bias_correction needs training prompts to calibrate on; the split has none")
    # cut from the left as training does: the answer start is what is calibrated
    prompts = [prompt_ids(ctx.tokenizer, t)[-ctx.max_length :] for t in texts]
    t0 = time.perf_counter()
    log.info("logit bias correction: next-token logits against FP32 on %d training prompts", len(texts))
    model, _ = ctx.family.load_trained(ctx.torch_dir)
    candidate = G.GenaiModel(out_dir)
    bias = G.answer_start_shift(G.TorchModel(model), candidate, prompts)
    del candidate, model
    G.add_logit_bias(out_dir, bias)
    log.info("logit bias correction: done in %.0f s (max |offset| %.3f)", time.perf_counter() - t0,
             float(abs(bias).max()))  # fmt: skip
    return {"logit_bias_prompts": float(len(prompts)), "logit_bias_max_abs": float(abs(bias).max())}


register_quantizer(GenaiInt8Config)(_build)
register_quantizer(GenaiInt4Config)(_build)
