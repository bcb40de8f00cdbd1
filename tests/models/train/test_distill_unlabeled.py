"""Distillation with extra unlabeled texts: leak guard and counts, the loss (soft targets only for
unlabeled rows), the stage end to end, errors before any training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from slimflow.models.core.errors import ConfigError
from slimflow.models.data.unlabeled import read_texts, unlabeled_frame
from slimflow.models.families.classification.family import UNLABELED
from tests.conftest import FAMILY, build_tiny_model, make_reviews, train_tiny_teacher


def test_texts_in_any_split_blank_and_repeated_ones_are_dropped_and_counted():
    splits = {
        "train": pd.DataFrame({"text": ["A good film"], "label": ["pos"]}),
        "validation": pd.DataFrame({"text": ["dull"], "label": ["neg"]}),
        "test": pd.DataFrame({"text": ["The  Plot was WEAK"], "label": ["neg"]}),
    }
    texts = pd.Series(
        ["new text", "  ", None, "a good  FILM", "the plot was weak", "New text", "other", "third"]
    )
    frame, counts = unlabeled_frame(texts, splits, max_rows=None, seed=0)
    assert frame["text"].tolist() == ["new text", "other", "third"]  # test text never trained on
    assert frame["label"].isna().all()
    assert counts == {"rows_read": 8, "blank_dropped": 2, "in_splits_dropped": 2, "duplicates_dropped": 1,
                      "rows_used": 3}  # fmt: skip
    few, counts = unlabeled_frame(texts, splits, max_rows=2, seed=0)
    assert len(few) == 2 and set(few["text"]) <= {"new text", "other", "third"} and counts["rows_used"] == 2


def test_reading_extra_texts_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        read_texts(str(tmp_path / "nope.csv"), "text", "distill.unlabeled")
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(ConfigError, match=r"no column 'text' \(columns: body\)"):
        read_texts(str(tmp_path / "u.csv"), "text", "distill.unlabeled")
    assert read_texts(str(tmp_path / "u.csv"), "body", "distill.unlabeled").tolist() == ["x"]
    with pytest.raises(ConfigError, match="unknown packaged dataset"):
        read_texts("packaged:nope", "text", "distill.unlabeled")
    plots = read_texts("packaged:rotten_tomatoes_plots", "text", "distill.unlabeled")
    assert len(plots) == 1097 and plots.map(lambda t: isinstance(t, str) and len(t) > 20).mean() > 0.9


def test_unlabeled_rows_add_only_the_soft_target_loss(tmp_path):
    import torch.nn.functional as F

    torch.manual_seed(0)
    student, teacher = torch.randn(4, 2), torch.randn(4, 2)
    y = torch.tensor([0, UNLABELED, 1, UNLABELED])
    got = FAMILY.kd_loss(student, teacher, y, 2.0, 0.5)
    soft = FAMILY.kd_loss(student, teacher, y, 2.0, 1.0)
    hard = F.cross_entropy(student[[0, 2]], torch.tensor([0, 1]))  # the labeled rows alone
    assert torch.isclose(got, 0.5 * soft + 0.5 * hard)
    only = FAMILY.kd_loss(student, teacher, torch.full((4,), UNLABELED), 2.0, 0.5)
    assert torch.isfinite(only) and torch.isclose(only, soft)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m"))
    enc = FAMILY.encode(
        tok, pd.DataFrame({"text": ["good", "bad"], "label": ["pos", None]}), ["neg", "pos"], 16
    )
    assert enc.labels.tolist() == [1, UNLABELED]
    with pytest.raises(KeyError):  # an unknown label is still an error, not silently unlabeled
        FAMILY.encode(tok, pd.DataFrame({"text": ["x"], "label": ["meh"]}), ["neg", "pos"], 16)


def test_the_stage_labels_extra_texts_with_the_teacher_and_trains_on_them(tmp_path):
    from slimflow.models.train.config import DistillConfig
    from slimflow.models.train.distill import distill

    src = build_tiny_model(tmp_path / "t", layers=3)
    prepared, teacher = train_tiny_teacher(tmp_path, src, rows=200, epochs=3)
    extra = make_reviews(150, seed=7).rename(columns={"review": "body"})[["body"]]
    extra.to_csv(tmp_path / "extra.csv", index=False)
    cfg = DistillConfig.model_validate(
        {
            "student": {"kind": "layer_drop", "keep_layers": [0]},
            "alpha": 0.5,
            "train": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32},
            "unlabeled": {"source": str(tmp_path / "extra.csv"), "text_column": "body"},
        }
    )
    res = distill(cfg, prepared, teacher.model_dir, "sha", tmp_path / "s", tmp_path / "cache", progress=False)
    u = res.unlabeled
    assert u["rows_read"] == 150 and u["rows_used"] > 0
    assert u["rows_used"] + u["in_splits_dropped"] + u["duplicates_dropped"] + u["blank_dropped"] == 150
    train_rows = len(pd.read_parquet(prepared.path("train")))
    logits = np.load(res.teacher_logits_path)
    assert len(logits) == train_rows + u["rows_used"]  # the teacher labelled every extra text
    assert res.test["accuracy"] >= 0.8
    # another extra file: other soft targets (not the cached ones of the first file)
    extra.iloc[:60].to_csv(tmp_path / "extra2.csv", index=False)
    cfg2 = DistillConfig.model_validate(
        {**cfg.model_dump(), "unlabeled": {"source": str(tmp_path / "extra2.csv"), "text_column": "body"}}
    )
    res2 = distill(
        cfg2, prepared, teacher.model_dir, "sha", tmp_path / "s2", tmp_path / "cache", progress=False
    )
    assert not res2.teacher_logits_cached and res2.teacher_logits_path != res.teacher_logits_path


def test_preflight_refuses_an_unreadable_unlabeled_source_before_training(tmp_path, tiny_model_dir):
    from slimflow.models.pipeline_config import PipelineConfig
    from slimflow.models.preflight import preflight

    data = tmp_path / "d.csv"
    make_reviews(100).to_csv(data, index=False)
    base = {
        "workdir": str(tmp_path / "w"),
        "data": {
            "source": str(data),
            "text_column": "review",
            "label_column": "sentiment",
            "labels": ["neg", "pos"],
        },  # fmt: skip
        "finetune": {"model": str(tiny_model_dir)},
    }
    for unlabeled, message in (
        ({"source": str(tmp_path / "missing.csv")}, "file not found"),
        ({"source": str(data), "text_column": "body"}, "no column 'body'"),
    ):
        cfg = PipelineConfig.model_validate({**base, "distill": {"unlabeled": unlabeled}})
        with pytest.raises(ConfigError, match=message):
            preflight(cfg)
