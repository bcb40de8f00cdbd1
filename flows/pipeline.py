"""The slimflow pipeline: validate data, fine-tune the teacher, distil, compress, search candidates.
One line per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from slimflow.flows.bookkeeping import PipelineRun, results_dir
from slimflow.flows.promotion import promotion
from slimflow.flows.search import candidate_search
from slimflow.models.core.redact import redact
from slimflow.models.core.results import ModelResult
from slimflow.models.data.tables import source_digest
from slimflow.models.optimize.candidates import SearchResult
from slimflow.models.pipeline_config import PipelineConfig, load_config
from slimflow.tasks.common import ModelRef
from slimflow.tasks.compress import compress_model
from slimflow.tasks.data import prepare_data
from slimflow.tasks.distill import distill_student
from slimflow.tasks.finetune import finetune_teacher
from slimflow.tasks.promote import PromotionResult


def _run_name() -> str:
    """Flow runs named after the pipeline and the time (not Prefect's random adjective-animal)."""
    import time

    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    name = config.get("name", "pipeline") if isinstance(config, dict) else Path(str(config)).stem
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="slimflow-pipeline", flow_run_name=_run_name, log_prints=True)
def pipeline(
    config: dict[str, Any] | str,
    overrides: list[str] | None = None,
    summary_path: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run the pipeline for ``config`` (a YAML path or an already-validated dict)."""
    cfg = load_config(config, overrides) if isinstance(config, str) else PipelineConfig.model_validate(config)
    with PipelineRun(cfg, summary_path, progress) as run:
        data = run.stage("validate-data", prepare_data, cfg.data, cfg.task, source_digest(cfg.data))
        prepared = data.data
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
        search = None
        if cfg.optimize:
            made = {"teacher": teacher, "student": student, "compressed": compressed}
            made = {k: v for k, v in made.items() if v is not None}
            search = candidate_search(run, cfg.optimize, prepared, made, teacher.test_score)
            run.summary["search"] = search.summary()
        promoted = None
        if cfg.promote and search is not None:
            promoted = promotion(
                run, cfg.promote, cfg, search, prepared, data.mlflow_run_id, teacher.test_score, teacher.test
            )
            run.summary["promotion"] = promoted.model_dump(exclude={"mlflow_run_id"})
        run.summary["decision"] = _decision(teacher, student, compressed, search, promoted)
    return run.summary


def _decision(
    teacher: ModelResult,
    student: ModelResult | None,
    compressed: ModelResult | None,
    search: SearchResult | None,
    promoted: PromotionResult | None,
) -> dict:
    """What this run produced and whether it reached users (the champion alias)."""
    if promoted is not None:
        review = promoted.approval or {}
        approval = review.get("decision")
        if promoted.champion:
            who = f"approved by {review['reviewer']}" if approval == "approved" else "no approval required"
            outcome = "promoted"
            reason = f"{promoted.model_name} version {promoted.champion} is champion ({who})"
        elif promoted.refused:
            outcome, reason = "champion_changed", promoted.refused
        elif promoted.challenger:
            outcome = {"rejected": "rejected", "timeout": "approval_timed_out"}.get(approval, "not_promoted")
            why = review.get("comment") or approval
            reason = f"challenger version {promoted.challenger} not promoted: {why}"
        else:
            outcome, reason = "no_candidate_passes", promoted.reason
        return {
            "outcome": outcome,
            "promoted": bool(promoted.champion),
            "reason": reason,
            "model_name": promoted.model_name,
            "challenger": promoted.challenger,
            "champion": promoted.champion,
            "failed_gates": promoted.failed_gates,
            "best_effort": promoted.best_effort,
        }
    if search is not None:
        best = search.best
        return {
            "outcome": "candidate_selected" if best else "no_candidate_meets_bar",
            "promoted": False,
            "reason": search.selection["reason"],
            "candidate": search.selection["best"],
            "model_dir": best["path"] if best else None,
            f"test_{teacher.primary_metric}": best["test"][teacher.primary_metric] if best else None,
        }
    best = compressed or student or teacher
    return {
        "outcome": "compressed_ready" if compressed else "student_ready" if student else "teacher_ready",
        "promoted": False,
        "reason": "no candidate search configured (optimize: null)",
        "model_dir": best.model_dir,
        f"test_{best.primary_metric}": best.test_score,
    }


def run_pipeline(
    cfg: PipelineConfig, summary_path: str | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Run the flow with Prefect's result storage (hence its cache) inside the workdir.

    The flow's result store is fixed when the flow run starts, so the setting is scoped around the
    call. Deployments set PREFECT_LOCAL_STORAGE_PATH in their job environment instead (prefect.yaml).
    """
    import os

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    uri = cfg.tracking.uri
    hidden = uri is not None and redact(uri) != uri
    if hidden:  # flow parameters are stored by Prefect and shown in its UI: credentials go by environment
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": None})})
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        if hidden:
            os.environ["MLFLOW_TRACKING_URI"] = str(uri)
        with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(results_dir(cfg))}):
            return pipeline(config=cfg.model_dump(mode="json"), summary_path=summary_path, progress=progress)
    finally:
        if hidden:
            if before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before
