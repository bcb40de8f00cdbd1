"""Typed pipeline configuration, loaded from YAML.

Every field has a type, a default and a description. Unknown keys are rejected, and every error
names the file and the dotted field path, so a typo fails before anything expensive starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from models.errors import ConfigError
from models.names import SAFE_NAME


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, instances are immutable (hashable cache keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------- data
class SplitConfig(Strict):
    validation: float = Field(0.1, gt=0, lt=0.5, description="Fraction of rows held out for early stopping.")
    test: float = Field(0.2, gt=0, lt=0.5, description="Fraction of rows held out for the final report.")
    seed: int = Field(42, description="Seed of the stratified split; same seed + same data = same split.")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 0.8:
            raise ValueError("validation + test must leave at least 20% of rows for training")
        return self


class ValidationConfig(Strict):
    """Thresholds of the Great Expectations suite (see models/validation.py)."""

    min_chars: int = Field(2, ge=1, description="Shortest accepted text, in characters.")
    max_chars: int = Field(5000, ge=2, description="Longest accepted text, in characters.")
    max_blank_fraction: float = Field(
        0.0, ge=0, lt=0.5, description="Share of null/blank texts tolerated (they are dropped); 0 = none."
    )
    max_duplicate_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of repeated texts tolerated (repeats are dropped)."
    )
    min_per_class: int = Field(20, ge=1, description="Minimum rows per class after cleaning.")

    @model_validator(mode="after")
    def _bounds(self) -> ValidationConfig:
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class DataConfig(Strict):
    source: str = Field(
        "packaged:rotten_tomatoes",
        description="'packaged:NAME' for a dataset shipped in a package, or a .csv/.jsonl/.parquet path.",
    )
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field(
        "auto", description="File format; 'auto' uses the file extension."
    )
    text_column: str = Field("text", min_length=1, description="Column holding the input text.")
    label_column: str = Field("label", min_length=1, description="Column holding the class label.")
    labels: list[str] | None = Field(
        None,
        description="Declared label set (its order fixes label ids). Omitted: the sorted labels found.",
    )
    max_rows: int | None = Field(
        None, ge=20, description="Stratified subsample after cleaning, for quick runs; None = all rows."
    )
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("labels must list at least two classes")
            if len(set(v)) != len(v):
                raise ValueError(f"labels must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _columns_differ(self) -> DataConfig:
        if self.text_column == self.label_column:
            raise ValueError("text_column and label_column must differ")
        return self


# ----------------------------------------------------------------------------------------- training
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
    metric: Literal["accuracy", "f1"] = Field(
        "accuracy", description="Validation metric that picks the best epoch."
    )
    max_train_examples: int | None = Field(
        None, ge=1, description="Use at most this many training rows (stratified); None = all."
    )
    mixed_precision: Literal["auto", "off", "fp16", "bf16"] = Field(
        "auto", description="'auto' = bf16/fp16 autocast on a CUDA device, off on CPU."
    )
    seed: int = Field(42, description="Seed for initialisation, shuffling and dropout.")
    data_parallel: int = Field(
        1,
        ge=1,
        le=1024,
        description="Processes training data-parallel (torchrun; DDP over gloo on CPU, nccl on GPUs). "
        "Each optimizer step still sees batch_size examples, split across the processes. 1 = one process.",
    )


# ------------------------------------------------------------------------------------ PEFT methods
class _PeftMethod(Strict):
    modules_to_save: list[str] = Field(
        default_factory=lambda: ["classifier", "pooler"],
        description="Modules trained in full beside the adapter (the new head; the pooler, which "
        "sentence-embedding checkpoints never trained).",
    )


class LoraMethod(_PeftMethod):
    kind: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; None = peft's default for the architecture."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")


class AdaLoraMethod(_PeftMethod):
    kind: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=1024, description="Initial rank of every adapted matrix.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank after budget allocation.")
    alpha: float = Field(16, gt=0, description="Scaling numerator.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter branch.")
    target_modules: list[str] | None = Field(None, description="Module names; None = peft's default.")
    tinit_fraction: float = Field(0.1, ge=0, lt=1, description="Share of steps before rank pruning starts.")
    tfinal_fraction: float = Field(0.2, ge=0, lt=1, description="Share of final steps with ranks frozen.")

    @model_validator(mode="after")
    def _ranks(self) -> AdaLoraMethod:
        if self.target_r > self.init_r:
            raise ValueError("target_r must not exceed init_r")
        if self.tinit_fraction + self.tfinal_fraction >= 1:
            raise ValueError("tinit_fraction + tfinal_fraction must be below 1")
        return self


class IA3Method(_PeftMethod):
    kind: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="Module names; None = peft's default.")
    feedforward_modules: list[str] | None = Field(
        None, description="Subset of target_modules that are feed-forward layers; None = peft's default."
    )


class PrefixTuningMethod(_PeftMethod):
    kind: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Trained prefix length per layer.")
    prefix_projection: bool = Field(False, description="Re-parameterise the prefix through an MLP.")


class FreezeMethod(Strict):
    kind: Literal["freeze"] = "freeze"
    train_top_layers: int = Field(
        2, ge=0, description="Encoder layers trained from the top; embeddings and the rest are frozen."
    )


class FullMethod(Strict):
    kind: Literal["full"] = "full"


def _method_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "lora")
    return getattr(value, "kind", "lora")


FinetuneMethod = Annotated[
    Annotated[LoraMethod, Tag("lora")]
    | Annotated[AdaLoraMethod, Tag("adalora")]
    | Annotated[IA3Method, Tag("ia3")]
    | Annotated[PrefixTuningMethod, Tag("prefix_tuning")]
    | Annotated[FreezeMethod, Tag("freeze")]
    | Annotated[FullMethod, Tag("full")],
    Discriminator(_method_kind),
]


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
    method: FinetuneMethod = Field(default_factory=LoraMethod, description="How the teacher is adapted.")

    few_shot: FewShotConfig | None = Field(None, description="Train on k examples per class only.")
    train: TrainConfig = TrainConfig()

    @field_validator("hub_token")
    @classmethod
    def _secret_reference(cls, v: str | None) -> str | None:
        from models.names import check_secret_ref  # noqa: PLC0415

        return None if v is None else check_secret_ref(v)


# ------------------------------------------------------------------------------------- distillation
class LayerDropStudent(Strict):
    kind: Literal["layer_drop"] = "layer_drop"
    keep_layers: list[int] = Field(
        default_factory=lambda: [0, 2, 4],
        min_length=1,
        description="Teacher encoder layers the student keeps, in order (weights copied exactly).",
    )

    @field_validator("keep_layers")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v) or len(set(v)) != len(v):
            raise ValueError(f"keep_layers must be distinct non-negative layer indices, got {v}")
        return v


class PretrainedStudent(Strict):
    kind: Literal["pretrained"] = "pretrained"
    model: str = Field(..., description="'packaged:NAME', a folder or a hub id; uses its own tokenizer.")


def _student_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "layer_drop")
    return getattr(value, "kind", "layer_drop")


StudentSpec = Annotated[
    Annotated[LayerDropStudent, Tag("layer_drop")] | Annotated[PretrainedStudent, Tag("pretrained")],
    Discriminator(_student_kind),
]


class DistillConfig(Strict):
    student: StudentSpec = Field(default_factory=LayerDropStudent, description="How the student is made.")
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


# -------------------------------------------------------------------------------------- compression
def _step_union() -> Any:
    """Every registered compression step's config, discriminated by ``kind`` (models/steps/)."""
    from typing import Union  # noqa: PLC0415

    from models.steps import STEPS  # noqa: PLC0415 - pydantic-only modules: cheap

    classes = tuple(cls for cls, _ in STEPS.values())
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007 - built at runtime


