"""The release sections: ``promote:`` (gates, approval, deployment) and ``tracking:`` (MLflow)."""

from __future__ import annotations

from pydantic import Field, model_validator

from slimflow.models.config.base import Strict
from slimflow.models.core.names import SAFE_NAME


class GatesConfig(Strict):
    min_test_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Lowest test score a promoted model may have, on the task family's primary metric "
        "(accuracy; exact match of the generated answer for causal-lm); None = off.",
    )
    min_retention: float | None = Field(
        0.98,
        gt=0,
        le=1.5,
        description="Test score (the family's primary metric) at least this share of the fine-tuned "
        "teacher's; None = off.",
    )
    max_p95_ms: float | None = Field(
        None,
        gt=0,
        description="Highest p95 latency (ms) at latency_batch_size on test-data lengths, judged on the "
        "upper end of its 95% confidence interval; None = off.",
    )
    latency_batch_size: int = Field(1, ge=1, description="Batch size the latency gate is judged at.")
    max_size_mb: float | None = Field(None, gt=0, description="Largest model file (MiB); None = off.")
    max_perplexity_ratio: float | None = Field(
        None,
        ge=1,
        description="Generative models: highest test perplexity as a multiple of the fine-tuned FP32 "
        "model's (1.15 = at most 15% worse); None = off.",
    )
    min_decode_tokens_per_s: float | None = Field(
        None,
        gt=0,
        description="Generative models: lowest decode rate (tokens/s) at latency_batch_size, judged on "
        "the lower end of its 95% confidence interval; None = off.",
    )
    max_ttft_ms: float | None = Field(
        None,
        gt=0,
        description="Generative models: highest p95 time to first token (ms) at latency_batch_size, "
        "judged on the upper end of its 95% confidence interval; None = off.",
    )
    target: str | None = Field(None, description="Only candidates for this target compete; None = any.")

    @model_validator(mode="after")
    def _some_gate(self) -> GatesConfig:
        if all(getattr(self, g) is None for g in (*COMMON_GATES, *GENERATIVE_GATES)):
            raise ValueError("at least one gate must be set (every gate is None)")
        return self

    def generative_gates(self) -> list[str]:
        """The gates set here that only a generative model's figures can answer."""
        return [g for g in GENERATIVE_GATES if getattr(self, g) is not None]


COMMON_GATES = ("min_test_accuracy", "min_retention", "max_p95_ms", "max_size_mb")
GENERATIVE_GATES = ("max_perplexity_ratio", "min_decode_tokens_per_s", "max_ttft_ms")


class ApprovalConfig(Strict):
    required: bool = Field(
        False,
        description="Pause for a human decision (Prefect UI form or `slimflow approve`) before "
        "the challenger becomes champion.",
    )
    timeout_s: int = Field(
        3600, ge=1, le=30 * 24 * 3600, description="End the run without promotion after this many seconds."
    )


class ServeConfig(Strict):
    """What one model server accepts and how it schedules the model. Every limit is refused with a
    clear status before the work it bounds: 413 (body), 422 (texts, characters, bad Unicode), 503 (busy)."""

    max_body_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 30, description="Largest request body (bytes); larger ones get 413 unread."
    )
    max_texts: int = Field(256, ge=1, le=100_000, description="Most texts in one request (more: 422).")
    max_chars: int = Field(
        10_000, ge=1, le=10_000_000, description="Longest text (characters) in a request (longer: 422)."
    )
    max_concurrent: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Prediction requests in the server at once (running or queued); beyond: 503 with "
        "Retry-After. /health is not counted.",
    )
    batching: bool = Field(
        True,
        description="Dynamic batching: requests arriving within batch_window_ms are answered by one "
        "model call of up to max_batch_texts texts.",
    )
    batch_window_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a batch waits for more requests once the first arrived."
    )
    max_batch_texts: int = Field(64, ge=1, le=100_000, description="Most texts in one batched model call.")
    max_new_tokens: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Generative models: most tokens one request may generate (more: 422).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Model calls running at once (each uses the model's intra-op threads; 1 keeps the "
        "cores to one call, which is fastest on small CPUs).",
    )


class DeployConfig(Strict):
    host: str = Field(
        "127.0.0.1", description="Bind address of the model server (loopback unless you mean otherwise)."
    )
    port: int = Field(8088, ge=1024, le=65535, description="Port of the model server.")
    server: ServeConfig = Field(default_factory=ServeConfig, description="Limits and batching.")


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
    lease_s: int = Field(
        300,
        ge=20,
        le=86400,
        description="A running pipeline renews a lease on its MLflow run every lease_s/4 seconds; a run "
        "whose lease expired (plus 60 s for clock skew) is closed FAILED by the next pipeline, wherever "
        "it ran (a restarted pod, a dead machine). A run whose process is alive on the same machine is "
        "never closed.",
    )
