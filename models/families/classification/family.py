"""The ``sequence-classification`` family: ``AutoModelForSequenceClassification`` with a new head
for the configured labels, cross-entropy, accuracy, macro F1/precision/recall and weighted F1,
Hinton-style distillation on the logits, label agreement with a collapse guard for quantized
candidates, label + score serving."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from slimflow.models.archs import adapter_for
from slimflow.models.assets import resolve_pretrained
from slimflow.models.families.base import AgreementConfig, AgreementReport, TaskFamily
from slimflow.models.families.classification.schema import PredictResponse

log = logging.getLogger(__name__)


UNLABELED = -100  # label id of a row without a label (its loss is the soft-target term only)


class SequenceClassification(TaskFamily):
    name = "sequence-classification"
    onnx_task = "text-classification"
    peft_task_type = "SEQ_CLS"
    head_names: ClassVar[tuple[str, ...]] = ("classifier", "score")  # BERT-like / decoder heads
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "f1")
    primary_metric = "accuracy"
    auto_model: ClassVar[str] = "AutoModelForSequenceClassification"
    auto_peft_model: ClassVar[str] = "AutoPeftModelForSequenceClassification"

    # ---------------------------------------------------------------------------- models
    def load_pretrained(
        self, ref: str, labels: list[str], cache_dir: str | Path, dropout: float | None = None,
        token: str | None = None,
    ) -> tuple[Any, Any]:  # fmt: skip
        """A sequence classifier with a new head for ``labels``, from safetensors, no remote code.
        ``token`` authenticates hub downloads (private models); it is passed on, never stored."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        src = resolve_pretrained(ref, cache_dir)
        config = AutoConfig.from_pretrained(
            src,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
            trust_remote_code=False,
            token=token,
        )
        arch = adapter_for(config.model_type)
        if dropout is not None:
            for key in arch.dropout_keys:
                if hasattr(config, key):
                    setattr(config, key, dropout)
        from transformers.utils import logging as hf_logging

        # transformers warns that the new head is "newly initialized" (twice: stage and preflight
        # loads): that is the point here. Only weights missing *outside* the head are worth a word.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                src, config=config, use_safetensors=True, trust_remote_code=False, token=token,
                output_loading_info=True,
            )  # fmt: skip
        finally:
            hf_logging.set_verbosity(verbosity)
        heads = (*self.head_names, *arch.head_modules)
        stray = [k for k in info.get("missing_keys", []) if not set(k.split(".")) & set(heads)]
        if stray:
            log.warning(
                "%s: %d weight(s) outside the classification head are not in the checkpoint and start "
                "at random: %s", ref, len(stray), ", ".join(stray[:8]),
            )  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False, token=token)
        arch.prepare(model, tokenizer)  # pad-token policy: the head must find the last real token
        return model, tokenizer

    # ------------------------------------------------------------------------- training
    def encode(self, tokenizer: Any, frame: Any, labels: list[str], max_length: int) -> Any:
        """A split's ``text``/``label`` frame; label ids follow the order of ``labels``."""
        import pandas as pd

        from slimflow.models.families.batching import encode

        label_id = {lab: i for i, lab in enumerate(labels)}
        # a row without a label (unlabeled distillation text) gets the ignore index: soft targets only
        ids = [label_id[x] if isinstance(x, str) or not pd.isna(x) else UNLABELED for x in frame["label"]]
        return encode(tokenizer, frame["text"].tolist(), ids, max_length)

    def loss(self, model: Any, inputs: Any, targets: Any) -> Any:
        return model(**inputs, labels=targets).loss

    def evaluate(self, model: Any, data: Any, batch_size: int, pad_id: int) -> dict[str, float]:
        import torch

        from slimflow.models.families.batching import predict_logits

        logits = predict_logits(model, data, batch_size, pad_id)
        loss = float(
            torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(data.labels))
        )
        return {"loss": loss, **self.metrics_of(logits.argmax(-1), data.labels, logits.shape[1])}

    @staticmethod
    def metrics_of(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
        """Accuracy, macro F1 (the early-stopping choices), macro precision and recall, and F1
        weighted by class support (what an imbalanced test split reads best by)."""
        from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

        ids = list(range(num_labels))
        prec, rec, _, _ = precision_recall_fscore_support(
            labels, preds, labels=ids, average="macro", zero_division=0
        )
        return {
            "accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average="macro", labels=ids, zero_division=0)),
            "precision": float(prec),
            "recall": float(rec),
            "f1_weighted": float(f1_score(labels, preds, average="weighted", labels=ids, zero_division=0)),
        }

    def kd_loss(
        self, student_out: Any, teacher_out: Any, targets: Any, temperature: float, alpha: float
    ) -> Any:
        """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels) (Hinton et
        al. 2015). The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones."""
        import torch.nn.functional as F

        t = temperature
        soft = F.kl_div(
            F.log_softmax(student_out / t, dim=-1),
            F.log_softmax(teacher_out / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        if alpha >= 1.0 or not bool((targets != UNLABELED).any()):
            return soft  # a batch of unlabeled rows only: nothing for the hard-label term
        hard = F.cross_entropy(student_out, targets, ignore_index=UNLABELED)  # labeled rows only
        return alpha * soft + (1.0 - alpha) * hard

    # ---------------------------------------------------------------------- inference
    def score(self, outputs: Any, gold: list[str], labels: list[str]) -> dict[str, Any]:
        """Test accuracy and macro F1 of logits against gold label names, and a ``report``: the
        confusion matrix (rows: true label, columns: predicted) and per-class precision/recall/F1."""
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

        label_id = {lab: i for i, lab in enumerate(labels)}
        y = np.array([label_id[g] for g in gold])
        preds = np.asarray(outputs).argmax(-1)
        ids = list(range(len(labels)))
        prec, rec, f1, support = precision_recall_fscore_support(y, preds, labels=ids, zero_division=0)
        report = {
            "labels": list(labels),
            "confusion": confusion_matrix(y, preds, labels=ids).tolist(),
            "per_class": [
                {"label": lab, "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                 "support": int(support[i])}
                for i, lab in enumerate(labels)
            ],
        }  # fmt: skip
        return {**self.metrics_of(preds, y, len(labels)), "rows": len(y), "report": report}

    def agreement(
        self, reference: Any, candidate: Any, labels: list[str], cfg: AgreementConfig
    ) -> AgreementReport:
        """Does a quantized model still predict what its FP32 source predicts, without collapsing
        onto a class? Checked on the validation split (never the test split, which reports the result)."""
        ref = np.asarray(reference).argmax(-1)
        got = np.asarray(candidate).argmax(-1)
        n = len(ref)
        if n == 0:
            raise ValueError("agreement check needs at least one row")
        agree = float(np.mean(ref == got))
        k = len(labels)
        ref_share = np.bincount(ref, minlength=k) / n
        got_share = np.bincount(got, minlength=k) / n
        problems = []
        if agree < cfg.min_agreement:
            problems.append(f"agrees with FP32 on {agree:.3f} of validation rows (< {cfg.min_agreement})")
        for i, name in enumerate(labels):
            if ref_share[i] >= 0.05 and got_share[i] < cfg.min_class_ratio * ref_share[i]:
                problems.append(
                    f"collapse: class {name!r} predicted for {got_share[i]:.1%} of rows "
                    f"(FP32: {ref_share[i]:.1%})"
                )
        return AgreementReport(
            not problems,
            agree,
            n,
            {labels[i]: float(ref_share[i]) for i in range(k)},
            {labels[i]: float(got_share[i]) for i in range(k)},
            "; ".join(problems) if problems else f"agreement {agree:.3f}, no class collapse",
        )

    def predictions(self, outputs: Any, labels: list[str]) -> list[dict[str, Any]]:
        """Softmax over the logits: the most likely label and its probability."""
        logits = np.asarray(outputs)
        if logits.size == 0:
            return []
        z = np.exp(logits - logits.max(-1, keepdims=True))
        prob = z / z.sum(-1, keepdims=True)
        return [
            {"label": labels[i], "score": float(p)}
            for i, p in zip(prob.argmax(-1), prob.max(-1), strict=True)
        ]

    # ------------------------------------------------------------------------ serving
    def response_schema(self) -> type:
        return PredictResponse

    # ------------------------------------------------------------------- MLflow model
    def input_example(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"text": ["an example review"]})

    def output_frame(self, records: list[dict[str, Any]]) -> Any:
        import pandas as pd

        if not records:
            return pd.DataFrame({"label": pd.Series([], dtype=str), "score": pd.Series([], dtype=float)})
        return pd.DataFrame({"label": [r["label"] for r in records], "score": [r["score"] for r in records]})
