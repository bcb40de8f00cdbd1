"""Canary secrets: a token from a Prefect Secret block (used to load the model) and secrets in the
environment must not appear in any MLflow param, tag, metric, artifact, registry entry, local file
or log line of a whole pipeline run (registration included)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from slimflow.flows.pipeline import run_pipeline
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from tests.conftest import make_reviews
from tests.integration.test_promotion import BENCH

pytestmark = pytest.mark.integration


def _grep_tree(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {n[:12]!r}..." for n in needles if n in data]
    return hits


def test_canary_secrets_never_reach_mlflow_files_or_logs(
    tmp_path, tiny_model_dir, monkeypatch, caplog, capfd
):
    from prefect.blocks.system import Secret

    from slimflow.models.families.classification.family import SequenceClassification

    block_value = "canary-block-" + secrets.token_hex(12)
    env_values = {
        "HF_TOKEN": "canary-hf-" + secrets.token_hex(12),
        "AWS_SECRET_ACCESS_KEY": "canary-aws-" + secrets.token_hex(12),
        "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-" + secrets.token_hex(12),
    }
    for k, v in env_values.items():
        monkeypatch.setenv(k, v)
    Secret(value=block_value).save("slimflow-canary", overwrite=True)
    seen_tokens: list[str | None] = []
    real_load = SequenceClassification.load_pretrained

    def spy(self, *args, **kwargs):
        seen_tokens.append(kwargs.get("token"))
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(SequenceClassification, "load_pretrained", spy)
    data = tmp_path / "reviews.csv"
    make_reviews(320).to_csv(data, index=False)
    cfg = PipelineConfig.model_validate(
        {
            "name": "it-secrets",
            "workdir": str(tmp_path / "work"),
            "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                     "labels": ["neg", "pos"], "validation": {"min_per_class": 10}},
            "finetune": {"model": str(tiny_model_dir), "method": {"kind": "full"},
                         "hub_token": "prefect:slimflow-canary",
                         "train": {"epochs": 2, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3}},
            "optimize": {"quantize": [{"kind": "ort_int8_dynamic"}], "agreement": {"min_agreement": 0.9},
                         "accuracy_bar": {"min_retention": 0.9}, "bench": BENCH},
            "promote": {"model_name": "secrets-clf", "gates": {"min_retention": 0.9}, "deploy": None},
        }
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)
    s = run_pipeline(cfg, progress=False)
    assert s["status"] == "completed", s.get("error")
    assert block_value in seen_tokens, "the secret was not resolved and handed to the model loader"
    needles = [block_value.encode(), *(v.encode() for v in env_values.values())]

    client = tracking.client(s["tracking_uri"])
    runs = client.search_runs([s["mlflow_experiment_id"]])
    assert len(runs) > 5
    texts = []
    for r in runs:
        texts += [f"{k}={v}" for k, v in r.data.params.items()]
        texts += [f"{k}={v}" for k, v in r.data.tags.items()]
        texts += list(r.data.metrics)
    for mv in client.search_model_versions("name = 'secrets-clf'"):
        texts += [f"{k}={v}" for k, v in mv.tags.items()]
    joined = "\n".join(texts)
    assert "finetune.hub_token=prefect:slimflow-canary" in joined  # the reference is logged ...
    assert not [n for n in needles if n.decode() in joined]  # ... the values are not
    # everything MLflow stored (sqlite database, artifacts, registered models), Prefect's persisted
    # results and our own files all live in the workdir: not one byte of a secret in any of them
    assert _grep_tree(tmp_path / "work", needles) == []
    out, err = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records) + out + err
    assert not [n for n in needles if n.decode() in logs]
    assert len(logs) > 0


def test_a_secret_written_into_the_config_is_refused_without_echoing_it(tmp_path):
    from slimflow.models.core.errors import ConfigError
    from slimflow.models.pipeline_config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("finetune:\n  hub_token: hf_abcdefghijklmnop\n")
    with pytest.raises(ConfigError, match="reference to a secret") as e:
        load_config(p)
    assert "finetune.hub_token" in str(e.value) and "hf_abcdefghijklmnop" not in str(e.value)


def test_missing_secrets_name_the_reference_not_a_value(monkeypatch):
    from slimflow.models.core.errors import ConfigError
    from slimflow.tasks.secrets import resolve_secret

    monkeypatch.delenv("SLIMFLOW_NOPE", raising=False)
    with pytest.raises(ConfigError, match="env:SLIMFLOW_NOPE: environment variable SLIMFLOW_NOPE is not set"):
        resolve_secret("env:SLIMFLOW_NOPE")
    with pytest.raises(ConfigError, match="no Prefect Secret block named 'no-such-block'"):
        resolve_secret("prefect:no-such-block")
