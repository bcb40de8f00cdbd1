"""The base of every config section, and plug-in fields.

A plug-in field (a PEFT method, a student, a compression step, a quantizer) holds the config class
that a registry names by its ``kind``. The class is looked up in the registry when a value is
validated: the set of kinds is whatever is registered then, never a union frozen at import time,
and an unknown kind is refused with the list of known ones.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, SerializeAsAny, ValidatorFunctionWrapHandler, WrapValidator

from slimflow.models.core.plugins import Registry


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, instances are immutable (hashable cache keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PluginConfig(Strict):
    """Base of every plug-in config: ``kind`` names the registered plug-in."""

    kind: str

    @classmethod
    def plugin_kind(cls) -> str:
        """The kind this config class registers under (its ``kind`` default)."""
        return cls.model_fields["kind"].default


@dataclass(frozen=True)
class PluginSlot:
    """Marks a plug-in field in a type annotation (error messages use it to name the valid keys)."""

    registry: Registry[Any]
    default_kind: str | None = None

    def config_class(self, kind: str) -> type[PluginConfig]:
        return self.registry.get(kind).config


def plugin_field(registry: Registry[Any], default_kind: str | None = None) -> Any:
    """The annotation of a field holding one plug-in config of ``registry``'s kind.

    Registry items must have a ``config`` attribute (the plug-in's config class). A mapping
    without ``kind`` takes ``default_kind`` when there is one.
    """
    slot = PluginSlot(registry, default_kind)

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, PluginConfig):
            slot.config_class(value.kind)  # a config object of a kind nobody registered is refused too
            return value
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with a 'kind' ({registry.kind}: {', '.join(registry)})")
        kind = value.get("kind", default_kind)
        if kind is None:
            raise ValueError(f"missing 'kind' ({registry.kind}: {', '.join(registry)})")
        if kind not in registry:
            raise ValueError(f"unknown {registry.kind} kind {kind!r}; known: {', '.join(registry)}")
        return slot.config_class(kind).model_validate({**value, "kind": kind})

    return Annotated[SerializeAsAny[PluginConfig], WrapValidator(validate), slot]


def section_class(annotation: Any, raw: Any) -> type[BaseModel] | None:
    """The config class a (possibly Optional/list/plug-in) annotation holds, for the raw value given."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        args = typing.get_args(annotation)
        slot = next((m for m in args[1:] if isinstance(m, PluginSlot)), None)
        if slot is not None:
            kind = raw.get("kind", slot.default_kind) if isinstance(raw, dict) else None
            return slot.config_class(kind) if kind in slot.registry else None
        return section_class(args[0], raw)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_class(arg, raw)
        if found is not None:
            return found
    return None
