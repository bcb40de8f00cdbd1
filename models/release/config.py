"""The release sections: ``promote:`` (gates, approval, deployment) and ``tracking:`` (MLflow)."""

from __future__ import annotations

from pydantic import Field, model_validator

from slimflow.models.config.base import Strict
from slimflow.models.core.names import SAFE_NAME


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
