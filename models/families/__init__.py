"""Task families (what a model is for), one folder each, registered in ``FAMILIES``.

Model folders record their family in ``slimflow_model.json`` (``"task"``); folders written before
families existed are sequence classifiers.
"""

from __future__ import annotations

from pathlib import Path

from slimflow.models.core.modelfiles import read_meta
from slimflow.models.core.plugins import Registry, load_plugins
from slimflow.models.families.base import AgreementConfig, AgreementReport, TaskFamily

FAMILIES: Registry[TaskFamily] = Registry("task family")
DEFAULT_TASK = "sequence-classification"


def register_family(family: TaskFamily) -> TaskFamily:
    return FAMILIES.add(family.name, family)


def get_family(name: str) -> TaskFamily:
    return FAMILIES.get(name)


def family_of(folder: str | Path) -> TaskFamily:
    """The family a saved model or candidate folder belongs to."""
    return FAMILIES.get(str(read_meta(folder).get("task") or DEFAULT_TASK))


load_plugins(__name__, __path__, folders_only=True)  # every family folder here registers itself

__all__ = [
    "DEFAULT_TASK",
    "FAMILIES",
    "AgreementConfig",
    "AgreementReport",
    "TaskFamily",
    "family_of",
    "get_family",
    "register_family",
]
