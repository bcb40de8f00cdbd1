"""Task results are persisted as JSON and a planted pickle in the results folder is never executed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from slimflow.models.core.results import StageResult
from slimflow.tasks.common import STAGE_CACHE
from slimflow.tasks.results import SafeJSONSerializer, UnsafeResult, persistence


class Echo(StageResult):
    value: int
    path: str = ""


CALLS: list[int] = []


class _Payload:
    """Unpickling this creates the marker file: proof that something executed it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _run(x: int):
    from prefect import flow, task

    @task(name="echo", cache_policy=STAGE_CACHE, **persistence())
    def echo(x: int, code_version: str, ctx: object = None) -> Echo:
        CALLS.append(x)
        return Echo(value=x, path=str(Path("/tmp") / f"e{x}"))

    @flow
    def f(x: int):
        return echo(x, "v1", return_state=True)

    return f(x)


def test_results_are_json_and_a_planted_pickle_is_never_executed(harness, tmp_path):
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "storage"}):
        CALLS.clear()
        first = _run(7)
        second = _run(7)
        assert first.name == "Completed" and second.name == "Cached" and CALLS == [7]
        assert second.result() == Echo(value=7, path="/tmp/e7")

        keys = sorted((tmp_path / "storage" / "slimflow-keys").iterdir())
        assert len(keys) == 1
        meta = json.loads(keys[0].read_bytes())
        assert meta["serializer"]["type"] == "slimflow-json"
        stored = (tmp_path / "storage" / meta["storage_key"]).read_bytes()
        assert json.loads(stored)["data"]["value"] == 7  # plain JSON, no pickle anywhere

        # 1. a pickle record planted where the cache looks for this key
        marker = tmp_path / "executed"
        record = ResultRecord(
            metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(keys[0])),
            result=_Payload(str(marker)),
        )
        keys[0].write_bytes(record.serialize())
        third = _run(7)
        assert not marker.exists(), "a planted pickle was executed"
        assert third.name == "Completed" and CALLS == [7, 7]  # a cache miss: the stage ran again
        assert json.loads(keys[0].read_bytes())["serializer"]["type"] == "slimflow-json"  # replaced

        # 2. a genuine JSON record whose result file was swapped for a pickle: parsed as JSON only
        meta = json.loads(keys[0].read_bytes())
        (tmp_path / "storage" / meta["storage_key"]).write_bytes(pickle.dumps(_Payload(str(marker))))
        fourth = _run(7)
        assert not marker.exists(), "a planted pickle was executed"
        assert fourth.name == "Completed" and CALLS == [7, 7, 7]  # a cache miss again
        assert fourth.result() == Echo(value=7, path="/tmp/e7")
        assert _run(7).name == "Cached"  # and the rewritten record serves the next run


def test_the_serializer_refuses_unknown_result_types():
    ser = SafeJSONSerializer()
    blob = ser.dumps({"a": Echo(value=1), "n": [1, 2.5, None]})
    assert ser.loads(blob) == {"a": Echo(value=1), "n": [1, 2.5, None]}
    forged = json.dumps({"__slimflow_result__": "subprocess.Popen", "data": {"args": ["touch", "x"]}})
    with pytest.raises(UnsafeResult, match="unknown type 'subprocess.Popen'"):
        ser.loads(forged.encode())
    from pydantic import BaseModel

    class Other(BaseModel):
        x: int = 1

    with pytest.raises(TypeError, match="Other is not a result type slimflow persists"):
        ser.dumps(Other())
    with pytest.raises(TypeError, match="cannot persist a object as a JSON task result"):
        ser.dumps(object())
