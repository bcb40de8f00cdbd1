"""The MLflow registry on a real sqlite store: register, aliases, promote, rollback, model cards,
loading a registered model (from code, or as data), and refusing pickle payloads."""

from __future__ import annotations

import json
import time

import pytest


# ------------------------------------------------------------------------------ registry on sqlite
@pytest.fixture
def candidate(candidates):
    """A tiny trained classifier exported as an ONNX candidate folder (tests/models/release/conftest.py)."""
    return candidates["onnxruntime"]


@pytest.fixture
def store(tmp_path):

    from slimflow.models.release import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use(uri)
    client = tracking.client(uri)
    exp = client.create_experiment("reg", artifact_location=(tmp_path / "art").as_uri())
    return client, exp


def test_register_alias_promote_and_rollback_on_a_real_store(candidate, store):
    from slimflow.models.release.registry import (
        CHALLENGER,
        CHAMPION,
        PREVIOUS,
        RegistryError,
        alias_version,
        promote,
        register_candidate,
        rollback,
        set_alias,
    )

    client, exp = store
    versions = []
    for i in range(3):
        run = client.create_run(exp).info.run_id
        v = register_candidate(client, run, "clf", candidate, {"slimflow.n": str(i)}, f"# card {i}\n")
        versions.append(v)
    assert versions == ["1", "2", "3"]
    mv = client.get_model_version("clf", "2")
    assert mv.tags["slimflow.n"] == "1" and mv.tags["slimflow.model_card"].endswith("model_card_v2.md")

    set_alias(client, "clf", CHALLENGER, "1")
    assert alias_version(client, "clf", CHALLENGER) == "1" and alias_version(client, "clf", CHAMPION) is None
    leaky = {"slimflow.approved_by": "ana", "slimflow.note": "from https://bob:hunter2@store.example/x"}
    assert promote(client, "clf", "1", leaky) is None
    note = client.get_model_version("clf", "1").tags["slimflow.note"]
    assert "hunter2" not in note and "store.example/x" in note  # tag values pass through redaction
    assert promote(client, "clf", "2", {}) == "1"
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("2", "1")
    assert client.get_model_version("clf", "1").tags["slimflow.approved_by"] == "ana"
    assert promote(client, "clf", "2", {}) == "2"  # idempotent: previous untouched
    assert alias_version(client, "clf", PREVIOUS) == "1"

    assert rollback(client, "clf") == ("2", "1")
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("1", "2")
    with pytest.raises(RegistryError, match="champion by a rollback from v2.*rollback --to 2"):
        rollback(client, "clf")  # a second rollback by accident would flip back
    assert rollback(client, "clf", to="2") == ("1", "2")  # said explicitly: undone
    assert rollback(client, "clf", to="2") == ("2", "2")  # idempotent
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("2", "1")
    with pytest.raises(RegistryError, match="no version 9"):
        rollback(client, "clf", to="9")
    # compare-and-set: a promotion decided against v1 while v2 is champion moves nothing
    from slimflow.models.release.registry import ChampionChanged

    with pytest.raises(ChampionChanged, match="champion is now v2, not v1"):
        promote(client, "clf", "3", {}, expected_champion="1")
    with pytest.raises(ChampionChanged, match="now v2, not unset"):
        promote(client, "clf", "3", {}, expected_champion=None)
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("2", "1")
    assert promote(client, "clf", "3", {}, expected_champion="2") == "2"
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("3", "2")

    run = client.create_run(exp).info.run_id
    register_candidate(client, run, "solo", candidate, {}, "card")
    with pytest.raises(RegistryError, match="no 'previous' version"):
        rollback(client, "solo")


