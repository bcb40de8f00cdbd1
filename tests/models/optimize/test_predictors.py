"""Loading any model slimflow makes for inference: model kinds, tokenizer equivalence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimflow.models.optimize.predictors import FastTokenizer, describe, load_tokenizer
from tests.conftest import make_reviews

TEXTS = [*make_reviews(20)["review"].tolist(), "", "A much longer sentence " * 30, "Ünïcödé & émojis 🎬!"]


def tokenizer_dirs(tmp_path: Path) -> list[Path]:
    from slimflow.models.assets import resolve_pretrained as resolve_model
    from tests.conftest import build_tiny_model

    return [build_tiny_model(tmp_path / "tiny"), Path(resolve_model("packaged:all-MiniLM-L6-v2", tmp_path))]


@pytest.mark.parametrize("padding", [True, "max_length"])
def test_fast_tokenizer_gives_transformers_ids(tmp_path, padding):
    from transformers import AutoTokenizer

    for folder in tokenizer_dirs(tmp_path):
        ours, theirs = FastTokenizer(folder), AutoTokenizer.from_pretrained(folder)
        for max_length in (8, 64):
            a = ours(TEXTS, truncation=True, max_length=max_length, padding=padding, return_tensors="np")
            b = theirs(TEXTS, truncation=True, max_length=max_length, padding=padding, return_tensors="np")
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{folder.name} {key} {max_length}")


def test_onnx_candidates_load_without_torch(tmp_path):
    """An ONNX Runtime candidate is measured as an ONNX-only server would run it (no torch)."""
    from slimflow.models.optimize.config import ExportConfig
    from slimflow.models.optimize.export import export_onnx
    from slimflow.models.optimize.targets import get_target
    from tests.conftest import build_tiny_model

    folder = build_tiny_model(tmp_path / "m")
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig.from_pretrained(folder, num_labels=2)).save_pretrained(folder)
    export_onnx(folder, tmp_path / "onnx", ExportConfig(), get_target("cpu"), TEXTS[:4], threads=1)
    code = (
        "import sys; from slimflow.models.optimize.predictors import load_predictor; "
        f"p = load_predictor({str(tmp_path / 'onnx')!r}, 1); p.predict(['good film']); "
        "print('torch' in sys.modules, type(p.tokenizer).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "FastTokenizer"]
    assert type(load_tokenizer(tmp_path / "onnx", "torch")).__name__.endswith("TokenizerFast")


def test_describe_tells_model_kinds_apart(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.onnx").write_bytes(b"x")
    (tmp_path / "a" / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    info = describe(tmp_path / "a")
    assert info.runtime == "onnxruntime" and info.labels == ["neg", "pos"] and info.model_file == "model.onnx"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors").write_bytes(b"x")
    assert describe(tmp_path / "b").runtime == "torch"
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="no candidate.json, .onnx file or .safetensors"):
        describe(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="model not found"):
        describe(tmp_path / "nope")


def test_reference_answers_are_computed_once_per_texts_and_rebuilt_when_unusable(tmp_path: Path) -> None:
    from slimflow.models.optimize.candidates import cached_reference_answers

    calls: list[list[str]] = []

    def predict(texts: list[str]) -> list[str]:
        calls.append(texts)
        return [t.upper() for t in texts]

    path = tmp_path / "cache" / "reference-answers-k.json"
    assert cached_reference_answers(predict, ["a", "b"], path) == ["A", "B"]
    assert cached_reference_answers(predict, ["a", "b"], path) == ["A", "B"] and len(calls) == 1
    assert cached_reference_answers(predict, ["a", "c"], path) == ["A", "C"] and len(calls) == 2  # other rows
    path.write_text("{not json")  # a torn or foreign file is recomputed, not trusted
    assert cached_reference_answers(predict, ["a", "c"], path) == ["A", "C"] and len(calls) == 3
    assert json.loads(path.read_text())["answers"] == ["A", "C"]
    assert not list(path.parent.glob(".*tmp"))  # written by rename, nothing half-written left
