"""Export a saved classifier to ONNX (optimum-onnx), fuse it for ONNX Runtime, and prove the result
computes what the PyTorch model computes.

Optimum can call an export "successful, with a warning" when outputs are out of tolerance, and a
traced size-1 axis can silently become fixed; so parity is always checked here, at several batch
sizes and sequence lengths, and a failure raises ``ParityError`` naming the worst shape.

Fusions use ONNX Runtime's transformer optimizer with head count and width detected per layer
(``num_heads=0``): optimum's ``ORTOptimizer`` passes the config's head count, which is wrong for a
model whose heads were pruned unevenly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimflow.models.archs import position_limit
from slimflow.models.core.errors import CandidateRejected
from slimflow.models.core.logs import quiet_logs
from slimflow.models.core.modelfiles import read_config
from slimflow.models.families import family_of
from slimflow.models.optimize.config import ExportConfig
from slimflow.models.optimize.predictors import (
    MODEL_LOCK,
    CandidateInfo,
    OrtPredictor,
    describe,
    load_predictor,
)


class ParityError(CandidateRejected):
    """A candidate's outputs differ from its reference beyond the stated tolerance."""


@dataclass
class ParityReport:
    passed: bool
    tolerance: float
    max_abs_diff: float
    shapes: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportResult:
    onnx_path: str  # the graph candidates use (fused when optimize=True)
    unfused_path: str
    parity: dict[str, Any]
    parity_unfused: dict[str, Any]
    fused_ops: dict[str, int]
    opset: int
    export_seconds: float
    file_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity(
    reference: Any, candidate: Any, texts: list[str], batch_sizes: list[int], lengths: list[int], atol: float
) -> ParityReport:
    """Compare logits of two predictors (``predictors.py``) on real texts padded/truncated to each
    length, at each batch size. Texts are reused cyclically when there are fewer than a batch."""
    if not texts:
        raise ValueError("parity check needs at least one text")
    shapes = []
    for b in batch_sizes:
        chunk = [texts[i % len(texts)] for i in range(b)]
        for n in lengths:
            batch = reference.encode(chunk, length=n)
            ref = reference.logits(batch)
            got = candidate.logits(batch)
            if got.shape != ref.shape:
                diff = float("inf")
            else:
                diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
            shapes.append({"batch": b, "length": n, "max_abs_diff": diff})
    worst = max(shapes, key=lambda s: s["max_abs_diff"])
    ok = worst["max_abs_diff"] <= atol
    msg = (
        f"max |logit diff| {worst['max_abs_diff']:.2e} <= {atol:.0e} over {len(shapes)} shapes"
        if ok
        else f"parity failed: |logit diff| {worst['max_abs_diff']:.3g} > {atol:.0e} at batch "
        f"{worst['batch']} x {worst['length']} tokens"
    )
    return ParityReport(ok, atol, worst["max_abs_diff"], shapes, msg)


@contextmanager
def _quiet_export() -> Iterator[None]:
    """What the exporters say that no user can act on: optimum's "opset 17 is lower than the
    recommended 18" (export.opset is this project's tested setting, and parity is checked below),
    the tracer's note that constants are traced as constants, transformers' `torch_dtype` rename.
    Errors still pass; so does every other warning."""
    import logging
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    convert = logging.getLogger("optimum.exporters.onnx.convert")
    level, verbosity = convert.level, hf_logging.get_verbosity()
    convert.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        convert.setLevel(level)
        hf_logging.set_verbosity(verbosity)