CompressionStep = _step_union()


class RecoveryConfig(Strict):
    temperature: float = Field(
        2.0, gt=0, le=50, description="Softmax temperature of the teacher's soft targets."
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft-target loss during recovery.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=1, learning_rate=5e-5), description="Recovery training."
    )


class CompressConfig(Strict):
    steps: list[CompressionStep] = Field(..., min_length=1, description="Steps applied in order.")
    calibration_examples: int = Field(
        256, ge=8, le=100_000, description="Training rows used to score importance."
    )
    recovery: RecoveryConfig | None = Field(
        default_factory=RecoveryConfig,
        description="Short distillation from the teacher after pruning; None = off.",
    )


# ------------------------------------------------------------------------ export, benchmark, search
def _quant_union() -> Any:
    """Every registered quantization step's config, discriminated by ``kind`` (models/steps/)."""
    from typing import Union  # noqa: PLC0415

    from models.steps import QUANTIZERS  # noqa: PLC0415

    classes = tuple(cls for cls, _ in QUANTIZERS.values())
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007 - built at runtime


QuantizationStep = _quant_union()


class ExportConfig(Strict):
    opset: int = Field(17, ge=14, le=23, description="ONNX opset of the export.")
    optimize: bool = Field(
        True, description="Run ONNX Runtime's transformer optimizer (Attention/LayerNorm/GELU fusions)."
    )
    optimization_level: Literal[0, 1, 2, 99] = Field(
        2,
        description="ORT graph optimisation applied before the fusions: 0 none, 1 basic, 2 extended, "
        "99 all (99 adds layout changes tied to this machine's CPU).",
    )
    atol: float = Field(
        1e-4, gt=0, le=1, description="Largest |logit difference| allowed between ONNX FP32 and PyTorch."
    )
    parity_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 8, 32], min_length=1, description="Batch sizes of the parity check."
    )
    parity_lengths: list[int] = Field(
        default_factory=lambda: [8, 64, 128],
        min_length=1,
        description="Sequence lengths (tokens, padded or truncated) of the parity check.",
    )

    @field_validator("parity_batch_sizes", "parity_lengths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"must be positive integers, got {v}")
        return v


class AgreementConfig(Strict):
    """How a quantized candidate is checked against its FP32 source on the validation split."""

    min_agreement: float = Field(
        0.97, gt=0, le=1, description="Share of validation rows on which it predicts what FP32 predicts."
    )
    min_class_ratio: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Collapse guard: every class FP32 predicts for at least 5% of rows must be "
        "predicted at least this fraction as often by the quantized model.",
    )


