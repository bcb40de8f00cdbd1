"""Task: distil the fine-tuned teacher into a smaller student; log figures and the model."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from slimflow.models.config.loading import config_to_params
from slimflow.models.data.prepare import PreparedData
from slimflow.models.release import tracking
from slimflow.models.train.config import DistillConfig
from slimflow.models.train.distill import DistillResult, distill
from slimflow.tasks.common import (
    MODEL_TASK,
    ModelRef,
    StageContext,
    atomic_dir,
    cpu_bound,
    publish_model,
    stage_key,
)


@task(name="distill-student", tags=["train"], **MODEL_TASK)
@cpu_bound
def distill_student(
    cfg: DistillConfig,
    data: PreparedData,
    teacher: ModelRef,
    code_version: str,
    ctx: StageContext,
) -> DistillResult:
    """The DistillResult, with its MLflow run id and the student's sha256."""
    import mlflow

    key = stage_key(cfg, data.split_fingerprint, teacher.sha256, code_version)
    final = Path(ctx.workdir) / "models" / "student" / key
    tracking.use(ctx.tracking_uri)
    with tracking.stage_run(ctx.parent_run_id, "distill-student", ctx.experiment_id) as run:
        tracking.log_params({f"distill.{k}": v for k, v in config_to_params(cfg).items()})
        mlflow.set_tags(
            {
                "slimflow.teacher.sha256": teacher.sha256,
                "slimflow.data.split_fingerprint": data.split_fingerprint,
            }
        )
        with atomic_dir(final) as tmp:
            result = distill(
                cfg,
                data,
                teacher.dir,
                teacher.sha256,
                tmp,
                Path(ctx.workdir) / "cache",
                on_epoch=tracking.epoch_logger(),
                progress=ctx.progress,
            )
        mlflow.log_metrics(
            {
                **{f"test_{k}": v for k, v in result.test.items() if k != "loss"},
                **{f"teacher_test_{k}": v for k, v in result.teacher_test.items() if k != "loss"},
                f"{result.primary_metric}_retention": result.retention,
                "params": result.student_params,
                "teacher_params": result.teacher_params,
                "best_epoch": result.best_epoch,
                "train_seconds": result.train_seconds,
            }
        )
        mlflow.set_tag("slimflow.teacher_logits_cached", str(result.teacher_logits_cached))
        if result.teacher_logits_path:  # none when the teacher ran beside the student (per-token targets)
            mlflow.log_artifact(result.teacher_logits_path, "teacher_outputs")
        return publish_model(result, final, run, "student")
