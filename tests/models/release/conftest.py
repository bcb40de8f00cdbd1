"""Fixtures of the release tests: a tiny trained classifier as ONNX and PyTorch candidates."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def candidates(tmp_path_factory):
    """A tiny trained classifier as an ONNX candidate and as a PyTorch candidate."""
    from slimflow.models.optimize.candidates import CandidateSpec, fp32_candidate
    from slimflow.models.optimize.config import ExportConfig
    from slimflow.models.optimize.export import export_onnx
    from slimflow.models.optimize.predictors import CandidateInfo
    from slimflow.models.optimize.targets import get_target
    from tests.conftest import build_tiny_model, make_reviews, train_tiny_teacher

    tmp = tmp_path_factory.mktemp("serve")
    _, res = train_tiny_teacher(tmp, build_tiny_model(tmp / "base"), rows=160, epochs=2)
    texts = make_reviews(8)["review"].tolist()
    export_onnx(res.model_dir, tmp / "onnx", ExportConfig(), get_target("cpu"), texts, threads=1)
    out = {}
    for runtime, src in (("onnxruntime", tmp / "onnx"), ("torch", Path(res.model_dir))):
        folder = tmp / runtime
        folder.mkdir()
        base = CandidateInfo(runtime, max_length=32, labels=["neg", "pos"])
        fp32_candidate(src, CandidateSpec("teacher", "fp32", "cpu", runtime), folder, base)
        out[runtime] = folder
    return out
