"""A config explained: YAML with every field's description beside it, and a JSON Schema for editors.

``commented_yaml`` is what ``slimflow show-config`` prints: the resolved values, each with the
description its field declares. ``json_schema`` expands plug-in fields (PEFT methods, students,
compression steps, quantizers) into one alternative per registered kind, so an editor with a YAML
language server completes ``kind: lora`` *and* LoRA's own keys, and flags a misspelt one.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Annotated, Any

import yaml
from pydantic import BaseModel

from slimflow.models.config.base import PluginConfig, PluginSlot

_WIDTH = 44  # column where comments start, when the value is short enough


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


def _line(indent: str, key: str, value: str | None, comment: str | None) -> str:
    body = f"{indent}{key}:" + (f" {value}" if value is not None else "")
    if not comment:
        return body
    pad = max(_WIDTH - len(body), 2)
    return f"{body}{' ' * pad}# {comment}"


def commented_yaml(cfg: BaseModel, indent: str = "") -> str:
    """``cfg`` as YAML, one field per line (lists of sections as flow mappings), each field with its
    declared description as a comment. Loading the result gives ``cfg``'s values back."""
    lines: list[str] = []
    dumped = cfg.model_dump(mode="json")
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        desc = (field.description or "").replace("\n", " ")
        if isinstance(value, BaseModel):
            lines.append(_line(indent, name, None, desc))
            lines.append(commented_yaml(value, indent + "  "))
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            lines.append(_line(indent, name, None, desc))
            lines += [f"{indent}  - {_scalar(v.model_dump(mode='json'))}" for v in value]
        else:
            lines.append(_line(indent, name, _scalar(dumped[name]), desc))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- JSON Schema
def _slots(annotation: Any) -> list[PluginSlot]:
    """The plug-in slots inside an annotation (through Optional, list, Annotated)."""
    found: list[PluginSlot] = []
    if typing.get_origin(annotation) is Annotated:
        args = typing.get_args(annotation)
        found += [m for m in args[1:] if isinstance(m, PluginSlot)]
        return found or _slots(args[0])
    for arg in typing.get_args(annotation):
        found += _slots(arg)
    return found


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models(arg)
    return out


def _replace_plugin_refs(node: Any, alternatives: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if node.get("$ref") == "#/$defs/PluginConfig":
            return alternatives
        return {k: _replace_plugin_refs(v, alternatives) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_plugin_refs(v, alternatives) for v in node]
    return node


def json_schema(root: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema of ``root`` with every plug-in field expanded to the kinds registered now."""
    schema = root.model_json_schema(ref_template="#/$defs/{model}")
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, field in cls.model_fields.items():
            ann = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            todo += _models(field.annotation)
            for slot in _slots(ann):
                options = []
                for kind in slot.registry:
                    config: type[PluginConfig] = slot.config_class(kind)
                    todo.append(config)
                    sub = config.model_json_schema(ref_template="#/$defs/{model}")
                    for key, value in sub.pop("$defs", {}).items():
                        defs.setdefault(key, value)
                    sub["properties"]["kind"] = {
                        "const": kind,
                        "description": f"{slot.registry.kind}: {kind}",
                    }
                    if slot.default_kind != kind:
                        sub["required"] = sorted({*sub.get("required", []), "kind"})
                    key = re.sub(r"[^A-Za-z0-9_]+", "_", f"{slot.registry.kind}_{kind}")
                    defs[key] = sub
                    options.append({"$ref": f"#/$defs/{key}"})
                target = schema if cls is root else defs.get(cls.__name__)
                if target is not None and name in target.get("properties", {}):
                    prop = target["properties"][name]
                    target["properties"][name] = _replace_plugin_refs(prop, {"oneOf": options})
    defs.pop("PluginConfig", None)
    if "PluginConfig" in json.dumps(schema):  # a plug-in field this walk did not reach: fail loudly
        raise RuntimeError("json_schema: a plug-in field was not expanded")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
