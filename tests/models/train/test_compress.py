"""The compression stage on a tiny fine-tuned teacher: structural steps shrink it, recovery runs."""

from pathlib import Path

import pytest

from slimflow.models.core.errors import ConfigError
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.preflight import preflight
from slimflow.models.train.compress import compress, parameter_counts
from slimflow.models.train.config import CompressConfig
from tests.conftest import FAMILY, build_tiny_model, make_reviews, train_tiny_teacher


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    src = build_tiny_model(tmp / "t3", layers=3)
    prepared, teacher = train_tiny_teacher(tmp, src, rows=200, epochs=4)
    return tmp, prepared, teacher


def test_steps_shrink_the_model_and_recovery_trains(trained, tmp_path):
    tmp, prepared, teacher = trained
    cfg = CompressConfig.model_validate(
        {
            "steps": [
                {"kind": "prune_heads", "ratio": 0.25},
                {"kind": "prune_ffn", "ratio": 0.25},
                {"kind": "prune_magnitude", "sparsity": 0.2},
            ],
            "calibration_examples": 32,
            "recovery": {"train": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32}},
        }
    )
    res = compress(
        cfg,
        prepared,
        teacher.model_dir,
        teacher.model_dir,
        "sha",
        tmp_path / "out",
        tmp / "cache",
        progress=False,
    )
    assert [s["kind"] for s in res.steps] == ["prune_heads", "prune_ffn", "prune_magnitude"]
    assert res.after["params_no_embeddings"] < 0.85 * res.before["params_no_embeddings"]
    assert res.after["params"] < res.before["params"] and res.file_bytes_after < res.file_bytes_before
    assert res.test_before["accuracy"] == pytest.approx(teacher.test["accuracy"])
    assert len(res.history) >= 1 and res.recovery_seconds > 0
    model, _ = FAMILY.load_trained(res.model_dir)
    assert parameter_counts(model) == res.after  # what was saved is what was measured


def test_without_recovery_the_pruned_figures_are_final(trained, tmp_path):
    tmp, prepared, teacher = trained
    cfg = CompressConfig.model_validate(
        {"steps": [{"kind": "prune_ffn", "ratio": 0.5}], "recovery": None, "calibration_examples": 16}
    )
    res = compress(
        cfg,
        prepared,
        teacher.model_dir,
        teacher.model_dir,
        "sha",
        tmp_path / "o",
        tmp / "cache",
        progress=False,
    )
    assert res.test == res.test_pruned and res.history == []


def test_unknown_step_kind_and_bad_ratio_fail_at_config_load():
    with pytest.raises(Exception, match="prune_hedas"):
        CompressConfig.model_validate({"steps": [{"kind": "prune_hedas"}]})
    with pytest.raises(Exception, match="less than 1"):
        CompressConfig.model_validate({"steps": [{"kind": "prune_ffn", "ratio": 1.0}]})


def _cfg(tmp_path: Path, model: Path, **extra) -> PipelineConfig:
    data = tmp_path / "d.csv"
    make_reviews(40).to_csv(data, index=False)
    return PipelineConfig.model_validate(
        {
            "workdir": str(tmp_path / "w"),
            "data": {"source": str(data), "text_column": "review", "label_column": "sentiment"},
            "finetune": {"model": str(model)},
            **extra,
        }
    )


def test_preflight_refuses_model_dependent_mistakes_before_training(tiny_model_dir, tmp_path):
    # the tiny model has 2 layers of 4 heads
    with pytest.raises(ConfigError, match=r"keep_layers: \[5\] out of range.*layers 0\.\.1"):
        preflight(_cfg(tmp_path, tiny_model_dir, distill={"student": {"keep_layers": [0, 5]}}))
    with pytest.raises(
        ConfigError, match="compress.steps.0: prune_heads: would remove every head of layer 0"
    ):
        preflight(
            _cfg(
                tmp_path,
                tiny_model_dir,
                compress={"steps": [{"kind": "prune_heads", "heads": {0: [0, 1, 2, 3]}}]},
            )
        )
    with pytest.raises(ConfigError, match="layer 1 out of range"):  # a 1-layer student has only layer 0
        preflight(
            _cfg(
                tmp_path,
                tiny_model_dir,
                distill={"student": {"keep_layers": [1]}},
                compress={"steps": [{"kind": "prune_heads", "heads": {1: [0]}}]},
            )
        )
    preflight(
        _cfg(
            tmp_path,
            tiny_model_dir,
            distill={"student": {"keep_layers": [1]}},
            compress={"steps": [{"kind": "prune_heads", "ratio": 0.5}]},
        )
    )  # a valid one passes


def test_preflight_asks_the_architecture_adapter(tmp_path):
    """An architecture without an adapter, or a pruning step the architecture cannot take, fails
    in the preflight (config.json only) instead of minutes into a run."""
    import json

    from tests.conftest import build_tiny_mpnet

    mpnet = build_tiny_mpnet(tmp_path / "mpnet")
    with pytest.raises(ConfigError, match="compress.steps.0: prune_heads does not apply to mpnet models"):
        preflight(_cfg(tmp_path, mpnet, compress={"steps": [{"kind": "prune_heads", "ratio": 0.5}]}))
    preflight(_cfg(tmp_path, mpnet, compress={"steps": [{"kind": "prune_ffn", "ratio": 0.5}]}))
    odd = build_tiny_model(tmp_path / "odd")
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="finetune.model: .*no architecture adapter for model type 'gpt2'"):
        preflight(_cfg(tmp_path, odd))
