"""Names that become file names, URL paths or registry keys are checked before they are used.

A model name such as ``../../etc/cron.d/x`` must never reach ``Path(workdir) / name``; one rule
for every such name: letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; at most
64 characters (so never ``..``, ``/``, a leading dot or an absolute path).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from slimflow.models.core.errors import ConfigError

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SAFE = re.compile(SAFE_NAME)
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


def check_name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not _SAFE.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 64, starting"
            " with a letter or digit; no '/', '..' or spaces)"
        )
    return value


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version), all checked."""
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        check_name(name, "registered model name")
        if not _ALIAS.fullmatch(alias):
            raise ConfigError(f"alias {alias!r} in {uri!r} is not allowed: letters, digits, '_' or '-'")
        return name, alias, None
    name, sep, version = rest.partition("/")
    check_name(name, "registered model name")
    if not sep or not version.isdigit():
        raise ConfigError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, None, version


SECRET_REF = re.compile(r"^(env|prefect):([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


def check_secret_ref(value: str) -> str:
    """A secret is named, never written into a config: 'env:NAME' or 'prefect:BLOCK'."""
    if not SECRET_REF.fullmatch(value):
        raise ValueError(
            "must be a reference to a secret, 'env:NAME' or 'prefect:BLOCK', not the secret itself"
            " (configs are logged to MLflow as params)"
        )
    return value


def match_globs(patterns: list[str], names: list[str], missing: Callable[[str], str]) -> list[str]:
    """The ``names`` matching any glob of ``patterns`` (pattern order, each name once). A pattern
    that matches nothing raises ``ValueError(missing(pattern))``: a typo in a list of layers to keep
    at higher precision would otherwise silently leave the layer it meant to protect unprotected."""
    import fnmatch

    out: list[str] = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(missing(pat))
        out.extend(h for h in hits if h not in out)
    return out
