"""From a user's CSV to a served-ready champion with `slimflow init` and the Python API."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

import slimflow
from tests.cli.test_cli import slimflow as slimflow_cli
from tests.conftest import make_reviews

pytestmark = pytest.mark.integration

TINY = [  # the generated config, scaled down to the tiny 2-layer test model
    "finetune.train.learning_rate=5e-3",
    "finetune.train.epochs=3",
    "distill.student.keep_layers=[1]",
    "distill.train.learning_rate=5e-3",
    "compress.recovery.train.learning_rate=1e-3",
    "compress.calibration_examples=16",
    "optimize.agreement.min_agreement=0.9",
    "optimize.accuracy_bar.min_retention=0.9",
    "optimize.bench={warmup: 1, iterations: 6, min_iterations: 5, time_budget_s: 1, bootstrap: 100,"
    " threads: 1, isolate: false, pin_cores: false, batch_sizes: [1], lengths: [data],"
    " tune: {seconds: 0.05, rounds: 1}}",
    "promote.gates.min_retention=0.9",
    "promote.deploy=null",
]


def test_init_writes_a_config_that_runs_and_the_api_predicts_with_its_champion(tmp_path, tiny_model_dir):
    df = make_reviews(320).rename(columns={"review": "comment", "sentiment": "opinion"})
    df.insert(0, "id", range(len(df)))
    df.to_csv(tmp_path / "my reviews.csv", index=False)

    r = slimflow_cli("init", "--data", "my reviews.csv", "--model", str(tiny_model_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg_path = tmp_path / "my-reviews.yaml"
    assert "next: slimflow run -c my-reviews.yaml" in r.stdout
    assert "Great Expectations — passed" in r.stdout and "training examples/s" in cfg_path.read_text()
    raw = yaml.safe_load(cfg_path.read_text())
    assert raw["data"] | {"validation": None} == {
        "source": "my reviews.csv", "format": "csv", "text_column": "comment", "label_column": "opinion",
        "labels": ["neg", "pos"], "max_rows": None, "split": {"validation": 0.1, "test": 0.2, "seed": 42},
        "validation": None,
    }  # fmt: skip

    cfg = slimflow.load_config(cfg_path, overrides=[*TINY, f"workdir={tmp_path / 'work'}"])
    assert cfg.name == "my-reviews" and cfg.promote.model_name == "my-reviews"
    import os

    old = os.getcwd()
    os.chdir(tmp_path)  # data.source is relative to where the run starts, as for `slimflow run`
    try:
        summary = slimflow.run(cfg, progress=False)
    finally:
        os.chdir(old)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["decision"]["outcome"] == "promoted", summary["decision"]

    texts = ["good great superb film", "bad awful dull plot", "the movie was lovely and charming"]
    got = slimflow.predict("models:/my-reviews@champion", texts, tracking_uri=summary["tracking_uri"])
    assert [g["label"] for g in got[:2]] == ["pos", "neg"] and all(0.5 <= g["score"] <= 1 for g in got)
    model = slimflow.load_model("models:/my-reviews@champion", tracking_uri=summary["tracking_uri"])
    assert model.version == str(summary["decision"]["champion"])
    one = model.predict(texts[0])  # one string is one text
    # alone it runs unpadded, maybe on the session tuned for batch 1 (and dynamic INT8 scales its
    # activations per batch): the same answer, the score equal to float rounding, not bit for bit
    assert [o["label"] for o in one] == [got[0]["label"]] and one[0]["score"] == pytest.approx(
        got[0]["score"], abs=1e-4
    )
    with pytest.raises(slimflow.ConfigError, match=r"texts\[1\] is int"):
        model.predict(["fine", 3])
    with pytest.raises(slimflow.ConfigError, match="overrides apply to a config file"):
        slimflow.run(cfg, overrides=["name=x"])


def test_import_slimflow_is_light_and_names_its_api():
    code = (
        "import sys, slimflow; m = slimflow.run.__module__; "
        "print('torch' in sys.modules, 'prefect' in sys.modules, m)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "slimflow.api"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        slimflow.nope  # noqa: B018
