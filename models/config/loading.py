"""YAML config files to validated config objects: overrides, readable errors, MLflow params.

Every error names the file and the dotted field path, so a typo fails before anything expensive
starts; values of secret-like fields are never echoed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from slimflow.models.config.base import section_class
from slimflow.models.core.errors import ConfigError
from slimflow.models.core.redact import SECRETISH, redact_override
from slimflow.models.core.yamlfiles import load_yaml

M = TypeVar("M", bound=BaseModel)

# ------------------------------------------------------------------------------------------ loading
_SECRETISH = SECRETISH


def format_validation_error(
    err: ValidationError, origin: str, root: type[BaseModel] | None = None, raw: Any = None
) -> str:
    """One line per problem: dotted path and message; 'unknown key' lists the valid keys there."""
    lines = [f"{origin}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in _TAGS)) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = allowed_keys(root, raw, e["loc"][:-1]) if root is not None else []
            msg = "unknown key" + (f"; valid keys here: {', '.join(allowed)}" if allowed else "")
        elif _SECRETISH.search(loc):
            msg = f"{msg} (value not shown: it may be a secret)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


# Tags of pydantic's own discriminated unions (plug-in fields have none): left out of error paths.
_TAGS = {"threads", "dask"}


def allowed_keys(root: type[BaseModel], raw: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config section at ``loc`` (for 'unknown key' messages); plug-in sections
    are resolved by the ``kind`` in the raw input."""
    model: type[BaseModel] | None = root
    node, ann = raw, None
    for part in loc:
        if isinstance(part, int):  # a list element: its class comes from the element itself
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            model = section_class(ann, node) if ann is not None else None
            continue
        if isinstance(part, str) and part in _TAGS:
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return []
        node = node.get(part) if isinstance(node, dict) else None
        ann = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        model = section_class(ann, node)
    return sorted(model.model_fields) if model is not None else []


_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
_OVERRIDE = re.compile(rf"^({_KEY}(?:\.(?:{_KEY}|\d+))*)=(.*)$", re.S)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=VALUE`` overrides; VALUE is parsed as YAML (numbers, lists, null...). A
    number in the path indexes a list (``compress.steps.0.ratio=0.2``)."""
    for item in overrides:
        m = _OVERRIDE.match(item)
        shown = redact_override(item)  # what error messages may show of it
        if not m:
            raise ConfigError(
                f"--set {shown!r}: expected KEY.PATH=VALUE, e.g. finetune.train.epochs=2 or "
                "compress.steps.0.ratio=0.2 (a number indexes a list)"
            )
        path, text = m.group(1).split("."), m.group(2)
        try:
            value = load_yaml(text, f"--set {shown!r}") if text.strip() else ""
        except yaml.YAMLError as e:
            detail = "" if SECRETISH.search(m.group(1)) else f": {e}"
            raise ConfigError(f"--set {shown!r}: value is not valid YAML{detail}") from None
        node: Any = raw
        for i, key in enumerate(path):
            where = ".".join(path[: i + 1])
            last = i == len(path) - 1
            if isinstance(node, list):
                if not key.isdigit():
                    raise ConfigError(
                        f"--set {shown!r}: {'.'.join(path[:i])} is a list; index it with a number"
                    )
                if int(key) >= len(node):
                    raise ConfigError(
                        f"--set {shown!r}: {where} is past the end of the list ({len(node)} item(s): "
                        f"0..{len(node) - 1})"
                    )
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
                continue
            if key.isdigit():
                raise ConfigError(f"--set {shown!r}: {'.'.join(path[:i]) or key} is not a list")
            if last:
                node[key] = value
                break
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict | list):
                raise ConfigError(f"--set {shown!r}: {where} is a value, not a section")
            node = child
    return raw


def read_config_file(
    path: str | Path | None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], str]:
    """The raw mapping of a YAML file (or {} for the defaults) with overrides applied, and a name
    for it in error messages."""
    origin = str(path) if path is not None else "(defaults)"
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = load_yaml(p.read_text(encoding="utf-8"), str(p)) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " with --set " + " ".join(redact_override(o) for o in overrides)
    return raw, origin


def validate(model: type[M], raw: Any, origin: str) -> M:
    """``model.model_validate(raw)`` with a ConfigError that reads well instead of pydantic's."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin, model, raw)) from None


def config_to_params(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """Flatten a config into dotted ``key: str`` pairs for MLflow params."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            out[key] = "null" if value is None else str(value)

    walk(cfg.model_dump(mode="json"), prefix)
    return out
