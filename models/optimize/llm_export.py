"""Optimum's ONNX export of a causal LM with its key/value cache (``text-generation-with-past``: one
merged graph that takes the past keys/values as inputs), run through onnxruntime with
``ORTModelForCausalLM``: what a user following Optimum's documentation gets, and so the baseline a
slimflow build is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimflow.models.optimize.export import _quiet_export


def export_with_past(model_dir: str | Path, out_dir: str | Path, opset: int = 18) -> Path:
    """``model_dir`` exported into ``out_dir`` (model.onnx with past key/value inputs)."""
    from optimum.exporters.onnx import main_export

    out = Path(out_dir)
    with _quiet_export():
        main_export(
            str(model_dir),
            output=str(out),
            task="text-generation-with-past",
            opset=opset,
            device="cpu",
            do_validation=False,
            local_files_only=Path(model_dir).is_dir(),
            trust_remote_code=False,
        )
    return out


class OptimumModel:
    """An Optimum export run with ORTModelForCausalLM, with the runners' interface (see genai.py)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.model = ORTModelForCausalLM.from_pretrained(str(folder), session_options=opts, use_cache=True)
        self._torch = torch

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self._torch
        x = torch.tensor([ids])
        return self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()

    def generate(self, ids: list[int], max_new_tokens: int, stop: list[int]) -> list[int]:
        torch = self._torch
        own = self.model.generation_config.eos_token_id
        ends = set(stop) | set([own] if isinstance(own, int) else (own or []))
        x = torch.tensor([ids])
        out = self.model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
            num_beams=1, eos_token_id=sorted(ends), pad_token_id=min(ends) if ends else 0,
        )[0, len(ids):].tolist()  # fmt: skip
        cut = next((i for i, t in enumerate(out) if t in ends), len(out))
        return out[:cut]

    def timed(self, batch: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        """Greedy decoding with the cache, one session run per token."""
        from slimflow.models.optimize.genai import timed_with_cache

        return timed_with_cache(self.model, batch, new_tokens)