class BenchConfig(Strict):
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 32], min_length=1, description="Batch sizes measured."
    )
    lengths: list[Literal["data"] | int] = Field(
        default_factory=lambda: ["data", 128],
        min_length=1,
        description="'data' = test texts as they come (padded to the longest in the batch), or a fixed "
        "token count every input is padded/truncated to.",
    )
    warmup: int = Field(10, ge=0, le=10_000, description="Untimed calls before measuring.")
    iterations: int = Field(200, ge=5, le=1_000_000, description="Timed calls per setting (at most).")
    time_budget_s: float | None = Field(
        8.0, gt=0, description="Stop a setting early after this many seconds (>= min_iterations); None = off."
    )
    min_iterations: int = Field(20, ge=5, description="Timed calls per setting even when over budget.")
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Intra-op threads (ORT and torch); None = every CPU this process may use.",
    )
    pin_cores: bool = Field(True, description="Pin the benchmark process to as many cores as threads.")
    isolate: bool = Field(
        True, description="Measure each model in a fresh process (own memory peak, no shared thread pools)."
    )
    bootstrap: int = Field(
        1000, ge=100, le=100_000, description="Resamples for the 95% confidence intervals."
    )
    seed: int = Field(0, description="Seed of the text sampling and the bootstrap.")

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, v: list[Any]) -> list[Any]:
        if any(isinstance(x, int) and not 1 <= x <= 8192 for x in v):
            raise ValueError(f"fixed lengths must be between 1 and 8192 tokens, got {v}")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if any(x < 1 or x > 4096 for x in v):
            raise ValueError(f"batch sizes must be between 1 and 4096, got {v}")
        return v


class AccuracyBar(Strict):
    min_retention: float | None = Field(
        0.98, gt=0, le=1.5, description="Test accuracy at least this share of the teacher's; None = off."
    )
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="Absolute test accuracy floor; None = off."
    )


class ThreadsRunner(Strict):
    kind: Literal["threads"] = "threads"


class DaskRunner(Strict):
    kind: Literal["dask"] = "dask"
    address: str | None = Field(
        None,
        pattern=r"^(tcp|tls|inproc|ucx)://[^\s]+$",
        description="Scheduler of an existing Dask cluster (tcp://HOST:8786); None = start a local one.",
    )
    n_workers: int = Field(2, ge=1, le=1024, description="Worker processes of a local cluster.")
    threads_per_worker: int = Field(1, ge=1, le=64, description="Threads per local worker.")

    @model_validator(mode="after")
    def _installed(self) -> DaskRunner:
        import importlib.util  # noqa: PLC0415

        if importlib.util.find_spec("prefect_dask") is None:
            raise ValueError("the dask runner needs prefect-dask: pip install 'slimflow[dask]'")
        return self


