"""The training sections: ``finetune:``, ``distill:`` and ``compress:`` (and the ``train:`` block
each of them holds). Plug-in fields (the method, the student, the steps) are validated by their
registries."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from slimflow.models.config.base import Strict, plugin_field
from slimflow.models.core.names import check_secret_ref
from slimflow.models.train.methods import METHODS
from slimflow.models.train.steps import STEPS
from slimflow.models.train.students import STUDENTS

MethodField = plugin_field(METHODS, default_kind="lora")
StudentField = plugin_field(STUDENTS, default_kind="layer_drop")
StepField = plugin_field(STEPS)


class TrainConfig(Strict):
    epochs: int = Field(3, ge=1, le=1000, description="Maximum number of epochs.")
    batch_size: int = Field(32, ge=1, le=4096, description="Examples per optimizer micro-batch.")
    eval_batch_size: int = Field(64, ge=1, le=4096, description="Examples per evaluation batch.")
    grad_accum_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay (not on biases/norms).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of optimizer steps spent warming up.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; None = off.")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Override the model's hidden/attention dropout; None = keep."
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens kept per text (longer ones truncated).")
    early_stopping_patience: int | None = Field(
        2, ge=1, description="Stop after this many epochs without a better validation metric; None = off."
    )
    metric: Literal["accuracy", "f1", "exact_match"] | None = Field(
        None,
        description="Validation metric that picks the best epoch; None = the task family's primary "
        "metric (accuracy for classifiers, exact_match for causal LMs).",
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="Use at most this many training rows (stratified); None = all."
    )
    mixed_precision: Literal["auto", "off", "fp16", "bf16", "bf16_if_native"] = Field(
        "auto",
        description="'auto' = bf16/fp16 autocast on a CUDA device, off on CPU; 'bf16' also autocasts "
        "on a CPU with avx512_bf16/AMX (an error on a CPU without); 'bf16_if_native' = bf16 wherever "
        "the device computes it natively (such a CPU, a bf16 GPU), else FP32 (training only: "
        "evaluation stays FP32).",
    )
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    data_parallel: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes training data-parallel (torchrun; DDP over gloo on CPU, nccl on GPUs). "
        "Each optimizer step still sees batch_size examples, split across the processes. 1 = one process.",
    )


class FewShotConfig(Strict):
    k: int = Field(..., ge=1, le=100_000, description="Labeled training examples kept per class.")
    seed: int = Field(42, description="Which k examples are drawn.")


class FinetuneConfig(Strict):
    model: str = Field(
        "packaged:all-MiniLM-L6-v2",
        description="'packaged:NAME', a local model folder with safetensors, or a Hugging Face hub id.",
    )
    hub_token: str | None = Field(
        None,
        description="Where a Hugging Face token for private hub models comes from: 'env:NAME' (an"
        " environment variable) or 'prefect:BLOCK' (a Prefect Secret block). Only this reference is"
        " logged; the value is read inside the task and never stored.",
    )
    method: MethodField = Field(
        default_factory=lambda: {"kind": "lora"},
        description="How the teacher is adapted: a registered method (lora, adalora, ia3, prefix_tuning, "
        "freeze, full; slimflow/models/train/methods.py).",
    )

    few_shot: FewShotConfig | None = Field(None, description="Train on k examples per class only.")
    train: TrainConfig = TrainConfig()

    @field_validator("hub_token")
    @classmethod
    def _secret_reference(cls, v: str | None) -> str | None:
        return None if v is None else check_secret_ref(v)


class UnlabeledConfig(Strict):
    source: str = Field(
        ...,
        description="CSV/JSONL/Parquet file of extra texts without labels, or packaged:NAME "
        "(packaged:rotten_tomatoes_plots: the review corpus's film synopses).",
    )
    text_column: str = Field("text", min_length=1, description="Column holding the text.")
    max_rows: int | None = Field(None, ge=1, description="Use at most this many rows (seeded sample).")


class DistillConfig(Strict):
    student: StudentField = Field(
        default_factory=lambda: {"kind": "layer_drop"},
        description="How the student is made: a registered builder (layer_drop, pretrained; "
        "slimflow/models/train/students.py).",
    )
    temperature: float = Field(2.0, gt=0, le=50, description="Softmax temperature of the soft targets.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the soft-target loss; 1 - alpha on hard labels."
    )
    hidden_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the hidden-state MSE (through a learned projection if widths differ).",
    )
    attention_weight: float = Field(
        0.0, ge=0, description="Weight of the attention-map MSE (equal head counts)."
    )
    layer_map: list[int] | None = Field(
        None,
        description="Teacher layer matched by each student layer; None = keep_layers for layer_drop, "
        "evenly spaced otherwise. Used by hidden/attention distillation.",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(learning_rate=1e-4, epochs=3),
        description="Student training (same hygiene as the teacher's).",
    )
    unlabeled: UnlabeledConfig | None = Field(
        None,
        description="Extra texts the teacher labels (soft targets only) for the student to learn from; "
        "texts also in a split are dropped. Classification only.",
    )


class RecoveryConfig(Strict):
    temperature: float = Field(
        2.0, gt=0, le=50, description="Softmax temperature of the teacher's soft targets."
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft-target loss during recovery.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=1, learning_rate=5e-5), description="Recovery training."
    )


class CompressConfig(Strict):
    steps: list[StepField] = Field(
        ...,
        min_length=1,
        description="Registered compression steps (slimflow/models/train/steps/), in order.",
    )
    calibration_examples: int = Field(
        256, ge=8, le=100_000, description="Training rows used to score importance."
    )
    on_unsupported: Literal["error", "skip"] = Field(
        "error",
        description="A step that does not apply to the compressed model's architecture (e.g. a "
        "Llama-only step on a BERT student): 'error' stops before any work (preflight); 'skip' "
        "skips it and records why in the stage report (for recipes shared across architectures).",
    )
    recovery: RecoveryConfig | None = Field(
        default_factory=RecoveryConfig,
        description="Short distillation from the teacher after pruning; None = off.",
    )
