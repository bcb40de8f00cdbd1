"""Task: load, validate (Great Expectations), clean and split the data; log the report to MLflow."""

from __future__ import annotations

import warnings
from pathlib import Path

from prefect import task

from slimflow.models.config.loading import config_to_params
from slimflow.models.core.errors import DataValidationError
from slimflow.models.core.redact import redact
from slimflow.models.data.config import DataConfig
from slimflow.models.data.prepare import DataResult, PreparedData
from slimflow.models.families import get_family
from slimflow.models.release import tracking
from slimflow.tasks.common import STAGE_CACHE, StageContext, atomic_dir, stage_key
from slimflow.tasks.results import persistence


def _log_report(report_dir: Path) -> None:
    import mlflow

    if report_dir.is_dir():
        mlflow.log_artifacts(str(report_dir), "data_validation")


def log_dataset(prepared: PreparedData, run_id: str) -> None:
    """Record the training split as an MLflow dataset input, named by our content fingerprint."""
    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    df = pd.read_parquet(prepared.path("train"))
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both are local files
        warnings.filterwarnings("ignore", message="The specified dataset source", category=UserWarning)
        ds = mlflow.data.from_pandas(
            df,
            source=prepared.source_path,
            name=f"train-{prepared.data_fingerprint[:12]}",
            targets=str(df.columns[-1]),  # split files put the target last: label, or completion
        )
    tags = [
        InputTag("mlflow.data.context", "train"),
        InputTag("slimflow.source", redact(prepared.source)),
        InputTag("slimflow.data_fingerprint", prepared.data_fingerprint),
        InputTag("slimflow.split_fingerprint", prepared.split_fingerprint),
    ]
    mlflow.MlflowClient().log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=tags)])


@task(name="validate-data", cache_policy=STAGE_CACHE, tags=["data"], **persistence())
def prepare_data(
    cfg: DataConfig, task: str, source_sha256: str, code_version: str, ctx: StageContext
) -> DataResult:
    """The prepared data (for the ``task`` family) and its figures; raises DataValidationError."""
    import mlflow

    key = stage_key(cfg, task, source_sha256, code_version)
    final = Path(ctx.workdir) / "data" / key
    report_dir = Path(ctx.workdir) / "data" / "reports" / key  # kept on failure too
    tracking.use(ctx.tracking_uri)
    with tracking.stage_run(ctx.parent_run_id, "validate-data", ctx.experiment_id) as run:
        tracking.log_params({f"data.{k}": v for k, v in config_to_params(cfg).items()})
        mlflow.set_tag("slimflow.data.source_sha256", source_sha256)
        try:
            with atomic_dir(final) as tmp:
                prepared, report = get_family(task).prepare_data(cfg, tmp, source_sha256, report_dir)
        except DataValidationError as e:
            _log_report(report_dir)
            mlflow.set_tag("slimflow.data.valid", "false")
            mlflow.log_metric("data.expectations_failed", len(e.report.failures()) if e.report else 1)
            raise
        # paths were written inside the temporary folder: point them at the final one
        prepared = prepared.model_copy(
            update={"paths": {k: str(final / Path(v).name) for k, v in prepared.paths.items()}}
        )
        _log_report(report_dir)
        mlflow.set_tags(
            {
                "slimflow.data.valid": "true",
                "slimflow.data.fingerprint": prepared.data_fingerprint,
                "slimflow.data.split_fingerprint": prepared.split_fingerprint,
            }
        )
        mlflow.log_metrics(
            {
                "data.rows_raw": prepared.rows_raw,
                "data.blank_dropped": prepared.blank_dropped,
                "data.duplicates_dropped": prepared.duplicates_dropped,
                "data.expectations_met": len(report.outcomes),
                **{f"data.rows_{k}": v for k, v in prepared.counts.items()},
            }
        )
        log_dataset(prepared, run.info.run_id)
        return DataResult(data=prepared, expectations_met=len(report.outcomes), mlflow_run_id=run.info.run_id)
