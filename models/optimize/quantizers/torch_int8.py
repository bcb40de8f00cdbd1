"""PyTorch dynamic INT8 with torchao (``Int8DynamicActivationInt8WeightConfig``), a PyTorch-side
candidate for users who serve with PyTorch rather than ONNX Runtime.

torchao's quantized tensors are not safetensors-serialisable and we never pickle models, so the
candidate keeps the FP32 safetensors and this recipe; ``quantize_module`` applies it on load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from slimflow.models.optimize.quantizers.base import (
    QuantContext,
    QuantizerConfig,
    QuantReport,
    match_names,
    register_quantizer,
)


class TorchInt8Config(QuantizerConfig):
    kind: Literal["torch_int8"] = "torch_int8"
    runtime: ClassVar[str] = "torch"
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="Glob patterns of nn.Linear module names kept in FP32 (mixed precision), "
        "e.g. 'classifier' or 'bert.encoder.layer.0.*'.",
    )

    @model_validator(mode="after")
    def _installed(self) -> TorchInt8Config:
        import importlib.util

        if importlib.util.find_spec("torchao") is None:
            raise ValueError(
                "torch_int8 needs torchao: pip install 'slimflow[torchao]' (or drop this quantizer)"
            )
        return self


def quantize_module(model: Any, recipe: dict[str, Any]) -> int:
    """Quantize ``model``'s Linear layers in place, except the kept ones; returns how many."""
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    keep = set(match_names(list(recipe.get("keep_fp32", [])), linear, "Linear module"))
    chosen = [n for n in linear if n not in keep]
    quantize_(
        model,
        Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in chosen,
    )
    return len(chosen)


@register_quantizer(TorchInt8Config)
def torch_int8(cfg: TorchInt8Config, ctx: QuantContext, out_dir: Path) -> QuantReport:
    src = Path(ctx.torch_dir)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, Path(out_dir) / f.name)
    recipe = {"kind": cfg.kind, "keep_fp32": list(cfg.keep_fp32)}
    model, _ = ctx.family.load_trained(
        out_dir
    )  # checks the recipe applies (patterns match) before benchmarking
    n = quantize_module(model, recipe)
    return QuantReport(
        "torch_int8",
        {"linear_quantized": n},
        ["torchao Int8DynamicActivationInt8Weight, applied on load (weights stored as FP32 safetensors)"],
        recipe,
    )
