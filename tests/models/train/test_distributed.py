"""Data-parallel fine-tuning: two CPU processes under torchrun (gloo) take the same optimizer steps
as one process, so the trained weights agree within float tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from slimflow.models.data.prepare import prepare
from slimflow.models.train.config import FinetuneConfig
from slimflow.models.train.finetune import finetune
from tests.conftest import data_cfg, make_reviews


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    p = tmp / "d.csv"
    make_reviews(200).to_csv(p, index=False)
    data, _ = prepare(data_cfg(p, validation={"min_per_class": 10}), tmp / "data", "sha", tmp / "r")
    return data


def _cfg(model_dir, **train) -> FinetuneConfig:
    base = {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32, "dropout": 0.0,
            "early_stopping_patience": None}  # fmt: skip
    return FinetuneConfig.model_validate(
        {"model": str(model_dir), "method": {"kind": "full"}, "train": {**base, **train}}
    )


def _weights(folder) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_gloo_processes_train_like_one(prepared, tiny_model_dir, tmp_path):
    single = finetune(_cfg(tiny_model_dir), prepared, tmp_path / "one", tmp_path, progress=False)
    epochs, ready = [], []
    ddp = finetune(  # finetune() itself hands data_parallel > 1 to torchrun
        _cfg(tiny_model_dir, data_parallel=2), prepared, tmp_path / "two", tmp_path,
        on_epoch=epochs.append, on_ready=ready.append,
    )  # fmt: skip
    assert [e.epoch for e in epochs] == [1, 2] and ready[0]["train_examples"] == single.train_examples
    assert ddp.train_examples == single.train_examples
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(a) == set(b)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-4, f"weights differ by up to {worst:.2e}"
    print(f"\nDDP (2 gloo processes) vs one process: max |weight diff| {worst:.2e}")
    base = {f"bert.{k}": v for k, v in _weights(tiny_model_dir).items()}
    moved = max(float(np.abs(a[k] - base[k]).max()) for k in a if k in base)
    assert moved > 1e-3  # training really changed the weights (so the comparison means something)
    for h1, h2 in zip(single.history, ddp.history, strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-4)
    assert ddp.test == pytest.approx(single.test, rel=1e-6, abs=1e-4)


def test_a_failing_worker_is_reported_with_its_log(prepared, tmp_path):
    from slimflow.models.train.distributed import DistributedError

    cfg = FinetuneConfig.model_validate(
        {"model": str(tmp_path / "missing"), "method": {"kind": "full"}, "train": {"data_parallel": 2}}
    )
    with pytest.raises(DistributedError, match="2 processes.*failed"):
        finetune(cfg, prepared, tmp_path / "out", tmp_path)


def test_distillation_data_parallel_matches_one_process(prepared, tiny_model_dir, tmp_path):
    from slimflow.models.core.modelfiles import file_sha256
    from slimflow.models.train.config import DistillConfig
    from slimflow.models.train.distill import distill

    teacher = tmp_path / "teacher"
    finetune(_cfg(tiny_model_dir), prepared, teacher, tmp_path, progress=False)
    sha = file_sha256(teacher / "model.safetensors")
    train = {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32, "dropout": 0.0,
             "early_stopping_patience": None}  # fmt: skip
    cfg = {"student": {"kind": "layer_drop", "keep_layers": [1]}, "train": train}
    one = distill(DistillConfig.model_validate(cfg), prepared, teacher, sha, tmp_path / "s1", tmp_path / "c1")
    cfg["train"] = {**train, "data_parallel": 2}
    epochs = []
    two = distill(DistillConfig.model_validate(cfg), prepared, teacher, sha, tmp_path / "s2", tmp_path / "c2",
                  on_epoch=epochs.append)  # fmt: skip
    assert len(epochs) == len(two.history) == 2
    a, b = _weights(tmp_path / "s1"), _weights(tmp_path / "s2")
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < 1e-4, f"student weights differ by up to {worst:.2e}"
    assert [h["train_loss"] for h in two.history] == pytest.approx(
        [h["train_loss"] for h in one.history], rel=1e-4
    )
