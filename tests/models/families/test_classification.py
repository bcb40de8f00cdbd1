"""The sequence-classification family on its own: losses, metrics, agreement, predictions."""

import numpy as np
import pytest
import torch

from slimflow.models.families import AgreementConfig
from tests.conftest import FAMILY


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(8, 3)
    labels = torch.randint(0, 3, (8,))
    assert FAMILY.kd_loss(logits, logits.clone(), labels, temperature=2.0, alpha=1.0).item() == pytest.approx(
        0, abs=1e-6
    )
    assert FAMILY.kd_loss(logits, torch.randn(8, 3), labels, 2.0, 1.0).item() > 0
    # alpha=0 is plain cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert FAMILY.kd_loss(logits, torch.randn(8, 3), labels, 2.0, 0.0).item() == pytest.approx(ce.item())


def test_kd_loss_decreases_when_a_student_fits_its_teacher():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    teacher = x @ torch.randn(4, 2) * 2  # a teacher the student can represent
    labels = teacher.argmax(-1)
    student = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss = FAMILY.kd_loss(student(x), teacher, labels, 2.0, 0.7)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8


def test_agreement_passes_close_models_and_flags_disagreement_and_collapse():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 2)).astype(np.float32)
    labels = ["neg", "pos"]
    ok = FAMILY.agreement(ref, ref + 1e-4, labels, AgreementConfig())
    assert ok.passed and ok.agreement == 1.0

    flipped = ref.copy()
    flipped[:40] = flipped[:40, ::-1]  # 10% of rows disagree
    bad = FAMILY.agreement(ref, flipped, labels, AgreementConfig(min_agreement=0.97))
    assert not bad.passed and "0.900" in bad.message

    collapsed = np.tile([[1.0, 0.0]], (400, 1)).astype(np.float32)  # always 'neg'
    rep = FAMILY.agreement(ref, collapsed, labels, AgreementConfig(min_agreement=0.1))
    assert not rep.passed and "collapse" in rep.message and "'pos'" in rep.message


def test_score_reports_accuracy_f1_confusion_and_per_class_figures():
    logits = np.array([[2.0, 0.1], [0.2, 1.0], [1.5, 0.3], [0.1, 0.9], [0.9, 0.2]])  # pred: a b a b a
    gold = ["a", "b", "b", "b", "a"]
    s = FAMILY.score(logits, gold, ["a", "b"])
    assert s["accuracy"] == pytest.approx(0.8) and s["rows"] == 5
    rep = s["report"]
    assert rep["labels"] == ["a", "b"] and rep["confusion"] == [[2, 0], [1, 2]]  # rows: true, cols: predicted
    a, b = rep["per_class"]
    assert (a["label"], a["support"], b["support"]) == ("a", 2, 3)
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == 1.0
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx((a["f1"] + b["f1"]) / 2)
