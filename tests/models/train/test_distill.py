"""Distillation building blocks on a tiny BERT built locally."""

import numpy as np
import pytest
import torch

from slimflow.models.families import batching as B
from slimflow.models.train.distill import cached_teacher_logits
from slimflow.models.train.students import layer_drop
from tests.conftest import FAMILY, build_tiny_model, make_reviews, pretrained_student_cfg, train_tiny_teacher

LABELS = ["neg", "pos"]


def test_layer_drop_keeps_the_listed_layers_exactly(tmp_path):
    d = build_tiny_model(tmp_path / "m", layers=4)
    teacher, tok = FAMILY.load_pretrained(str(d), LABELS, tmp_path)
    student = layer_drop(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for s_idx, t_idx in enumerate([0, 3]):
        for name, tensor in s_sd.items():
            prefix = f"bert.encoder.layer.{s_idx}."
            if name.startswith(prefix):
                assert torch.equal(tensor, t_sd[name.replace(prefix, f"bert.encoder.layer.{t_idx}.")])
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight", "bert.pooler.dense.weight"):
        assert torch.equal(s_sd[name], t_sd[name])
    assert len(teacher.bert.encoder.layer) == 4  # the teacher is untouched
    df = make_reviews(20)
    for n, length in ((1, 8), (5, 20)):  # runs on varied batch and sequence sizes
        enc = B.encode(tok, df["review"].tolist()[:n], [0] * n, length)
        assert B.predict_logits(student, enc, 4, tok.pad_token_id).shape == (n, 2)


@pytest.mark.parametrize("keep", [[0, 9], [], [1, 1]])
def test_layer_drop_refuses_bad_keep_lists(tiny_model_dir, tmp_path, keep):
    teacher, _ = FAMILY.load_pretrained(str(tiny_model_dir), LABELS, tmp_path)
    with pytest.raises(ValueError, match="keep_layers"):
        layer_drop(teacher, keep)


def test_teacher_logits_are_computed_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    a, hit_a = cached_teacher_logits(compute, tmp_path, "k1")
    b, hit_b = cached_teacher_logits(compute, tmp_path, "k1")
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1 and np.array_equal(a, b)
    cached_teacher_logits(compute, tmp_path, "k2")
    assert len(calls) == 2


def test_distill_stage_trains_a_smaller_student_from_cached_teacher_logits(tmp_path):
    from slimflow.models.train.config import DistillConfig
    from slimflow.models.train.distill import distill

    teacher_src = build_tiny_model(tmp_path / "t4", layers=4)
    prepared, teacher = train_tiny_teacher(tmp_path, teacher_src, rows=200, epochs=4)
    cfg = DistillConfig.model_validate(
        {
            "student": {"kind": "layer_drop", "keep_layers": [0, 3]},
            "temperature": 2.0,
            "alpha": 0.7,
            "train": {"epochs": 3, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32},
        }
    )
    epochs = []
    res = distill(
        cfg,
        prepared,
        teacher.model_dir,
        "sha-of-teacher",
        tmp_path / "student",
        tmp_path / "cache",
        on_epoch=epochs.append,
        progress=False,
    )
    assert not res.teacher_logits_cached and len(epochs) >= 1
    assert res.student_params < res.teacher_params
    assert res.teacher_test["accuracy"] == pytest.approx(teacher.test["accuracy"])
    assert res.test["accuracy"] >= 0.8  # the synthetic task is easy; a broken loss would not get here
    student, _ = FAMILY.load_trained(res.model_dir)
    assert student.config.num_hidden_layers == 2
    again = distill(
        cfg,
        prepared,
        teacher.model_dir,
        "sha-of-teacher",
        tmp_path / "student2",
        tmp_path / "cache",
        progress=False,
    )
    assert again.teacher_logits_cached  # the teacher ran once


def test_a_pretrained_student_uses_its_own_tokenizer(tmp_path):
    """Teacher and student disagree on token ids and widths: each side tokenizes the text itself."""
    from slimflow.models.train.distill import distill

    teacher_src = build_tiny_model(tmp_path / "t", layers=2, hidden=32)
    student_src = build_tiny_model(tmp_path / "s", layers=1, hidden=16, reverse_vocab=True)
    prepared, teacher = train_tiny_teacher(tmp_path, teacher_src, rows=160, epochs=3)
    cfg = pretrained_student_cfg(student_src)
    res = distill(
        cfg, prepared, teacher.model_dir, "sha", tmp_path / "student", tmp_path / "cache", progress=False
    )
    student, tok = FAMILY.load_trained(res.model_dir)
    assert student.config.hidden_size == 16 and res.student_params < res.teacher_params
    assert tok.convert_tokens_to_ids("good") != FAMILY.load_trained(teacher.model_dir)[
        1
    ].convert_tokens_to_ids("good")
    assert res.test["accuracy"] >= 0.8


def test_default_layer_map_spreads_evenly():
    from slimflow.models.train.distill import default_layer_map

    assert default_layer_map(3, 6) == [1, 3, 5]
    assert default_layer_map(1, 4) == [3]
    assert default_layer_map(4, 4) == [0, 1, 2, 3]


def test_layer_losses_vanish_for_an_exact_copy(tmp_path):
    from slimflow.models.train.config import DistillConfig
    from slimflow.models.train.distill import WithProjections, kd_loss_layers, resolve_intermediate

    d = build_tiny_model(tmp_path / "m", layers=2)
    teacher, tok = FAMILY.load_pretrained(str(d), LABELS, tmp_path)
    teacher.eval()
    student = layer_drop(teacher, [0, 1]).eval()
    cfg = DistillConfig.model_validate(
        {"student": {"keep_layers": [0, 1]}, "alpha": 1.0, "hidden_weight": 1.0, "attention_weight": 1.0}
    )
    inter = resolve_intermediate(cfg, teacher, tok, student, tok)
    assert inter is not None and inter.layer_map == [0, 1]
    df = make_reviews(8)
    enc = B.encode(tok, df["review"].tolist(), [0, 1] * 4, 16)
    inputs, labels, _ = next(B.batches(enc, 8, tok.pad_token_id, shuffle=False))
    with torch.no_grad():
        soft = teacher(**inputs).logits
        wrapped = WithProjections(student, 2, 32, 32)
        assert kd_loss_layers(FAMILY, wrapped, inter, inputs, labels, soft, 2.0, 1.0).item() == pytest.approx(
            0, abs=1e-7
        )
        other = layer_drop(teacher, [1, 0]).eval()  # same weights, swapped layers: the layer terms notice
        inter2 = resolve_intermediate(cfg, teacher, tok, other, tok)
        loss = kd_loss_layers(
            FAMILY, WithProjections(other, 2, 32, 32), inter2, inputs, labels, soft, 2.0, 1.0
        )
        assert loss.item() > 1e-4


def test_hidden_distillation_learns_a_projection_to_a_wider_teacher(tmp_path):
    from slimflow.models.train.config import DistillConfig
    from slimflow.models.train.distill import distill

    teacher_src = build_tiny_model(tmp_path / "t", layers=2, hidden=32)
    narrow_same_vocab = build_tiny_model(tmp_path / "s", layers=1, hidden=16)
    wrong_vocab = build_tiny_model(tmp_path / "w", layers=1, hidden=16, reverse_vocab=True)
    prepared, teacher = train_tiny_teacher(tmp_path, teacher_src, rows=120, epochs=2)

    def cfg(model):
        return DistillConfig.model_validate(
            {
                "student": {"kind": "pretrained", "model": str(model)},
                "hidden_weight": 1.0,
                "attention_weight": 0.5,
                "train": {"epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32},
            }
        )

    res = distill(
        cfg(narrow_same_vocab),
        prepared,
        teacher.model_dir,
        "sha",
        tmp_path / "o",
        tmp_path / "c",
        progress=False,
    )
    student, _ = FAMILY.load_trained(res.model_dir)
    assert student.config.hidden_size == 16  # the projection was used for training, not saved
    assert not any("proj" in k for k in student.state_dict())
    assert res.history and res.history[0]["train_loss"] > 0
    with pytest.raises(ValueError, match="must share a tokenizer"):
        distill(
            cfg(wrong_vocab),
            prepared,
            teacher.model_dir,
            "sha",
            tmp_path / "o2",
            tmp_path / "c",
            progress=False,
        )
