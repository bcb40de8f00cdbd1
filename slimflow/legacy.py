"""Model versions registered before slimflow's library moved under ``slimflow.models``.

Such a version's MLflow entry (``mlflow_entry.py``, stored with the version) imports
``models.runtime``, a top-level package slimflow no longer installs (a package named ``models``
would shadow users' own). slimflow itself never runs that code: its server, ``slimflow predict``
and ``slimflow bench`` load every registered candidate as data, old versions included. For
``mlflow.pyfunc.load_model`` on such a version, enable this thin alias first::

    import slimflow.legacy
    slimflow.legacy.enable()
    model = mlflow.pyfunc.load_model("models:/NAME/1")

It maps only the module paths old entries import, and only when nothing else provides them: the
finder is consulted after every other one, so a user's own ``models`` package still wins.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

# module path an old entry imports -> where that code lives now
LEGACY_MODULES = {"models.runtime": "slimflow.models.optimize.predictors"}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str | None) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.target is None:  # the bare parent package: empty, only a container for the aliases
            module = types.ModuleType(spec.name, "slimflow.legacy alias package")
            module.__path__ = []
            return module
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _LegacyFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        parents = {name.rpartition(".")[0] for name in LEGACY_MODULES}
        if fullname in LEGACY_MODULES:
            return importlib.machinery.ModuleSpec(fullname, _Alias(LEGACY_MODULES[fullname]))
        if fullname in parents:
            return importlib.machinery.ModuleSpec(fullname, _Alias(None), is_package=True)
        return None


def enable() -> None:
    """Let old versions' entries import their modules (idempotent)."""
    if not any(isinstance(f, _LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(_LegacyFinder())
