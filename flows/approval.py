"""Human approval of a challenger: the flow pauses with Prefect's typed input form.

Reviewers answer in the Prefect UI (the run shows an approve/reviewer/comment form) or from a
terminal with ``slimflow approve FLOW_RUN_ID --reviewer NAME [--reject] [--comment TEXT]``. A run
not answered within ``approval.timeout_s`` ends without promotion. Both need the flow to run
against a Prefect API the reviewer can reach (a Prefect server: PREFECT_API_URL), not the
temporary in-process one of a plain local run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect.input import RunInput

from slimflow.models.release.config import ApprovalConfig


class ApprovalInput(RunInput):
    """The form a reviewer fills in."""

    approve: bool = False
    reviewer: str
    comment: str = ""


def wait_for_approval(
    cfg: ApprovalConfig, model_name: str, version: str, poll_s: int = 5, evidence: str = ""
) -> dict[str, str]:
    """Block the flow until a reviewer answers or the timeout passes; return the outcome as tags.
    ``evidence`` (Markdown) is the form's description: what the reviewer decides on."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    form = ApprovalInput.with_initial_data(
        description=evidence
        or f"Promote **{model_name}** version **{version}** (alias `challenger`) to `champion`?",
        approve=False,
        reviewer="",
    )
    try:
        answer: Any = pause_flow_run(
            wait_for_input=form, timeout=cfg.timeout_s, poll_interval=max(1, min(poll_s, cfg.timeout_s))
        )
    except FlowPauseTimeout:
        return {
            "decision": "timeout",
            "reviewer": "",
            "comment": f"no answer within {cfg.timeout_s} s",
            "time": _now(),
        }
    reviewer = (answer.reviewer or "").strip()
    if not reviewer:
        return {
            "decision": "rejected",
            "reviewer": "",
            "comment": "answered without a reviewer name",
            "time": _now(),
        }
    return {
        "decision": "approved" if answer.approve else "rejected",
        "reviewer": reviewer,
        "comment": answer.comment,
        "time": _now(),
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resume(flow_run_id: str, approve: bool, reviewer: str, comment: str = "") -> None:
    """Answer a paused run (what `slimflow approve` calls)."""
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    resume_flow_run(
        UUID(flow_run_id), run_input={"approve": approve, "reviewer": reviewer, "comment": comment}
    )
