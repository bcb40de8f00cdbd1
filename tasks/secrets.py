"""Secrets are referenced in configs ('env:NAME', 'prefect:BLOCK') and read only where used.

The value is returned to the caller and goes nowhere else: not into task inputs (Prefect hashes
and records those), not into MLflow params or tags, not into logs. Errors name the reference,
never a value.
"""

from __future__ import annotations

import os

from slimflow.models.core.errors import ConfigError
from slimflow.models.core.names import check_secret_ref


def resolve_secret(ref: str) -> str:
    kind, _, name = check_secret_ref(ref).partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"secret {ref}: environment variable {name} is not set (or empty)")
        return value
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError as e:
        raise ConfigError(
            f"secret {ref}: no Prefect Secret block named {name!r} ({type(e).__name__})"
        ) from None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"secret {ref}: the Prefect Secret block {name!r} holds no string")
    return value
