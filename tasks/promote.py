"""Tasks of the promotion stage: judge and register candidates, then move the champion alias.

Registry writes are never cached (the registry is the state) and are idempotent on their own: a
candidate already registered (same model file sha256) reuses its version instead of adding one.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slimflow.models.core.redact import redact
from slimflow.models.core.results import StageResult
from slimflow.models.release import tracking
from slimflow.models.release.config import PromoteConfig
from slimflow.models.release.gates import decide
from slimflow.models.release.model_card import model_card
from slimflow.models.release.registry import (
    CHALLENGER,
    CHAMPION,
    ChampionChanged,
    alias_version,
    promote,
    register_candidate,
    set_alias,
)
from slimflow.tasks.common import StageContext, transient_only
from slimflow.tasks.locks import registry_lock


class RegisterResult(StageResult):
    decision: dict[str, Any]  # release.gates.Decision, as a dict
    versions: dict[str, str]  # candidate name -> registered version
    challenger: str | None
    winner: str | None
    champion_at_decision: str | None = None  # the promotion is checked-and-set against it


class PromoteResult(StageResult):
    champion: str | None
    previous: str | None
    model_name: str
    refused: str = ""  # the champion changed since the decision: nothing moved (a verdict, not a crash)


class PromotionResult(StageResult):
    """What the promotion stage did: versions registered, the challenger, the review, the champion."""

    model_name: str
    registered: dict[str, str]
    challenger: str | None
    winner: str | None
    reason: str
    best_effort: str | None
    failed_gates: list[str]
    approval: dict[str, str] | None = None
    champion: str | None = None
    previous: str | None = None
    refused: str | None = None  # why the promotion moved nothing although approved (champion changed)
    deployment: dict[str, Any] | None = None


REGISTRY_TASK = {
    "cache_policy": NO_CACHE,
    "retries": 1,
    "retry_delay_seconds": 5,
    "retry_condition_fn": transient_only,
}


def _existing_version(client: Any, model_name: str, sha256: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(
            f"name = '{model_name}' and tag.`slimflow.candidate.sha256` = '{sha256}'"
        )
    except MlflowException:
        return None
    return str(max(int(v.version) for v in found)) if found else None


def _figure_tags(row: dict[str, Any], batch: int) -> dict[str, str]:
    """Every test figure (``slimflow.test_accuracy``, ``.test_exact_match``, ``.test_perplexity``...)
    and a generator's speed at the gated batch size, so a later review compares against them."""
    tags = {f"slimflow.test_{k}": f"{v:.6f}" for k, v in row["test"].items() if isinstance(v, float)}
    for s in (row.get("bench") or {}).get("settings", []):
        if s.get("batch_size") == batch and "decode_tokens_per_s" in s:
            tags["slimflow.decode_tokens_per_s"] = f"{s['decode_tokens_per_s']:.3f}"
            tags["slimflow.ttft_p50_ms"] = f"{s['ttft_p50_ms']:.3f}"
    return tags


