"""Task: fine-tune the teacher (peft), log per-epoch metrics and the merged model to MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from slimflow.models.config.loading import config_to_params
from slimflow.models.data.prepare import PreparedData
from slimflow.models.release import tracking
from slimflow.models.train.config import FinetuneConfig
from slimflow.models.train.finetune import FinetuneResult, finetune
from slimflow.tasks.common import MODEL_TASK, StageContext, atomic_dir, cpu_bound, publish_model, stage_key
from slimflow.tasks.secrets import resolve_secret


@task(name="finetune-teacher", tags=["train"], **MODEL_TASK)
@cpu_bound
def finetune_teacher(
    cfg: FinetuneConfig, data: PreparedData, code_version: str, ctx: StageContext
) -> FinetuneResult:
    """The FinetuneResult, with its MLflow run id and the model's sha256."""
    import mlflow

    key = stage_key(cfg, data.split_fingerprint, code_version)
    final = Path(ctx.workdir) / "models" / "teacher" / key
    tracking.use(ctx.tracking_uri)
    with tracking.stage_run(ctx.parent_run_id, "finetune-teacher", ctx.experiment_id) as run:
        tracking.log_params({f"finetune.{k}": v for k, v in config_to_params(cfg).items()})
        mlflow.set_tag("slimflow.data.split_fingerprint", data.split_fingerprint)

        def on_ready(info: dict) -> None:
            mlflow.log_metrics({k: float(v) for k, v in info.items()})

        cache_dir = Path(ctx.workdir)
        with atomic_dir(final) as tmp:
            result = finetune(
                cfg,
                data,
                tmp,
                cache_dir,
                on_epoch=tracking.epoch_logger(),
                on_ready=on_ready,
                progress=ctx.progress,
                hub_token=resolve_secret(cfg.hub_token) if cfg.hub_token else None,
            )
        final_metrics = {
            **{f"test_{k}": v for k, v in result.test.items() if k != "loss"},
            **{f"val_{k}_best": v for k, v in result.validation.items() if k != "loss"},
            "best_epoch": result.best_epoch,
            "train_seconds": result.train_seconds,
        }
        if result.merge_max_abs_diff is not None:
            final_metrics["merge_max_abs_diff"] = result.merge_max_abs_diff
        mlflow.log_metrics(final_metrics)
        mlflow.set_tag("slimflow.model.merged", str(result.merged).lower())
        return publish_model(result, final, run, "teacher")
