"""The ``optimize:`` section: export, quantizers, agreement checks, benchmarks and the choice."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slimflow.models.config.base import Strict, plugin_field
from slimflow.models.families.base import AgreementConfig
from slimflow.models.optimize.quantizers import QUANTIZERS
from slimflow.models.optimize.targets import TARGETS, Fusion

QuantizerField = plugin_field(QUANTIZERS)


class ExportConfig(Strict):
    opset: int = Field(17, ge=14, le=23, description="ONNX opset of the export.")
    optimize: bool = Field(
        True, description="Run ONNX Runtime's transformer optimizer (Attention/LayerNorm/GELU fusions)."
    )
    skip_layer_norm: Literal["runtime", "graph"] = Field(
        "runtime",
        description="Where Add + LayerNormalization become SkipLayerNormalization: 'graph' fuses them "
        "in the saved file (ONNX Runtime's transformer optimizer default); 'runtime' leaves them to "
        "the session, which fuses them unless the runtime settings search (bench.tune) measured the "
        "unfused graph faster on this hardware.",
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


class TuneConfig(Strict):
    """The runtime settings search of ONNX Runtime candidates (``runtime_tuning.py``)."""

    threads: list[int] | None = Field(
        None,
        description="Intra-op thread counts tried; None = 1, 2, 4, ... up to the benchmark's threads. "
        "Counts above the benchmark's threads are dropped.",
    )
    spinning: list[bool] = Field(
        default_factory=lambda: [True, False],
        min_length=1,
        description="Whether idle intra-op threads spin (lower latency, burns CPU) — both are tried.",
    )
    graph_levels: list[Literal["basic", "extended", "all"]] = Field(
        default_factory=lambda: ["all"],
        min_length=1,
        description="ONNX Runtime online graph optimisation levels tried (candidates are already "
        "optimised offline; add 'basic' to measure the difference).",
    )
    disabled_fusions: list[list[Fusion]] = Field(
        default_factory=lambda: [[], ["SkipLayerNormFusion"]],
        min_length=1,
        description="Sets of ONNX Runtime online fusions turned off, each tried ([] = all on). The "
        "export leaves Add + LayerNormalization unfused (export.skip_layer_norm: runtime), so "
        "'SkipLayerNormFusion' decides whether the session fuses them: the fused kernel was slower "
        "on an Intel Xeon (onnxruntime 1.32). Tried on top of the best threads/spinning/graph level.",
    )
    denormal_as_zero: list[bool] = Field(
        default_factory=lambda: [False, True],
        min_length=1,
        description="Whether denormal floats are flushed to zero, each tried on top of the best "
        "threads/spinning/graph level (batch 32 of a small BERT: 13% faster on an Intel Xeon).",
    )
    min_output_agreement: float = Field(
        0.99,
        ge=0,
        le=1,
        description="A setting is chosen only if its predictions (argmax) match the default "
        "settings' on at least this share of the checked rows (64 per batch size): disabled fusions "
        "and flushed denormals change float rounding, and the candidate was evaluated with the defaults.",
    )
    batch_sizes: list[int] | None = Field(
        None, description="Batch sizes tuned (each gets its own best setting); None = bench.batch_sizes."
    )
    seconds: float = Field(0.5, gt=0, le=60, description="Timing budget per setting and round.")
    rounds: int = Field(
        1, ge=1, le=10, description="Interleaved rounds; a setting's figure is its best round."
    )
    min_gain: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Keep the default (all threads, spinning on, graph 'all') unless another setting's "
        "p50 is at least this share faster (0.05 = 5%): differences inside the noise change nothing.",
    )

    @field_validator("threads", "batch_sizes")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(x < 1 for x in v)):
            raise ValueError(f"must be a non-empty list of positive integers, got {v}")
        return v


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
    target_ci: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Stop a setting once its p50's 95% CI is within +-this share of it (0.03 = +-3%), "
        "after min_iterations; None = off (iterations and time_budget_s only).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Intra-op threads (ORT and torch); None = every CPU this process may use.",
    )
    pin_cores: bool = Field(True, description="Pin the benchmark process to as many cores as threads.")
    tune: TuneConfig | None = Field(
        default_factory=TuneConfig,
        description="Search ONNX Runtime settings (threads, spinning, graph level, then fusions and "
        "denormals) per batch size before measuring; the best are saved with the candidate "
        "(runtime.json) and used by the benchmark, the registry and the server on the same hardware. "
        "null = ONNX Runtime's defaults.",
    )
    isolate: bool = Field(
        True, description="Measure each model in a fresh process (own memory peak, no shared thread pools)."
    )
    bootstrap: int = Field(
        1000, ge=100, le=100_000, description="Resamples for the 95% confidence intervals."
    )
    seed: int = Field(0, description="Seed of the text sampling and the bootstrap.")
    max_other_load: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Most of the machine's CPU that other processes may use during a setting; above it "
        "the setting is measured again, then marked unreliable (gates then neither pass nor fail on it).",
    )
    max_ci_width: float = Field(
        0.5,
        gt=0,
        description="Widest 95% CI of p95, relative to p95, before a setting is measured again, then "
        "marked unreliable.",
    )
    host_lock_timeout_s: float = Field(
        4 * 3600,
        gt=0,
        description="How long a benchmark waits for another one on this host (one measures at a time).",
    )
    quiet_timeout_s: float = Field(
        1800,
        ge=0,
        description="How long a benchmark waits for heavy work of other pipelines on this host "
        "(training, export, quantization) to end before measuring anyway (the CPU watch then judges "
        "the figures). New heavy work waits while a benchmark measures.",
    )

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


class GenBenchConfig(Strict):
    """Generation benchmark of causal LMs (``gen_bench.py``)."""

    prompt_tokens: int = Field(64, ge=1, le=32768, description="Prompt length of every timed generation.")
    new_tokens: int = Field(64, ge=2, le=32768, description="Tokens generated per timed generation.")
    batch_sizes: list[int] = Field([1], min_length=1, description="Prompts generated together.")
    warmup: int = Field(2, ge=0, le=100, description="Untimed generations first.")
    iterations: int = Field(8, ge=2, le=10_000, description="Timed generations per batch size.")
    threads: int | None = Field(None, ge=1, le=256, description="Intra-op threads; None = visible cores.")
    pin_cores: bool = Field(True, description="Pin the process to as many cores as threads.")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples of each CI.")
    seed: int = Field(0, description="Seed of the bootstrap.")


class AccuracyBar(Strict):
    min_retention: float | None = Field(
        0.98, gt=0, le=1.5, description="Test accuracy at least this share of the teacher's; None = off."
    )
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="Absolute test accuracy floor; None = off."
    )


class SkipRule(Strict):
    """A candidate left out on purpose, with the measurement that justifies it (shown in the summary)."""

    match: str = Field(
        ...,
        min_length=1,
        description="Glob on candidate names SOURCE/VARIANT/TARGET, e.g. '*/ort_int8_static/*'.",
    )
    reason: str = Field(
        ..., min_length=3, description="Why, with the figures that showed it (said in the summary)."
    )


CANDIDATE_NAME = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"


class CascadeConfig(Strict):
    """Adaptive inference: a fast candidate answers what it is sure of, a stronger one the rest
    (``models/optimize/cascade.py``). Both parts must be measured candidates of this search."""

    fast: str = Field(
        ...,
        pattern=CANDIDATE_NAME,
        description="The candidate that answers first: SOURCE/VARIANT/TARGET, e.g. "
        "student/ort_int8_dynamic/cpu.",
    )
    fallback: str = Field(
        ...,
        pattern=CANDIDATE_NAME,
        description="The candidate that answers the rows the fast one is unsure of, e.g. "
        "teacher/ort_int8_dynamic/cpu (same target).",
    )
    confidence: Literal["max_prob", "margin"] = Field(
        "max_prob",
        description="The fast part's confidence: its top softmax probability, or the top minus the "
        "runner-up.",
    )
    max_accuracy_drop: float = Field(
        0.002,
        ge=0,
        le=1,
        description="The threshold (chosen on the validation split only) keeps validation accuracy at "
        "least the fallback's minus this (0.002 = 0.2 points), escalating as few rows as possible.",
    )

    @model_validator(mode="after")
    def _two_parts(self) -> CascadeConfig:
        if self.fast == self.fallback:
            raise ValueError(f"a cascade needs two different candidates, got {self.fast} twice")
        if self.fast.rsplit("/", 1)[1] != self.fallback.rsplit("/", 1)[1]:
            raise ValueError(f"a cascade's parts run on one target: {self.fast} vs {self.fallback}")
        return self

    def name(self) -> str:
        """Its candidate name: cascade/FAST_SOURCE.FAST_VARIANT_then_FALLBACK_SOURCE.FALLBACK_VARIANT/
        TARGET (MLflow keys allow no '+')."""
        f_src, f_var, target = self.fast.split("/")
        b_src, b_var, _ = self.fallback.split("/")
        return f"cascade/{f_src}.{f_var}_then_{b_src}.{b_var}/{target}"


class EarlyExitConfig(Strict):
    """Adaptive depth: an exit head after an intermediate encoder layer of a built ONNX candidate
    answers what it is sure of; the rest run the remaining layers (``models/optimize/early_exit.py``).
    BERT-style classifiers; the candidate must be a measured ONNX Runtime candidate of this search."""

    candidate: str = Field(
        ...,
        pattern=CANDIDATE_NAME,
        description="The built candidate to cut: SOURCE/VARIANT/TARGET, e.g. "
        "compressed/ort_int8_dynamic/cpu.",
    )
    exit_after: int = Field(
        ...,
        ge=1,
        le=256,
        description="Encoder layers run before the exit (2 = after the second); fewer than the model has.",
    )
    confidence: Literal["max_prob", "margin"] = Field(
        "max_prob", description="The exit head's confidence: top softmax probability, or top minus runner-up."
    )
    max_accuracy_drop: float = Field(
        0.002,
        ge=0,
        le=1,
        description="The threshold (chosen on the validation split only) keeps validation accuracy at "
        "least the whole model's minus this, letting as few texts as possible go on.",
    )
    epochs: int = Field(
        20,
        ge=1,
        le=1000,
        description="Exit-head training epochs, on the frozen model's hidden states of the training split "
        "(the whole model's logits as soft labels).",
    )
    max_train_examples: int | None = Field(
        20000,
        ge=100,
        description="Training texts the head learns from (a seeded sample when the split has more; "
        "each costs one forward pass of the model up to the exit). None = all.",
    )

    def name(self) -> str:
        """Its candidate name: early_exit/SOURCE.VARIANT.exitK/TARGET."""
        src, var, target = self.candidate.split("/")
        return f"early_exit/{src}.{var}.exit{self.exit_after}/{target}"


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
        import importlib.util

        if importlib.util.find_spec("prefect_dask") is None:
            raise ValueError("the dask runner needs prefect-dask: pip install 'slimflow[dask]'")
        return self


class OptimizeConfig(Strict):
    sources: list[Literal["teacher", "student", "compressed"]] | None = Field(
        None, description="Pipeline models turned into candidates; None = every model this run made."
    )
    targets: list[str] = Field(
        default_factory=lambda: ["cpu"],
        min_length=1,
        description="Hardware targets (slimflow/models/optimize/targets.py).",
    )
    quantize: list[QuantizerField] = Field(
        default_factory=list,
        description="Registered quantizers (slimflow/models/optimize/quantizers/) tried on every source "
        "and target.",
    )
    include_onnx_fp32: bool = Field(True, description="Keep the ONNX FP32 export itself as a candidate.")
    include_torch_fp32: bool = Field(
        False, description="Add each source in PyTorch FP32 eager as a (baseline) candidate."
    )
    skip: list[SkipRule] = Field(
        default_factory=list,
        description="Candidates not built, each with its reason (variants known to fail or lose on this "
        "target); they are listed as skipped in the summary and the run's candidate table.",
    )
    cascades: list[CascadeConfig] = Field(
        default_factory=list,
        description="Cascade candidates made of two candidates of this search (classifiers only); "
        "benchmarked on the real mix of fast and escalated test rows, judged like any candidate.",
    )
    early_exits: list[EarlyExitConfig] = Field(
        default_factory=list,
        description="Early-exit candidates cut from candidates of this search (BERT-style classifiers): "
        "benchmarked on the real mix of early and full-depth test texts, judged like any candidate.",
    )
    export: ExportConfig = ExportConfig()
    agreement: AgreementConfig = AgreementConfig()
    bench: BenchConfig = BenchConfig()
    generation: GenBenchConfig = Field(
        default_factory=lambda: GenBenchConfig(),
        description="Causal LMs: the generation benchmark (prompt and output lengths, batch sizes); "
        "their candidates are ranked by per-token decode latency.",
    )
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
        variants = [q.variant for q in self.quantize]
        if len(set(variants)) != len(variants):
            twice = sorted({v for v in variants if variants.count(v) > 1})
            raise ValueError(
                f"quantizer variant(s) {twice} listed twice: give each entry of one kind its own "
                f"name (e.g. name: {twice[0]}_mixed)"
            )
        clash = sorted(set(variants) & {"onnx_fp32", "torch_fp32", "genai_fp32"})
        if clash:
            raise ValueError(f"quantizer name(s) {clash} are the FP32 candidates' names: choose others")
        taken = sorted({q.name for q in self.quantize if q.name} & set(QUANTIZERS.names()))
        if taken:
            raise ValueError(f"quantizer name(s) {taken} are other quantizers' kinds: choose others")
        names = [c.name() for c in (*self.cascades, *self.early_exits)]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"cascades / early_exits listed twice: {twice}")
        return self
