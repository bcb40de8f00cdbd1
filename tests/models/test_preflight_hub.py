"""Hub model ids get the same preflight as local folders: their config.json alone is fetched."""

from __future__ import annotations

import json

import pytest

from slimflow.models.core.errors import ConfigError
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.preflight import preflight


def _cfg(tmp_path, keep):
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\n")
    return PipelineConfig.model_validate(
        {"workdir": str(tmp_path / "w"), "data": {"source": str(data)},
         "finetune": {"model": "some-org/some-bert"},
         "distill": {"student": {"kind": "layer_drop", "keep_layers": keep}}}
    )  # fmt: skip


def test_a_hub_teacher_is_checked_from_its_config_before_any_download(tmp_path, monkeypatch):
    import huggingface_hub

    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 6,
                                                  "num_attention_heads": 12}))  # fmt: skip
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(snap / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(
        ConfigError, match=r"keep_layers: \[7\] out of range; the teacher some-org/some-bert has layers 0..5"
    ):
        preflight(_cfg(tmp_path, [0, 7]))
    assert asked == [("some-org/some-bert", "config.json")]  # the config only, never the weights
    preflight(_cfg(tmp_path, [0, 5]))

    # offline (the default here): nothing fetched, the checks wait for load time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked.clear()
    preflight(_cfg(tmp_path, [0, 7]))
    assert asked == []


def test_a_hub_id_the_hub_does_not_have_is_named_at_once(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(repo_id, filename, **kw):
        raise RepositoryNotFoundError("404 Client Error", response=None)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ConfigError, match="the hub has no model 'some-org/some-bert'"):
        preflight(_cfg(tmp_path, [0]))

    def no_network(repo_id, filename, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    preflight(_cfg(tmp_path, [0, 7]))  # unreachable hub: no verdict, the run finds out at load time