def test_registered_model_loads_by_alias_in_a_fresh_process_and_predicts_from_raw_text(
    candidate, store, tmp_path
):
    import json
    import subprocess
    import sys

    from slimflow.models.optimize.predictors import load_predictor
    from slimflow.models.release.registry import set_alias

    client, exp = store
    run = client.create_run(exp).info.run_id
    v = __import__("slimflow.models.release.registry", fromlist=["x"]).register_candidate(
        client, run, "clf", candidate, {}, "card"
    )
    set_alias(client, "clf", "champion", v)
    texts = ["good great film", "bad awful dull plot", "the cast was lovely and witty"]
    code = (
        "import json, sys, mlflow, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
        "m = mlflow.pyfunc.load_model('models:/clf@champion'); "
        "out = m.predict(pd.DataFrame({'text': json.loads(sys.argv[2])})); "
        "print(json.dumps({'labels': out['label'].tolist(), 'torch': 'torch' in sys.modules}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, client.tracking_uri, json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    p = load_predictor(candidate, 1)
    assert got["labels"] == [p.info.labels[i] for i in p.predict(texts).argmax(-1)]
    assert got["torch"] is False  # an ONNX model serves without torch


class _Payload:
    """Unpickling this creates the marker file: proof that something executed it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_model(marker: str):
    import mlflow

    class EvilModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

        def __reduce__(self):
            return (open, (marker, "w"))

    return EvilModel()


def test_served_models_load_as_data_and_pickle_payloads_are_refused_unexecuted(candidate, store, tmp_path):
    import pickle

    import mlflow

    from slimflow.models.optimize.predictors import load_predictor
    from slimflow.models.release import serving as serve
    from slimflow.models.release.registry import RegistryError, register_candidate, set_alias

    client, exp = store
    run = client.create_run(exp).info.run_id
    v = register_candidate(client, run, "clf", candidate, {}, "card")
    set_alias(client, "clf", "champion", v)
    model, version = serve.load_registered("models:/clf@champion", client.tracking_uri)
    assert version == v
    texts = ["good great film", "bad awful dull", "the cast was lovely"]
    out = model.predict(__import__("pandas").DataFrame({"text": texts}))
    p = load_predictor(candidate, 1)
    assert out["label"].tolist() == [p.info.labels[i] for i in p.predict(texts).argmax(-1)]

    # 1. a registered version whose artifacts carry a pickle (a classic "model.pkl")
    marker = tmp_path / "executed"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_artifacts(str(evil), "model")
        uri = f"runs:/{mlflow.active_run().info.run_id}/model"
    client.create_registered_model("evil")
    mv = client.create_model_version("evil", uri, None)
    with pytest.raises(RegistryError, match="pickle-type files.*model.pkl"):
        serve.load_registered(f"models:/evil/{mv.version}", client.tracking_uri)
    # 2. a cloudpickled MLflow pyfunc (python_model.pkl) - the usual way pyfunc models are logged
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.pyfunc.log_model(
            name="m", python_model=_evil_model(str(marker)), registered_model_name="evil2",
            pip_requirements=["mlflow"],
        )  # fmt: skip
    with pytest.raises(RegistryError, match="pickle-type files"):
        serve.load_registered(f"models:/evil2/{info.registered_model_version}", client.tracking_uri)
    # 3. and through the CLI commands that take a model
    from tests.cli.test_cli import slimflow

    (tmp_path / "x.csv").write_text("text\ngood film\n")
    r = slimflow("predict", "--model", f"models:/evil2/{info.registered_model_version}", "--input",
                 str(tmp_path / "x.csv"), "--output", str(tmp_path / "y.csv"), "--tracking-uri",
                 client.tracking_uri, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1 and "pickle-type files" in r.stderr, r.stderr[-2000:]
    assert not marker.exists(), "a pickle payload was executed"


# ------------------------------------------------------------------ aliases under faults and races
def _three_versions(client, exp, candidate, name="clf"):
    from slimflow.models.release.registry import promote, register_candidate

    for _ in range(3):
        register_candidate(client, client.create_run(exp).info.run_id, name, candidate, {}, "card")
    promote(client, name, "1", {})
    promote(client, name, "2", {})  # champion 2, previous 1


def _aliases(client, name="clf"):
    from slimflow.models.release.registry import CHAMPION, PREVIOUS, alias_version

    return alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)


class _Dies:
    """Lets ``n`` alias writes through, then fails like a tracking server that went away."""

    def __init__(self, client, n: int) -> None:
        self.real, self.left = client.set_registered_model_alias, n

    def __call__(self, *a):
        if self.left == 0:
            raise ConnectionError("tracking server went away")
        self.left -= 1
        return self.real(*a)


@pytest.mark.parametrize("op", ["promote", "rollback"])
def test_an_alias_move_cut_between_its_two_writes_is_completed_by_the_next_call(candidate, store, op):
    from slimflow.models.release import registry

    client, exp = store
    _three_versions(client, exp, candidate)
    real = client.set_registered_model_alias
    client.set_registered_model_alias = _Dies(client, 1)
    with pytest.raises(ConnectionError):
        registry.promote(client, "clf", "3", {}) if op == "promote" else registry.rollback(client, "clf")
    client.set_registered_model_alias = real
    # cut after one write: promotion wrote previous=2 (champion still 2); rollback wrote champion=1
    assert _aliases(client) == (("2", "2") if op == "promote" else ("1", "1"))
    intent = json.loads(client.get_registered_model("clf").tags[registry.INTENT_TAG])
    assert intent["before"] == {"champion": "2", "previous": "1"}  # nothing is lost: the record has it
    done = registry.recover(client, "clf")
    assert done["op"] == op
    assert _aliases(client) == (("3", "2") if op == "promote" else ("1", "2"))
    assert registry.INTENT_TAG not in client.get_registered_model("clf").tags
    assert registry.recover(client, "clf") is None
    # a retried call after the completion changes nothing more
    if op == "promote":
        assert registry.promote(client, "clf", "3", {}) == "3"
        assert _aliases(client) == ("3", "2")


RACER = """
import sys, time
from pathlib import Path
from slimflow.models.release import registry, tracking
from slimflow.tasks.locks import registry_lock

uri, op, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
client = tracking.client(uri)
while not go.exists():
    time.sleep(0.01)
try:
    with registry_lock("clf", uri):
        if op == "promote":
            registry.promote(client, "clf", "3", {}, expected_champion="2")
        else:
            registry.rollback(client, "clf")
    print("done", op)
except registry.RegistryError as e:
    print("refused", op, type(e).__name__)
"""


def test_promote_racing_rollback_in_two_processes_ends_in_a_consistent_state(candidate, store, tmp_path):
    import subprocess
    import sys

    client, exp = store
    _three_versions(client, exp, candidate)
    go = tmp_path / "go"
    procs = {
        op: subprocess.Popen(
            [sys.executable, "-c", RACER, client.tracking_uri, op, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for op in ("promote", "rollback")
    }
    time.sleep(6)  # both imported and waiting
    go.touch()
    outs = {op: p.communicate(timeout=120) for op, p in procs.items()}
    for op, (_, e) in outs.items():
        assert procs[op].returncode == 0, e[-2000:]
    said = {op: o.strip().splitlines()[-1] for op, (o, _) in outs.items()}
    final = _aliases(client)
    if said["promote"] == "done promote":  # promotion first (2 -> 3), then the rollback (3 -> 2)
        assert said["rollback"] == "done rollback" and final == ("2", "3")
    else:  # rollback first (2 -> 1): the promotion decided against v2 refuses, nothing lost
        assert said["promote"] == "refused promote ChampionChanged" and final == ("1", "2")
    assert "slimflow.alias_intent" not in client.get_registered_model("clf").tags


def test_the_promotion_task_reports_a_changed_champion_as_a_verdict(candidate, store):
    """An approval answered after another run promoted: the task moves nothing and says why (the
    pipeline's outcome is then 'champion_changed', not a crash)."""
    from slimflow.models.release.config import PromoteConfig
    from slimflow.models.release.registry import promote, register_candidate
    from slimflow.tasks.common import StageContext
    from slimflow.tasks.promote import promote_champion

    client, exp = store
    for _ in range(2):
        register_candidate(client, client.create_run(exp).info.run_id, "clf", candidate, {}, "card")
    promote(client, "clf", "1", {})  # another run promoted v1 after this one decided (champion unset)
    parent = client.create_run(exp).info.run_id
    ctx = StageContext(
        workdir="/tmp", tracking_uri=client.tracking_uri, experiment_id=exp, parent_run_id=parent
    )
    res = promote_champion.fn(
        PromoteConfig(model_name="clf"), "2", {"decision": "approved"}, None, "code", ctx
    )
    assert res.champion is None and "champion is now v1, not unset" in res.refused
    assert _aliases(client) == ("1", None)
    assert "champion is now v1" in client.get_run(parent).data.tags["slimflow.promotion_refused"]
