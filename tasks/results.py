"""Prefect task results as plain JSON, read back only from records slimflow wrote that way.

Prefect persists task results (the cache of a stage) as records that name their own serializer,
and reads a record with the serializer *the record* names: by default cloudpickle, so a file planted
in the results folder under a cache key would run code when the cache is read. slimflow's results
are small typed records (``StageResult`` models, dicts of numbers and paths), so they are written
as JSON (``SafeJSONSerializer``: results of a known class only), and the cache policy keeps its
records (key -> metadata naming the serializer) in ``SafeResultStorage``, which hands Prefect a
record only if it names that serializer; any other record (a pickle among them) reads as a cache
miss, the stage runs again and its result replaces the record. The result file a record points to
is then parsed as JSON whatever it holds. Nothing in a record is ever imported or unpickled:
classes are looked up among ``StageResult``'s subclasses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer
from pydantic import BaseModel, Field

from slimflow.models.core.errors import SlimflowError
from slimflow.models.core.results import StageResult

SERIALIZER = "slimflow-json"
_TAG = "__slimflow_result__"


class UnsafeResult(SlimflowError, ValueError):
    """A persisted result that slimflow did not write as JSON: never deserialized."""


def _result_classes() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    stack: list[type[BaseModel]] = [StageResult]
    while stack:
        cls = stack.pop()
        out[f"{cls.__module__}.{cls.__qualname__}"] = cls
        stack.extend(cls.__subclasses__())
    return out


def _encode(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if name not in _result_classes():
            raise TypeError(f"{name} is not a result type slimflow persists (not a StageResult)")
        return {_TAG: name, "data": obj.model_dump(mode="json")}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot persist a {type(obj).__name__} as a JSON task result")


def _decode(d: dict[str, Any]) -> Any:
    name = d.get(_TAG)
    if name is None:
        return d
    cls = _result_classes().get(str(name))
    if cls is None:
        raise UnsafeResult(f"persisted result of unknown type {name!r}: refused")
    return cls.model_validate(d["data"])


class SafeJSONSerializer(Serializer):
    """JSON for task results; result models by name among StageResult's subclasses only."""

    type: str = Field(default=SERIALIZER, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_encode).encode("utf-8")

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob, object_hook=_decode)


def check_record(content: bytes) -> bytes:
    """``content`` if it is a result record (or a record's metadata) that names ``SafeJSONSerializer``;
    else UnsafeResult. Checked before Prefect parses it: parsing the metadata of a pickle record
    already imports the module it names as its pickle library."""
    try:
        record = json.loads(content)
        meta = record.get("metadata", record)
        kind = meta["serializer"]["type"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnsafeResult("persisted result is not a JSON result record: refused") from None
    if kind != SERIALIZER:
        raise UnsafeResult(f"persisted result written with serializer {kind!r}, not {SERIALIZER!r}: refused")
    if "metadata" not in record and meta.get("storage_key"):  # the result lives in its own file
        try:
            json.loads(Path(meta["storage_key"]).read_bytes())
        except (OSError, ValueError):
            raise UnsafeResult("the result file of a persisted record is not JSON: refused") from None
    return content


class SafeResultStorage(LocalFileSystem):
    """Where the cache's records (key -> metadata) live: a folder beside Prefect's local result
    storage (``<PREFECT_LOCAL_STORAGE_PATH>/slimflow-keys`` unless a basepath is given) that reads
    back only records naming ``SafeJSONSerializer``. The result itself is then read with that
    serializer, whatever the result file holds."""

    _block_type_name = "slimflow safe result storage"

    def _resolve_path(self, path: str) -> Path:
        if not self.basepath:
            from prefect.settings import get_current_settings

            base = Path(get_current_settings().results.local_storage_path) / "slimflow-keys"
            return LocalFileSystem(basepath=str(base))._resolve_path(path)
        return super()._resolve_path(path)

    async def aread_path(self, path: str) -> bytes:
        return check_record(await super().aread_path(path))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return check_record(super().read_path(path, _sync=True))


def persistence() -> dict[str, Any]:
    """The task options that persist a task's result as JSON (the cache policy's key storage, see
    ``tasks.common.STAGE_CACHE``, is what refuses other records)."""
    return {"persist_result": True, "result_serializer": SafeJSONSerializer()}
