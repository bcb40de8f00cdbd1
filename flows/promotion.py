"""Promotion, orchestrated: judge and register candidates, wait for a reviewer if configured, move
the champion alias. A run with no passing candidate, a rejection or a timeout moves no alias."""

from __future__ import annotations

from typing import Any

from slimflow.flows.approval import _now, wait_for_approval
from slimflow.flows.bookkeeping import PipelineRun
from slimflow.flows.deploy import deploy
from slimflow.models.core.provenance import git_commit
from slimflow.models.data.prepare import PreparedData
from slimflow.models.families import get_family
from slimflow.models.optimize.candidates import SearchResult
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from slimflow.models.release.config import PromoteConfig
from slimflow.models.release.evidence import champion_figures, links, review_evidence
from slimflow.models.release.registry import record_approval
from slimflow.tasks.promote import PromotionResult, promote_champion, register_candidates


def _context(
    cfg: PipelineConfig,
    data: PreparedData,
    data_run_id: str | None,
    teacher_acc: float,
    teacher_test: dict[str, Any] | None = None,
) -> dict[str, Any]:
    student = cfg.distill.student.model_dump() if cfg.distill else None
    steps = [s.kind for s in cfg.compress.steps] if cfg.compress else None
    return {
        "data_source": data.source,
        "data_fingerprint": data.data_fingerprint,
        "counts": data.counts,
        "gx": f"passed (validate-data run {data_run_id})",
        "teacher_model": cfg.finetune.model,
        "teacher_accuracy": teacher_acc,  # on the family's primary metric
        "metric": get_family(cfg.task).primary_metric,
        "teacher_test": {k: v for k, v in (teacher_test or {}).items() if isinstance(v, int | float)},
        "student": student,
        "steps": steps,
        "git_commit": git_commit(),
    }


def _evidence(
    run: PipelineRun,
    cfg: PromoteConfig,
    search: SearchResult,
    reg: Any,
    teacher_acc: float,
    context: dict[str, Any],
) -> str:
    """The approval form's description: challenger vs champion vs teacher, gates, data, links."""
    row = next(c for c in search.candidates if c["name"] == reg.winner)
    verdict = next(v for v in reg.decision["verdicts"] if v["name"] == reg.winner)
    champion = None
    if reg.champion_at_decision:
        mv = run.client.get_model_version(cfg.model_name, reg.champion_at_decision)
        champion = champion_figures(dict(mv.tags), reg.champion_at_decision, context["metric"])
    where = links(run.ctx.tracking_uri, run.ctx.experiment_id, run.run_id, cfg.model_name, reg.challenger)
    return review_evidence(
        cfg.model_name, reg.challenger, row, verdict, teacher_acc, cfg.gates.latency_batch_size,
        champion, context, where,
    )  # fmt: skip


def promotion(
    run: PipelineRun,
    cfg: PromoteConfig,
    pipeline_cfg: PipelineConfig,
    search: SearchResult,
    data: PreparedData,
    data_run_id: str | None,
    teacher_acc: float,
    teacher_test: dict[str, Any] | None = None,
) -> PromotionResult:
    """Judge, register, review and promote; ``teacher_acc`` is the fine-tuned teacher's test score on
    the family's primary metric and ``teacher_test`` all its test figures (the perplexity gate's
    reference)."""
    context = _context(pipeline_cfg, data, data_run_id, teacher_acc, teacher_test)
    reg = run.stage("register", register_candidates, cfg, search.candidates, teacher_acc, context)
    out = PromotionResult(
        model_name=cfg.model_name,
        registered=reg.versions,
        challenger=reg.challenger,
        winner=reg.winner,
        reason=reg.decision["reason"],
        best_effort=reg.decision["best_effort"],
        failed_gates=reg.decision["best_effort_failed"],
    )
    if not reg.challenger:
        return out
    if cfg.approval.required:
        evidence = _evidence(run, cfg, search, reg, teacher_acc, context)
        run.client.log_text(run.run_id, evidence, "review/evidence.md")
        run.artifact(
            "review", markdown=evidence, description=f"Evidence for {cfg.model_name} v{reg.challenger}"
        )
        run.summary["status"] = "awaiting_approval"
        run.client.set_tag(run.run_id, "slimflow.status", "awaiting_approval")
        approval = wait_for_approval(cfg.approval, cfg.model_name, reg.challenger, evidence=evidence)
        run.summary["status"] = "running"
    else:
        approval = {
            "decision": "auto",
            "reviewer": "",
            "comment": "approval.required is false",
            "time": _now(),
        }
    out.approval = approval

    client = tracking.client(run.ctx.tracking_uri)
    record_approval(client, cfg.model_name, reg.challenger, approval)  # whatever the answer (rejections too)
    run.client.set_tag(run.run_id, "slimflow.approval", approval["decision"])
    if approval["decision"] in ("approved", "auto"):
        prom = run.stage("promote", promote_champion, cfg, reg.challenger, approval, reg.champion_at_decision)
        if prom.refused:  # another run promoted or rolled back since this decision: nothing moved
            out.refused = prom.refused
            return out
        out.champion = prom.champion
        out.previous = prom.previous
        # from here on the registry has changed: a later failure must not report "not promoted"
        run.summary["champion_moved"] = {"model_name": cfg.model_name, "champion": prom.champion}
        if cfg.deploy is not None:
            out.deployment = run.step(
                "deploy",
                deploy,
                cfg.model_name,
                run.ctx.tracking_uri,
                str(run.workdir),
                pipeline_cfg.tracking.experiment,
                host=cfg.deploy.host,
                port=cfg.deploy.port,
                server=cfg.deploy.server,
            )

    return out