class OptimizeConfig(Strict):
    sources: list[Literal["teacher", "student", "compressed"]] | None = Field(
        None, description="Pipeline models turned into candidates; None = every model this run made."
    )
    targets: list[str] = Field(
        default_factory=lambda: ["cpu"], min_length=1, description="Hardware targets (models/targets.py)."
    )
    quantize: list[QuantizationStep] = Field(
        default_factory=list, description="Quantization variants tried on every source and target."
    )
    include_onnx_fp32: bool = Field(True, description="Keep the ONNX FP32 export itself as a candidate.")
    include_torch_fp32: bool = Field(
        False, description="Add each source in PyTorch FP32 eager as a (baseline) candidate."
    )
    export: ExportConfig = ExportConfig()
    agreement: AgreementConfig = AgreementConfig()
    bench: BenchConfig = BenchConfig()
    accuracy_bar: AccuracyBar = AccuracyBar()
    rank_batch_size: int = Field(
        1,
        ge=1,
        description="The best candidate is the one with the lowest p50 at this batch size "
        "(test-data lengths) among those that meet the accuracy bar.",
    )
    max_parallel: int = Field(
        2,
        ge=1,
        le=64,
        description="Candidate builds/accuracy evaluations run at once. Latency is always "
        "measured one candidate at a time.",
    )
    runner: ThreadsRunner | DaskRunner = Field(
        default_factory=lambda: ThreadsRunner(),
        discriminator="kind",
        description="Where candidate builds and accuracy evaluations run: 'threads' in the pipeline "
        "process, or 'dask' (a local Dask cluster, or an existing one by address) through Prefect's "
        "Dask integration. Exports and latency stay in the pipeline process.",
    )

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v: list[str]) -> list[str]:
        from models.targets import TARGETS  # noqa: PLC0415

        unknown = [t for t in v if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"targets repeat: {v}")
        return v

    @model_validator(mode="after")
    def _rank_measured(self) -> OptimizeConfig:
        if self.rank_batch_size not in self.bench.batch_sizes:
            raise ValueError(
                f"rank_batch_size {self.rank_batch_size} is not among "
                f"bench.batch_sizes {self.bench.batch_sizes}"
            )
        if "data" not in self.bench.lengths:
            raise ValueError("bench.lengths must include 'data' (the ranking uses test-data lengths)")
        kinds = [q.kind for q in self.quantize]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each quantization kind may appear once, got {kinds}")
        return self


# ---------------------------------------------------------------------------------------- promotion
class GatesConfig(Strict):
    min_test_accuracy: float | None = Field(
        None, ge=0, le=1, description="Lowest test accuracy a promoted model may have; None = off."
    )
    min_retention: float | None = Field(
        0.98, gt=0, le=1.5, description="Test accuracy at least this share of the teacher's; None = off."
    )
    max_p95_ms: float | None = Field(
        None,
        gt=0,
        description="Highest p95 latency (ms) at latency_batch_size on test-data lengths, judged on the "
        "upper end of its 95% confidence interval; None = off.",
    )
    latency_batch_size: int = Field(1, ge=1, description="Batch size the latency gate is judged at.")
    max_size_mb: float | None = Field(None, gt=0, description="Largest model file (MiB); None = off.")
    target: str | None = Field(None, description="Only candidates for this target compete; None = any.")

    @model_validator(mode="after")
    def _some_gate(self) -> GatesConfig:
        if all(
            g is None for g in (self.min_test_accuracy, self.min_retention, self.max_p95_ms, self.max_size_mb)
        ):
            raise ValueError("at least one gate must be set (every gate is None)")
        return self


class ApprovalConfig(Strict):
    required: bool = Field(
        False,
        description="Pause for a human decision (Prefect UI form or `slimflow approve`) before "
        "the challenger becomes champion.",
    )
    timeout_s: int = Field(
        3600, ge=1, le=30 * 24 * 3600, description="End the run without promotion after this many seconds."
    )


class DeployConfig(Strict):
    host: str = Field(
        "127.0.0.1", description="Bind address of the model server (loopback unless you mean otherwise)."
    )
    port: int = Field(8088, ge=1024, le=65535, description="Port of the model server.")


class PromoteConfig(Strict):
    model_name: str = Field(
        ..., pattern=SAFE_NAME, description="Registered model name (letters, digits, . _ -)."
    )
    gates: GatesConfig = GatesConfig()
    approval: ApprovalConfig = ApprovalConfig()
    deploy: DeployConfig | None = Field(
        default_factory=DeployConfig,
        description="Serve the new champion on this host/port and smoke-test it; None = promote only.",
    )


