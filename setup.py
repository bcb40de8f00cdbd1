"""Package layout (metadata lives in pyproject.toml).

The required top-level folders ``models/``, ``tasks/`` and ``flows/`` install as
``slimflow.models``, ``slimflow.tasks`` and ``slimflow.flows``: installing slimflow never puts
importable top-level packages with generic names into a user's environment (where they would
shadow the user's own ``models`` package). Every subfolder with an ``__init__.py`` is found, so a
new family or plug-in folder needs no packaging change.
"""

from setuptools import find_packages, setup

MAPPED = {"slimflow.models": "models", "slimflow.tasks": "tasks", "slimflow.flows": "flows"}

packages = ["slimflow", *(f"slimflow.{p}" for p in find_packages("slimflow"))]
for name, folder in MAPPED.items():
    packages += [name, *(f"{name}.{p}" for p in find_packages(folder))]

setup(packages=packages, package_dir={"slimflow": "slimflow", **MAPPED})
