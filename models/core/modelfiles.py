"""Model folders as slimflow writes them: Hugging Face files (config.json, safetensors weights,
tokenizer) plus ``slimflow_model.json``, slimflow's own record of what the model is (stage, task
family, labels, max length, test figures). Reading them never loads weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import ModelSourceError

META_FILE = "slimflow_model.json"
# Files that unpickle (run code) when loaded: never loaded, and a folder holding one is refused.
PICKLE_SUFFIXES = {".pkl", ".pickle", ".bin", ".pt", ".pth", ".joblib", ".ckpt", ".cloudpickle"}


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The folder's ``slimflow_model.json`` ({} when there is none)."""
    p = Path(folder) / META_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's Hugging Face ``config.json`` ({} when there is none)."""
    p = Path(folder) / "config.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def config_labels(folder: str | Path) -> list[str]:
    """Label names from config.json's ``id2label``, in id order ([] without one)."""
    id2label = read_config(folder).get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def check_model_dir(path: Path) -> Path:
    """A Hugging Face model folder with safetensors weights; pickle-based weights are refused."""
    if not path.is_dir():
        raise ModelSourceError(f"model folder not found: {path}")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path}: no config.json (not a Hugging Face model folder)")
    if not any(path.glob("*.safetensors")):
        unsafe = sorted(p.name for p in path.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = (
            f" (found {unsafe}: pickle-based weights are refused; convert them to safetensors)"
            if unsafe
            else ""
        )
        raise ModelSourceError(f"{path}: no *.safetensors weights{hint}")
    return path