# ----------------------------------------------------------------------------------------- tracking
class TrackingConfig(Strict):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI. None: $MLFLOW_TRACKING_URI, else a sqlite store in the workdir.",
    )
    experiment: str = Field("slimflow", min_length=1, max_length=200, description="MLflow experiment name.")
    run_name: str | None = Field(None, description="Name of the parent run; None = '<pipeline>-<time>'.")


# ------------------------------------------------------------------------------------------- root
class PipelineConfig(Strict):
    name: str = Field("slimflow", pattern=SAFE_NAME, description="Pipeline name (letters, digits, . _ -).")
    workdir: str = Field(
        ".slimflow", min_length=1, description="Folder for data, models, cache and the default MLflow store."
    )
    data: DataConfig = DataConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    distill: DistillConfig | None = Field(None, description="Distil the teacher into a student; None = skip.")
    compress: CompressConfig | None = Field(
        None, description="Prune the student (or the teacher when there is none); None = skip."
    )
    optimize: OptimizeConfig | None = Field(
        None, description="Export, quantize and benchmark candidates, pick the best; None = skip."
    )
    promote: PromoteConfig | None = Field(
        None, description="Register candidates that pass the gates and promote the best; None = skip."
    )
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _promote_needs_candidates(self) -> PipelineConfig:
        if self.promote is not None:
            if self.optimize is None:
                raise ValueError("promote needs an optimize: section (the candidates the gates judge)")
            gates = self.promote.gates
            if gates.target is not None and gates.target not in self.optimize.targets:
                raise ValueError(f"promote.gates.target {gates.target!r} is not in optimize.targets")
            if (
                gates.max_p95_ms is not None
                and gates.latency_batch_size not in self.optimize.bench.batch_sizes
            ):
                raise ValueError(
                    f"promote.gates.latency_batch_size {gates.latency_batch_size} is not measured "
                    f"(optimize.bench.batch_sizes: {self.optimize.bench.batch_sizes})"
                )
        return self

    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()


# ------------------------------------------------------------------------------------------ loading
_SECRETISH = re.compile(r"token|secret|password|passwd|api_key|auth", re.I)


def format_validation_error(err: ValidationError, origin: str) -> str:
    from models.steps import QUANTIZERS, STEPS  # noqa: PLC0415

    tag_names = _TAGS | set(STEPS) | set(QUANTIZERS)
    lines = [f"{origin}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in tag_names)) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"][:-1])
            msg = "unknown key" + (f"; valid keys here: {', '.join(allowed)}" if allowed else "")
        elif _SECRETISH.search(loc):
            msg = f"{msg} (value not shown: it may be a secret)"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


_TAGS = {"lora", "adalora", "ia3", "prefix_tuning", "freeze", "full", "layer_drop", "pretrained"}
_METHODS = {
    "lora": LoraMethod,
    "adalora": AdaLoraMethod,
    "ia3": IA3Method,
    "prefix_tuning": PrefixTuningMethod,
    "freeze": FreezeMethod,
    "full": FullMethod,
    "layer_drop": LayerDropStudent,
    "pretrained": PretrainedStudent,
}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config section at ``loc`` (for 'unknown key' messages)."""
    model: Any = PipelineConfig
    from models.steps import QUANTIZERS, STEPS  # noqa: PLC0415

    tags = {**_METHODS, **{kind: cls for kind, (cls, _) in {**STEPS, **QUANTIZERS}.items()}}
    for part in loc:
        if isinstance(part, int):  # a list index: the element type comes from the next tag
            continue
        if isinstance(part, str) and part in tags:
            model = tags[part]
            continue
        field = getattr(model, "model_fields", {}).get(part) if model is not None else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return sorted(getattr(model, "model_fields", {})) if model is not None else []


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=VALUE`` overrides; VALUE is parsed as YAML (numbers, lists, null...)."""
    for item in overrides:
        m = _OVERRIDE.match(item)
        if not m:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. finetune.train.epochs=2")
        path, text = m.group(1).split("."), m.group(2)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
        node = raw
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--set {item!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file (or the defaults when ``path`` is None), apply overrides, validate."""
    origin = str(path) if path is not None else "(defaults)"
    raw: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(raw).__name__}")
    if overrides:
        raw = apply_overrides(raw, overrides)
        origin += " with --set " + " ".join(overrides)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None


def config_to_params(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """Flatten a config into dotted ``key: str`` pairs for MLflow params."""
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            out[key] = "null" if value is None else str(value)

    walk(cfg.model_dump(mode="json"), prefix)
    return out