@task(name="register-candidates", tags=["registry"], **REGISTRY_TASK)
def register_candidates(
    cfg: PromoteConfig,
    candidates: list[dict[str, Any]],
    teacher_accuracy: float,
    context: dict[str, Any],
    code_version: str,
    ctx: StageContext,
) -> RegisterResult:
    """Judge every measured candidate; register those that pass; point 'challenger' at the winner."""
    import mlflow

    metric = str(context.get("metric") or "accuracy")
    decision = decide(candidates, cfg.gates, teacher_accuracy, metric, context.get("teacher_test"))
    client = tracking.client(ctx.tracking_uri)
    tracking.use(ctx.tracking_uri)
    rows = {r["name"]: r for r in candidates}
    with tracking.stage_run(ctx.parent_run_id, "register", ctx.experiment_id) as run:
        run_id = run.info.run_id
        tracking.log_params(
            {
                "promote.model_name": cfg.model_name,
                **{f"gates.{k}": v for k, v in cfg.gates.model_dump().items()},
            }
        )
        # one pipeline at a time: "find this candidate, else register it" must not interleave
        with registry_lock(cfg.model_name, ctx.tracking_uri) as lock:
            mlflow.set_tag("slimflow.registry_lock", lock)
            versions: dict[str, str] = {}
            for v in decision.verdicts:
                mlflow.set_tag(f"gates.{v.name}", "passed" if v.passed else "failed: " + ", ".join(v.failed))
                if not v.passed:
                    continue
                row = rows[v.name]
                sha = row["build"]["identity"]  # weights + how they run (torch FP32 and INT8 share weights)
                existing = _existing_version(client, cfg.model_name, sha)
                if existing:
                    versions[v.name] = existing
                    continue
                tags = {
                    "slimflow.candidate": v.name,
                    "slimflow.candidate.sha256": sha,
                    "slimflow.target": row["target"],
                    "slimflow.gates": json.dumps([g.__dict__ for g in v.gates]),
                    "slimflow.metric": metric,
                    **_figure_tags(row, cfg.gates.latency_batch_size),
                    "slimflow.p50_ms": f"{v.p50_ms:.4f}" if v.p50_ms is not None else "",
                    "slimflow.p95_upper_ms": f"{v.p95_upper_ms:.4f}" if v.p95_upper_ms is not None else "",
                    "slimflow.size_mb": f"{v.size_mb:.3f}",
                    "slimflow.parent_run_id": ctx.parent_run_id,
                    "slimflow.data_fingerprint": str(context.get("data_fingerprint", "")),
                    "slimflow.gx_result": str(context.get("gx", "")),
                    "slimflow.git_commit": str(context.get("git_commit", "")),
                }
                card = model_card(
                    row, v, {**context, "model_name": cfg.model_name, "run_id": ctx.parent_run_id}
                )
                versions[v.name] = register_candidate(client, run_id, cfg.model_name, row["path"], tags, card)
            challenger = versions.get(decision.winner) if decision.winner else None
            if challenger:
                set_alias(client, cfg.model_name, CHALLENGER, challenger)
            champion_then = alias_version(client, cfg.model_name, CHAMPION)
        mlflow.set_tags(
            {
                "slimflow.decision": "challenger" if challenger else "no_candidate_passes",
                "slimflow.decision.reason": decision.reason[:5000],
            }
        )
        tracking.log_json(decision.to_dict(), "decision.json")
        return RegisterResult(
            decision=decision.to_dict(),
            versions=versions,
            challenger=challenger,
            winner=decision.winner,
            champion_at_decision=champion_then,
            mlflow_run_id=run_id,
        )


@task(name="promote-champion", tags=["registry"], **REGISTRY_TASK)
def promote_champion(
    cfg: PromoteConfig,
    version: str,
    approval: dict[str, str],
    expected_champion: str | None,
    code_version: str,
    ctx: StageContext,
) -> PromoteResult:
    """'champion' -> ``version`` ('previous' -> the old champion), only if the champion is still
    ``expected_champion`` (the one the gates and the reviewer judged against). The approval is
    already on the version as tags (flows/promotion.py); it is an input here so the task run shows
    who approved."""

    client = tracking.client(ctx.tracking_uri)
    with registry_lock(cfg.model_name, ctx.tracking_uri):  # read champion -> set previous -> set champion
        try:
            old = promote(client, cfg.model_name, version, {}, expected_champion=expected_champion)
        except ChampionChanged as e:
            client.set_tag(ctx.parent_run_id, "slimflow.promotion_refused", redact(str(e))[:5000])
            return PromoteResult(champion=None, previous=None, model_name=cfg.model_name, refused=str(e))
    client.set_tag(ctx.parent_run_id, "slimflow.champion", f"{cfg.model_name}/{version}")
    return PromoteResult(champion=version, previous=old, model_name=cfg.model_name)
