"""The slimflow pipeline: validate data, fine-tune the teacher, distil, compress. One line per stage."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.runtime import PipelineRun, results_dir
from models.config import PipelineConfig, load_config
from models.data import source_digest
from models.prepare import PreparedData
from tasks.common import ModelRef
from tasks.compress import compress_model
from tasks.data import prepare_data
from tasks.distill import distill_student
from tasks.finetune import finetune_teacher

DATA_OUTPUTS = ("paths.train", "paths.test")


@flow(name="slimflow-pipeline", log_prints=True)
def pipeline(
    config: dict[str, Any] | str,
    overrides: list[str] | None = None,
    summary_path: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run the pipeline for ``config`` (a YAML path or an already-validated dict)."""
    cfg = load_config(config, overrides) if isinstance(config, str) else PipelineConfig.model_validate(config)
    with PipelineRun(cfg, summary_path, progress) as run:
        data = run.stage(
            "validate-data", prepare_data, cfg.data, source_digest(cfg.data), outputs=DATA_OUTPUTS
        )
        prepared = PreparedData.model_validate(data)  # the extra mlflow_run_id key is ignored
        teacher = run.stage("finetune-teacher", finetune_teacher, cfg.finetune, prepared)
        student = compressed = None
        if cfg.distill:
            student = run.stage(
                "distill-student", distill_student, cfg.distill, prepared, ModelRef.of(teacher)
            )
        if cfg.compress:
            source = ModelRef.of(student or teacher)
            compressed = run.stage(
                "compress", compress_model, cfg.compress, prepared, source, ModelRef.of(teacher)
            )
        best = compressed or student or teacher
        run.summary["decision"] = {
            "outcome": "compressed_ready" if compressed else "student_ready" if student else "teacher_ready",
            "promoted": False,
            "reason": "the pipeline has no promotion stage yet",
            "model_dir": best["model_dir"],
            "test_accuracy": best["test"]["accuracy"],
        }
    return run.summary


def run_pipeline(
    cfg: PipelineConfig, summary_path: str | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Run the flow with Prefect's result storage (hence its cache) inside the workdir.

    The flow's result store is fixed when the flow run starts, so the setting is scoped around the
    call. Deployments set PREFECT_LOCAL_STORAGE_PATH in their job environment instead (prefect.yaml).
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings  # noqa: PLC0415

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(results_dir(cfg))}):
        return pipeline(config=cfg.model_dump(mode="json"), summary_path=summary_path, progress=progress)
