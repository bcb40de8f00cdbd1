"""A model version registered by the previous layout (slimflow c034bf9, when the library was a
top-level ``models`` package) still loads: as data through slimflow's own loader (server, predict,
bench), and through ``mlflow.pyfunc.load_model`` after ``slimflow.legacy.enable()``.

The fixture holds that version's files exactly as the old code registered them (its MLmodel, its
``mlflow_entry.py`` importing ``models.runtime``, the ONNX candidate) and the predictions the old
code made; ``tests/fixtures/legacy-v0.1/README.md`` says how it was made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "legacy-v0.1"


@pytest.fixture
def legacy_version(tmp_path):
    """A fresh registry holding the old files as version 1 of 'legacy', alias champion."""
    import mlflow

    from slimflow.models.release import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use(uri)
    client = tracking.client(uri)
    exp = client.create_experiment("legacy", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(FIXTURE / "model"), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("legacy")
    mv = client.create_model_version("legacy", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("legacy", "champion", mv.version)
    assert "from models.runtime import" in (FIXTURE / "model" / "mlflow_entry.py").read_text()
    yield uri, mlflow
    tracking.use(uri)


def expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


def test_slimflow_loads_an_old_version_as_data_and_predicts_what_the_old_code_did(legacy_version):
    from slimflow.models.release.serving import load_registered

    uri, _ = legacy_version
    model, version = load_registered("models:/legacy@champion", uri)
    want = expected()
    got = model.predict(pd.DataFrame({"text": want["texts"]}))
    assert version == "1"
    assert got["label"].tolist() == want["label"]
    assert got["score"].tolist() == pytest.approx(want["score"], abs=1e-6)


def test_mlflow_pyfunc_loads_an_old_version_with_the_legacy_alias(legacy_version, tmp_path):
    uri, _ = legacy_version
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        "if sys.argv[2] == 'alias':\n"
        "    import slimflow.legacy; slimflow.legacy.enable()\n"
        "mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])\n"
        "m = mlflow.pyfunc.load_model('models:/legacy@champion')\n"
        "texts = json.loads(sys.argv[3])\n"
        "out = m.predict(pd.DataFrame({'text': texts}))\n"
        "print(json.dumps({'label': out['label'].tolist(), 'score': out['score'].tolist()}))\n"
    )
    want = expected()
    args = [sys.executable, "-c", code, uri]
    # run outside the checkout: its models/ folder must not be what makes the import work
    ok = subprocess.run(
        [*args, "alias", json.dumps(want["texts"])], capture_output=True, text=True, cwd=tmp_path
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    got = json.loads(ok.stdout.strip().splitlines()[-1])
    assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-6)
    # without the alias the old entry cannot import its code: slimflow installs no 'models' package
    bare = subprocess.run(
        [*args, "none", json.dumps(want["texts"])], capture_output=True, text=True, cwd=tmp_path
    )
    assert bare.returncode != 0 and "No module named 'models'" in bare.stderr
