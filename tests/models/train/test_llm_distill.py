"""Decoder teacher, encoder student: a tiny Llama fine-tuned with LoRA is distilled into a tiny BERT
with its own tokenizer (cross-architecture), or into a Llama layer-drop copy of itself."""

from __future__ import annotations

import pytest

from slimflow.models.train.config import DistillConfig, FinetuneConfig
from slimflow.models.train.distill import distill
from slimflow.models.train.finetune import finetune
from tests.conftest import (
    FAMILY,
    build_tiny_llama,
    build_tiny_model,
    data_cfg,
    make_reviews,
    pretrained_student_cfg,
)


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory):
    """Prepared synthetic data and a tiny Llama classifier trained with LoRA on q/k/v/o + MLP."""
    from slimflow.models.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("llm")
    p = tmp / "d.csv"
    make_reviews(200).to_csv(p, index=False)
    prepared, _ = prepare(data_cfg(p, validation={"min_per_class": 10}), tmp / "data", "sha", tmp / "r")
    ft = FinetuneConfig.model_validate(
        {
            "model": str(build_tiny_llama(tmp / "base", layers=3, hidden=32)),
            "method": {"kind": "lora", "r": 8, "alpha": 16},
            "train": {"epochs": 6, "batch_size": 16, "learning_rate": 1e-2, "max_length": 32},
        }
    )
    return tmp, prepared, finetune(ft, prepared, tmp / "teacher", tmp, progress=False)


def test_lora_teacher_learns_and_saves_a_merged_llama_classifier(llama_teacher):
    _, _, teacher = llama_teacher
    assert teacher.test["accuracy"] >= 0.8
    model, tok = FAMILY.load_trained(teacher.model_dir)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not any("lora" in n for n, _ in model.named_modules())  # merged, no adapter left
    assert tok.pad_token == tok.eos_token and model.config.pad_token_id == tok.eos_token_id


def test_llama_teacher_distils_into_an_encoder_with_its_own_tokenizer(llama_teacher):
    tmp, prepared, teacher = llama_teacher
    student_src = build_tiny_model(tmp / "bert", layers=1, hidden=16, reverse_vocab=True)
    cfg = pretrained_student_cfg(student_src)
    res = distill(cfg, prepared, teacher.model_dir, "sha-llama", tmp / "enc", tmp / "cache", progress=False)
    student, s_tok = FAMILY.load_trained(res.model_dir)
    _, t_tok = FAMILY.load_trained(teacher.model_dir)
    assert type(student).__name__ == "BertForSequenceClassification"
    assert s_tok.get_vocab() != t_tok.get_vocab()  # each side tokenized the text itself
    assert res.student_params < res.teacher_params
    assert res.teacher_test["accuracy"] == pytest.approx(teacher.test["accuracy"])
    assert res.test["accuracy"] >= 0.8 and res.retention >= 0.85
    again = distill(
        cfg, prepared, teacher.model_dir, "sha-llama", tmp / "enc2", tmp / "cache", progress=False
    )
    assert again.teacher_logits_cached  # the LLM ran over the training rows once


def test_layerwise_distillation_across_tokenizers_is_refused_with_a_reason(llama_teacher):
    tmp, prepared, teacher = llama_teacher
    student_src = build_tiny_model(tmp / "bert-h", layers=1, hidden=16, reverse_vocab=True)
    cfg = DistillConfig.model_validate(
        {"student": {"kind": "pretrained", "model": str(student_src)}, "hidden_weight": 1.0}
    )
    with pytest.raises(ValueError, match="share a tokenizer"):
        distill(cfg, prepared, teacher.model_dir, "sha-llama", tmp / "x", tmp / "cache", progress=False)


def test_a_llama_layer_drop_student_keeps_the_listed_layers_and_reloads(llama_teacher):
    tmp, prepared, teacher = llama_teacher
    cfg = DistillConfig.model_validate(
        {
            "student": {"kind": "layer_drop", "keep_layers": [0, 2]},
            "hidden_weight": 0.5,  # same tokenizer: layer-wise matching applies
            "train": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "max_length": 32},
        }
    )
    res = distill(cfg, prepared, teacher.model_dir, "sha-llama", tmp / "drop", tmp / "cache", progress=False)
    student, _ = FAMILY.load_trained(res.model_dir)
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    assert res.student_params < res.teacher_params
    assert res.test["accuracy"] >= 0.75
