"""decide(): the promotion decision, table-driven at, just below and just above every threshold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.registry import GatesConfig, decide, judge

EPS = 1e-9


def cand(name="c", acc=0.84, p50=2.0, p95_hi=3.0, mb=10.0, target="cpu", status="ok") -> dict:
    st = {"batch_size": 1, "length": "data", "p50_ms": p50, "p95_ms": p95_hi * 0.9, "p95_ci_high_ms": p95_hi}
    return {"name": name, "status": status, "target": target, "test": {"accuracy": acc},
            "file_bytes": int(mb * 2**20), "bench": {"settings": [st]}}  # fmt: skip


@pytest.mark.parametrize(
    ("gates", "row", "passed"),
    [
        # min_test_accuracy: at, just below, just above
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"acc": 0.80}, True),
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"acc": 0.80 - EPS}, False),
        ({"min_test_accuracy": 0.80, "min_retention": None}, {"acc": 0.80 + EPS}, True),
        # min_retention vs a teacher at 0.85: 0.98 * 0.85 = 0.833
        ({"min_retention": 0.98}, {"acc": 0.833}, True),
        ({"min_retention": 0.98}, {"acc": 0.833 - 1e-6}, False),
        ({"min_retention": 0.98}, {"acc": 0.833 + 1e-6}, True),
        # max_p95_ms judged on the CI's upper bound
        ({"max_p95_ms": 3.0}, {"p95_hi": 3.0}, True),
        ({"max_p95_ms": 3.0}, {"p95_hi": 3.0 + EPS}, False),
        ({"max_p95_ms": 3.0}, {"p95_hi": 3.0 - EPS}, True),
        # max_size_mb
        ({"max_size_mb": 10.0}, {"mb": 10.0}, True),
        ({"max_size_mb": 10.0}, {"mb": 10.001}, False),
        ({"max_size_mb": 10.0}, {"mb": 9.999}, True),
    ],
)
def test_each_gate_at_and_around_its_threshold(gates, row, passed):
    g = GatesConfig(**gates)
    v = judge(cand(**row), g, teacher_accuracy=0.85)
    assert v.passed is passed, [x.describe() for x in v.gates]
    d = decide([cand(**row)], g, 0.85)
    assert (d.winner == "c") is passed


def test_latency_gate_uses_the_upper_confidence_bound_not_the_point_estimate():
    row = cand(p95_hi=3.5)
    row["bench"]["settings"][0]["p95_ms"] = 2.5  # the point estimate alone would pass
    assert not judge(row, GatesConfig(max_p95_ms=3.0), 0.85).passed


def test_latency_gate_fails_when_the_batch_size_was_not_measured():
    v = judge(cand(), GatesConfig(max_p95_ms=100.0, latency_batch_size=32), 0.85)
    assert not v.passed and v.gates[-1].value is None and "missing" in v.gates[-1].describe()


def test_ties_prefer_the_faster_then_the_smaller():
    g = GatesConfig(min_retention=0.9)
    rows = [
        cand("slow", p50=3.0, mb=1.0),
        cand("fast", p50=2.0, mb=20.0),
        cand("fast-small", p50=2.0, mb=5.0),
    ]
    assert decide(rows, g, 0.85).winner == "fast-small"
    rows = [cand("a", p50=2.0, p95_hi=4.0), cand("b", p50=2.0, p95_hi=3.0)]
    assert decide(rows, g, 0.85).winner == "b"


def test_no_winner_names_the_best_effort_and_its_failed_gates():
    g = GatesConfig(min_retention=0.98, max_p95_ms=1.0, max_size_mb=5.0)
    rows = [
        cand("accurate-slow-big", acc=0.85, p95_hi=4.0, mb=20.0),  # fails 2
        cand("fast-small-weak", acc=0.70, p95_hi=0.5, mb=2.0),  # fails 1
    ]
    d = decide(rows, g, 0.85)
    assert d.winner is None and d.best_effort == "fast-small-weak"
    assert d.best_effort_failed == ["min_retention"]
    assert "no candidate passes" in d.reason and "min_retention" in d.reason
    assert d.verdict("accurate-slow-big").failed == ["max_p95_ms", "max_size_mb"]


def test_only_measured_candidates_on_the_target_compete():
    g = GatesConfig(min_retention=0.5, target="cpu")
    rows = [
        cand("gpu-fast", p50=0.1, target="cuda"),
        cand("failed", p50=0.1, status="failed"),
        cand("cpu", p50=5.0),
    ]
    assert decide(rows, g, 0.85).winner == "cpu"
    assert decide([], g, 0.85).reason == "no measured candidate to judge on target cpu"


def test_gates_config_needs_at_least_one_gate():
    with pytest.raises(ValidationError, match="at least one gate"):
        GatesConfig(min_retention=None)


# ------------------------------------------------------------------------------ registry on sqlite
@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    """A tiny trained classifier exported as an ONNX candidate folder."""
    from models.candidates import CandidateSpec, fp32_candidate
    from models.config import ExportConfig
    from models.export import export_onnx
    from models.targets import get_target
    from tests.conftest import build_tiny_model, make_reviews, train_tiny_teacher

    tmp = tmp_path_factory.mktemp("reg")
    _, res = train_tiny_teacher(tmp, build_tiny_model(tmp / "base"), rows=160, epochs=2)
    texts = make_reviews(8)["review"].tolist()
    export_onnx(res.model_dir, tmp / "onnx", ExportConfig(), get_target("cpu"), texts, threads=1)
    out = tmp / "cand"
    out.mkdir()
    spec = CandidateSpec("teacher", "onnx_fp32", "cpu", "onnxruntime")
    fp32_candidate(tmp / "onnx", spec, out, 32, ["neg", "pos"])
    return out


@pytest.fixture
def store(tmp_path):

    from models import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use(uri)
    client = tracking.client(uri)
    exp = client.create_experiment("reg", artifact_location=(tmp_path / "art").as_uri())
    return client, exp


def test_register_alias_promote_and_rollback_on_a_real_store(candidate, store):
    from models.registry import (
        CHALLENGER,
        CHAMPION,
        PREVIOUS,
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
    assert promote(client, "clf", "1", {"slimflow.approved_by": "ana"}) is None
    assert promote(client, "clf", "2", {}) == "1"
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("2", "1")
    assert client.get_model_version("clf", "1").tags["slimflow.approved_by"] == "ana"
    assert promote(client, "clf", "2", {}) == "2"  # idempotent: previous untouched
    assert alias_version(client, "clf", PREVIOUS) == "1"

    assert rollback(client, "clf") == ("2", "1")
    assert (alias_version(client, "clf", CHAMPION), alias_version(client, "clf", PREVIOUS)) == ("1", "2")
    assert rollback(client, "clf") == ("1", "2")  # a rollback can be undone

    from models.registry import RegistryError

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

    from models.registry import set_alias
    from models.runtime import load_predictor

    client, exp = store
    run = client.create_run(exp).info.run_id
    v = __import__("models.registry", fromlist=["x"]).register_candidate(
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


def test_model_card_names_figures_gates_and_approver():
    from models.registry import model_card

    row = cand("student/ort_int8_dynamic/cpu")
    row.update(source="student", variant="ort_int8_dynamic", runtime="onnxruntime")
    row["test"].update(f1=0.83, rows=2551)
    s = row["bench"]["settings"][0]
    s.update(p50_ci_low_ms=1.9, p50_ci_high_ms=2.1, throughput_eps=500.0)
    v = judge(row, GatesConfig(max_p95_ms=5.0), 0.85)
    approval = {"decision": "approved", "reviewer": "ana", "time": "2026-11-23T22:00Z", "comment": "ok"}
    card = model_card(row, v, {"teacher_accuracy": 0.85, "data_source": "packaged:rotten_tomatoes"}, approval)
    for needle in ("student/ort_int8_dynamic/cpu", "0.8400", "p50 2.00 ms", "max_p95_ms: 3 <= 5 ok",
                   "approved by **ana**", "packaged:rotten_tomatoes"):  # fmt: skip
        assert needle in card, needle


class _Payload:
    """Unpickling this creates the marker file: proof that something executed it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def _evil_model(marker: str):  # noqa: ANN202
    import mlflow

    class EvilModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            return model_input

        def __reduce__(self):  # noqa: ANN204
            return (open, (marker, "w"))

    return EvilModel()


def test_served_models_load_as_data_and_pickle_payloads_are_refused_unexecuted(candidate, store, tmp_path):
    import pickle

    import mlflow

    from models import serve
    from models.registry import RegistryError, register_candidate, set_alias
    from models.runtime import load_predictor

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
    from tests.test_cli import slimflow

    (tmp_path / "x.csv").write_text("text\ngood film\n")
    r = slimflow("predict", "--model", f"models:/evil2/{info.registered_model_version}", "--input",
                 str(tmp_path / "x.csv"), "--output", str(tmp_path / "y.csv"), "--tracking-uri",
                 client.tracking_uri, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1 and "pickle-type files" in r.stderr, r.stderr[-2000:]
    assert not marker.exists(), "a pickle payload was executed"
