import os

import mlflow
import pytest

from models import tracking
from models.config import TrackingConfig


@pytest.fixture(autouse=True)
def _no_user_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_default_store_is_sqlite_in_the_workdir(tmp_path):
    uri, exp_id = tracking.configure(TrackingConfig(experiment="e"), tmp_path / "w")
    assert uri == f"sqlite:///{(tmp_path / 'w' / 'mlflow.db').resolve()}"
    exp = mlflow.MlflowClient(uri).get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "w" / "mlartifacts").resolve().as_uri()


def test_two_pipelines_in_one_process_keep_their_own_stores(tmp_path):
    """Regression: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which looked like a user override."""
    a, _ = tracking.configure(TrackingConfig(), tmp_path / "a")
    b, _ = tracking.configure(TrackingConfig(), tmp_path / "b")
    assert a != b and str(tmp_path / "b") in b
    assert mlflow.get_tracking_uri() == b


def test_precedence_config_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert tracking.tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path / 'env.db'}"
    explicit = f"sqlite:///{tmp_path / 'cfg.db'}"
    assert tracking.tracking_uri(TrackingConfig(uri=explicit), tmp_path) == explicit
    tracking.configure(TrackingConfig(uri=explicit), tmp_path)
    assert mlflow.get_tracking_uri() == explicit
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'env.db'}"  # untouched


def test_stage_run_nests_under_the_parent_and_fails_on_error(tmp_path):
    uri, exp_id = tracking.configure(TrackingConfig(), tmp_path)
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(exp_id).info.run_id
    with tracking.stage_run(parent, "ok-stage", exp_id) as run:
        mlflow.log_metric("x", 1.0)
    with pytest.raises(ValueError), tracking.stage_run(parent, "bad-stage", exp_id):
        raise ValueError("boom")
    ok, bad = (
        client.get_run(run.info.run_id),
        client.search_runs([exp_id], "attributes.run_name = 'bad-stage'")[0],
    )
    assert ok.data.tags["mlflow.parentRunId"] == parent and ok.info.status == "FINISHED"
    assert bad.info.status == "FAILED" and bad.data.tags["mlflow.parentRunId"] == parent


def test_provenance_tags_name_commit_versions_and_hardware():
    tags = tracking.provenance_tags()
    assert tags["slimflow.git_commit"] and tags["hw.cores"].isdigit()
    assert tags["version.torch"].startswith("2.") and tags["hw.gpu"]
    assert len(tags["slimflow.code_version"]) == 16
