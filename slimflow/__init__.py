"""slimflow: fine-tune, shrink, validate and promote small transformer models.

The Python API (``slimflow.run``, ``load_config``, ``predict``, ``load_model``; see
``slimflow.api``) loads on first use, so ``import slimflow`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("run", "load_config", "check", "predict", "load_model", "Model")
_ERRORS = ("SlimflowError", "ConfigError", "DataError", "DataValidationError", "TrackingUnavailable")
__all__ = [*_API, *_ERRORS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from slimflow import api

        return getattr(api, name)
    if name in _ERRORS:
        from slimflow.models.core import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'slimflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_ERRORS])
