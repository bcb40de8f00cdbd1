"""Task: prune the student (or teacher), recover by distillation, log before/after figures."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from slimflow.models.config.loading import config_to_params
from slimflow.models.data.prepare import PreparedData
from slimflow.models.release import tracking
from slimflow.models.train.compress import CompressResult, compress
from slimflow.models.train.config import CompressConfig
from slimflow.tasks.common import (
    MODEL_TASK,
    ModelRef,
    StageContext,
    atomic_dir,
    cpu_bound,
    publish_model,
    stage_key,
)


@task(name="compress", tags=["compress"], **MODEL_TASK)
@cpu_bound
def compress_model(
    cfg: CompressConfig,
    data: PreparedData,
    source: ModelRef,
    teacher: ModelRef,
    code_version: str,
    ctx: StageContext,
) -> CompressResult:
    import mlflow

    key = stage_key(cfg, data.split_fingerprint, source.sha256, teacher.sha256, code_version)
    final = Path(ctx.workdir) / "models" / "compressed" / key
    tracking.use(ctx.tracking_uri)
    with tracking.stage_run(ctx.parent_run_id, "compress", ctx.experiment_id) as run:
        tracking.log_params({f"compress.{k}": v for k, v in config_to_params(cfg).items()})
        mlflow.set_tags({"slimflow.source.sha256": source.sha256, "slimflow.teacher.sha256": teacher.sha256})
        with atomic_dir(final) as tmp:
            result = compress(
                cfg,
                data,
                source.dir,
                teacher.dir,
                teacher.sha256,
                tmp,
                Path(ctx.workdir) / "cache",
                on_epoch=tracking.epoch_logger(),
                progress=ctx.progress,
            )
        metrics = {
            "params_before": result.before["params"],
            "params_after": result.after["params"],
            "params_no_emb_before": result.before["params_no_embeddings"],
            "params_no_emb_after": result.after["params_no_embeddings"],
            "file_bytes_before": result.file_bytes_before,
            "file_bytes_after": result.file_bytes_after,
            **{f"test_{k}_before": v for k, v in result.test_before.items() if k != "loss"},
            **{f"test_{k}_pruned": v for k, v in result.test_pruned.items() if k != "loss"},
            **{f"test_{k}": v for k, v in result.test.items() if k != "loss"},
            "recovery_seconds": result.recovery_seconds,
            "recovery_epoch": result.recovery_epoch,
        }
        for i, step in enumerate(result.steps):
            metrics.update({f"step{i}.{k}": float(v) for k, v in step.items() if isinstance(v, int | float)})
        mlflow.log_metrics(metrics)
        return publish_model(result, final, run, "compressed")