def export_onnx(
    model_dir: str | Path,
    out_dir: Path,
    cfg: ExportConfig,
    target: Any,
    parity_texts: list[str],
    threads: int,
) -> ExportResult:
    """Export ``model_dir`` into ``out_dir`` (model.onnx + tokenizer + config), check parity.

    Raises ParityError if the exported graph does not match PyTorch within ``cfg.atol``.
    """
    family = family_of(model_dir)
    out_dir = Path(out_dir)
    with MODEL_LOCK:  # torch.onnx export and model loading are not thread-safe
        # imported under the lock too: optimum's lazy modules are not thread-safe on first import
        # (two exports starting together failed with "cannot import name 'main_export'")
        from optimum.exporters.onnx import main_export

        t0 = time.perf_counter()
        plain_dir = out_dir / "unfused"
        with _quiet_export():
            main_export(
                str(model_dir),
                output=str(plain_dir),
                task=family.onnx_task,
                opset=cfg.opset,
                device="cpu",
                do_validation=False,  # we check parity ourselves, at more shapes, and fail on it
                no_post_process=True,
                local_files_only=Path(model_dir).is_dir(),
                trust_remote_code=False,
            )
        plain = plain_dir / "model.onnx"
        fused_ops: dict[str, int] = {}
        final = out_dir / "model.onnx"
        if cfg.optimize:
            fused_ops = _fuse(
                plain, final, Path(model_dir), cfg.optimization_level, target.device == "gpu",
                skip_layer_norm=cfg.skip_layer_norm == "graph",
            )  # fmt: skip
        else:
            final.write_bytes(plain.read_bytes())
        for f in plain_dir.iterdir():  # tokenizer + config next to the candidate graph
            if f.suffix != ".onnx" and f.is_file():
                (out_dir / f.name).write_bytes(f.read_bytes())
        seconds = time.perf_counter() - t0

        src_info = describe(model_dir)
        reference = load_predictor(model_dir, threads)
        info = CandidateInfo(
            runtime="onnxruntime",
            target="cpu",  # parity of FP32 graphs is checked on the CPU provider, which always exists
            variant="onnx_fp32",
            model_file="model.onnx",
            max_length=src_info.max_length,
            labels=src_info.labels,
            task=family.name,
        )
        lengths = _clamp_lengths(cfg.parity_lengths, Path(model_dir))
        reports = {}
        for name, path in (("unfused", plain), ("fused", final)):
            cand = OrtPredictor(path, reference.tokenizer, info, threads)
            reports[name] = parity(reference, cand, parity_texts, cfg.parity_batch_sizes, lengths, cfg.atol)
            if not reports[name].passed:
                which = "exported" if name == "unfused" else "optimised (fused)"
                raise ParityError(f"{which} ONNX graph of {model_dir}: {reports[name].message}")
        return ExportResult(
            onnx_path=str(final),
            unfused_path=str(plain),
            parity=reports["fused"].to_dict(),
            parity_unfused=reports["unfused"].to_dict(),
            fused_ops=fused_ops,
            opset=cfg.opset,
            export_seconds=seconds,
            file_bytes=final.stat().st_size,
        )


def _fuse(
    src: Path, dst: Path, model_dir: Path, level: int, gpu: bool, skip_layer_norm: bool = True
) -> dict[str, int]:
    """ONNX Runtime's transformer fusions; without ``skip_layer_norm`` Add + LayerNormalization stay
    apart in the file (the session fuses them unless its settings turn SkipLayerNormFusion off)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.onnxruntime.utils import ORTConfigManager

    model_type = read_config(model_dir)["model_type"]
    try:
        ort_type = ORTConfigManager.get_model_ort_type(model_type)
    except KeyError:
        raise ValueError(
            f"ONNX Runtime has no transformer fusions for model type {model_type!r}; "
            "set optimize.export.optimize: false"
        ) from None
    options = FusionOptions(ort_type)
    if not skip_layer_norm:
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    with quiet_logs():  # one warning per layer whose width differs from the config (pruned heads)
        opt = optimize_model(
            str(src), model_type=ort_type, num_heads=0, hidden_size=0, opt_level=level, use_gpu=gpu,
            optimization_options=options,
        )  # fmt: skip
    opt.save_model_to_file(str(dst))
    return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def _clamp_lengths(lengths: list[int], model_dir: Path) -> list[int]:
    """Parity lengths above the model's position table are meaningless: cap them at its size."""
    limit = position_limit(model_dir)
    return sorted({min(n, limit) for n in lengths})
