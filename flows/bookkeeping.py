"""Flow-side bookkeeping: the parent MLflow run, each stage's Prefect state, and the run summary.

Kept out of the flow body so that ``flows/pipeline.py`` reads as one line per stage.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from slimflow.models.config.loading import config_to_params
from slimflow.models.core.errors import DataError, SlimflowError, TrackingUnavailable
from slimflow.models.core.progress import fmt_seconds, write_line
from slimflow.models.core.provenance import code_version
from slimflow.models.core.redact import redact
from slimflow.models.core.results import StageResult
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from slimflow.tasks.common import StageContext


def interruption(exc: BaseException | None) -> str | None:
    """The signal's name when ``exc`` is the run being stopped from outside: Ctrl-C
    (KeyboardInterrupt), SIGTERM while a Prefect flow runs (its ``TerminationSignal``) or the
    CLI's SIGTERM exit (``SystemExit(143)``); None for any other exception."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return signal.Signals(exc.signal).name
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        try:
            return signal.Signals(exc.code - 128).name
        except ValueError:
            return None
    return None


def headline(metrics: dict[str, float]) -> str:
    """The figures worth a glance in a stage's end line: its test figures (or its first two)."""
    keys = [k for k in metrics if k.startswith("test_") and not k.endswith("loss")][:2] or list(metrics)[:2]
    return (": " + ", ".join(f"{k} {metrics[k]:.4g}" for k in keys)) if keys else ""


class PipelineRun:
    """Context manager around one flow run. Use ``stage()`` to call each task."""

    def __init__(self, cfg: PipelineConfig, summary_path: str | None = None, progress: bool | None = None):
        from prefect.runtime import flow_run

        self.cfg = cfg
        self.workdir = cfg.workdir_path()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.code = code_version()
        self.flow_run_id = str(flow_run.id) if flow_run.id else None
        uri, exp_id = tracking.configure(cfg.tracking, self.workdir)
        self.client = tracking.client(uri)
        # a run killed earlier (SIGKILL, crash) is still RUNNING in MLflow: close it as FAILED now
        self.reaped = tracking.reap_dead_runs(self.client, exp_id)
        name = cfg.tracking.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        owner = tracking.owner_tags(cfg.tracking.lease_s)
        tags = {**tracking.provenance_tags(), **owner, "slimflow.pipeline": cfg.name}
        if self.flow_run_id:
            tags["prefect.flow_run_id"] = self.flow_run_id
        self.run = self.client.create_run(exp_id, run_name=name, tags=tags)
        self.run_id = self.run.info.run_id
        tracking.log_params(config_to_params(cfg), self.run_id)
        resolved = tracking.redacted(cfg.model_dump(mode="json"))  # no credentials in artifacts
        self.client.log_text(self.run_id, json.dumps(resolved, indent=2), "config/resolved_config.json")
        import yaml

        self.client.log_text(
            self.run_id, yaml.safe_dump(resolved, sort_keys=False), "config/resolved_config.yaml"
        )
        self.ctx = StageContext(
            workdir=str(self.workdir),
            tracking_uri=uri,
            experiment_id=exp_id,
            parent_run_id=self.run_id,
            progress=progress,
        )
        self.summary_path = summary_path
        self.summary: dict[str, Any] = {
            "pipeline": cfg.name,
            "flow_run_id": self.flow_run_id,
            "mlflow_run_id": self.run_id,
            "mlflow_experiment_id": exp_id,
            "tracking_uri": redact(uri),
            "code_version": self.code,
            "status": "running",
            "reaped_runs": self.reaped,
            "stages": {},
            "decision": None,
        }
        self.t0 = time.perf_counter()
        self.lease = tracking.Lease(self.client, self.run_id, cfg.tracking.lease_s)  # the heartbeat

    # ------------------------------------------------------------------------------------ stages
    def stage(self, name: str, task: Any, *args: Any) -> Any:
        """Run a task (or take it from Prefect's cache) and record its state, time and figures.

        The task returns a ``StageResult``: its ``metrics()`` are logged, and the paths it declares
        as ``outputs`` must still exist for a cached result to be used; if one was deleted the
        stage runs again instead of handing on a dangling path.
        """
        args = (*args, self.code, self.ctx)  # every task ends with (code_version, ctx)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"status": "running"}
        self.summary["stages"][name] = entry
        self.say(f"{name}: started")
        state = task(*args, return_state=True)
        cached = state.is_completed() and state.name == "Cached"
        if cached and not _outputs_exist(state.result()):
            state = task.with_options(refresh_cache=True)(*args, return_state=True)
            cached = False
        entry["prefect_state"] = state.name
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        if not state.is_completed():
            entry["status"] = "failed"
            self.say(f"{name}: FAILED after {fmt_seconds(entry['seconds'])}")
            try:
                state.result()  # re-raises the task's exception
            except BaseException as e:
                entry["error"] = redact(str(e).splitlines()[0]) if str(e) else type(e).__name__
                raise
            raise RuntimeError(f"stage {name} ended in state {state.name}")
        result: StageResult = state.result()
        entry["status"] = "cached" if cached else "completed"
        entry["mlflow_run_id"] = result.mlflow_run_id
        metrics = result.metrics()
        entry["metrics"] = metrics
        self.say(f"{name}: {entry['status']} in {fmt_seconds(entry['seconds'])}{headline(metrics)}")
        entry["outputs"] = result.output_paths()
        self.client.set_tag(self.run_id, f"slimflow.stage.{name}", entry["status"])
        if result.mlflow_run_id:
            self.client.set_tag(self.run_id, f"slimflow.stage.{name}.run_id", result.mlflow_run_id)
        import mlflow.entities as me

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[me.Metric(f"{name}.{k}", v, now, 0) for k, v in metrics.items()][:1000]
        )
        return result

    def fan_out(
        self,
        name: str,
        jobs: dict[str, tuple[Any, tuple[Any, ...]]],
        *,
        parallel: int,
        outputs: tuple[str, ...] = ("path",),
        runner: Any | None = None,
    ) -> dict[str, dict[str, Any] | BaseException]:
        """Submit many tasks, ``parallel`` at a time; return each job's result or its exception.

        One job failing does not stop the others (a failed candidate is a result, not a crash).
        Cached results whose output paths are gone are computed again, as in ``stage()``.
        ``runner``: an entered Prefect task runner (e.g. Dask) to submit to instead of the flow's.
        """
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"status": "running", "jobs": len(jobs)}
        self.summary["stages"][name] = entry
        out: dict[str, dict[str, Any] | BaseException] = {}
        counts = {"completed": 0, "cached": 0, "failed": 0}
        items = list(jobs.items())
        self.say(f"{name}: started ({len(jobs)} jobs, {max(1, parallel)} at a time)")
        done = 0
        for i in range(0, len(items), max(1, parallel)):
            wave = items[i : i + max(1, parallel)]
            futures = {key: _submit(task, (*args, self.code, self.ctx), runner) for key, (task, args) in wave}
            for key, fut in futures.items():
                fut.wait()
                state = fut.state
                task, args = jobs[key]
                result = state.result(raise_on_failure=False) if state.is_completed() else None
                verdict = isinstance(result, dict) and "rejected" in result  # a cached verdict has no files
                if (
                    state.name == "Cached"
                    and not verdict
                    and not all(Path(_dig(result, k)).exists() for k in outputs)
                ):
                    state = task.with_options(refresh_cache=True)(
                        *args, self.code, self.ctx, return_state=True
                    )
                    result = state.result(raise_on_failure=False) if state.is_completed() else None
                if state.is_completed():
                    counts["cached" if state.name == "Cached" else "completed"] += 1
                    out[key] = result
                else:
                    counts["failed"] += 1
                    exc = state.result(raise_on_failure=False)
                    out[key] = exc if isinstance(exc, BaseException) else RuntimeError(f"state {state.name}")
                done += 1
                elapsed = time.perf_counter() - t0
                eta = f", ETA {fmt_seconds(elapsed / done * (len(jobs) - done))}" if done < len(jobs) else ""
                how = "failed" if isinstance(out[key], BaseException) else "ok"
                if isinstance(out[key], dict) and "rejected" in out[key]:
                    how = "rejected"
                self.say(f"{name}: {done}/{len(jobs)} done ({key}: {how}){eta}")
        entry.update(counts, seconds=round(time.perf_counter() - t0, 2))
        entry["status"] = "completed" if not counts["failed"] else "partial"
        self.say(
            f"{name}: {entry['status']} in {fmt_seconds(entry['seconds'])} "
            f"({counts['completed']} done, {counts['cached']} cached, {counts['failed']} failed)"
        )
        self.client.set_tag(self.run_id, f"slimflow.stage.{name}", entry["status"])
        return out

    def step(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a step that is not a cached task (a subflow such as the deploy) and record its status,
        time and error in the summary like a stage, so a failure names the step."""
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"status": "running"}
        self.summary["stages"][name] = entry
        self.say(f"{name}: started")
        try:
            out = fn(*args, **kwargs)
        except BaseException as e:
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 2))
            entry["error"] = redact(str(e).splitlines()[0]) if str(e) else type(e).__name__
            self.say(f"{name}: FAILED after {fmt_seconds(entry['seconds'])}")
            raise
        entry.update(status="completed", seconds=round(time.perf_counter() - t0, 2))
        self.say(f"{name}: done in {fmt_seconds(entry['seconds'])}")
        return out

    def artifact(self, name: str, markdown: str = "", table: list[dict[str, Any]] | None = None,
                 description: str = "") -> str | None:  # fmt: skip
        """A Prefect artifact on this flow run's page (markdown or a table); keyed by pipeline so the
        UI keeps its history. Never fails the run: a failure is a warning in the summary."""
        import re

        key = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{self.cfg.name}".lower()).strip("-")[:100]
        try:
            from prefect.artifacts import create_markdown_artifact, create_table_artifact

            if table is not None:
                create_table_artifact(table=table, key=key, description=description)
            else:
                create_markdown_artifact(markdown=markdown, key=key, description=description)
        except Exception as e:  # noqa: BLE001 - evidence elsewhere (MLflow) still exists
            self.summary.setdefault("warnings", []).append(f"Prefect artifact {key}: {redact(str(e))[:300]}")
            return None
        return key

    def say(self, text: str) -> None:
        """One progress line on stderr (a stage started / ended, with its time and headline figure);
        off when the run was started with progress=False."""
        if self.ctx.progress is not False:
            write_line(f"{time.strftime('%H:%M:%S')} slimflow {text}")

    # ----------------------------------------------------------------------------------- closing
    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.lease.stop()
        self.summary["seconds"] = round(time.perf_counter() - self.t0, 2)
        if exc is None:
            self.summary["status"] = "completed"
            status = "FINISHED"
        else:
            status = "FAILED"
            self.summary["status"] = "data_invalid" if isinstance(exc, DataError) else "failed"
            self.summary["error"] = redact(
                str(exc) if isinstance(exc, SlimflowError) else f"{type(exc).__name__}: {exc}"
            )
            stopped = interruption(exc)
            if stopped:  # the stage under way when the signal came did not fail on its own
                self.summary["interrupted"] = stopped
                for entry in self.summary["stages"].values():
                    if entry["status"] == "running":
                        entry["status"] = "interrupted"
            stage_states = self.summary["stages"].items()
            failed = next((k for k, v in stage_states if v["status"] in ("failed", "interrupted")), None)
            if stopped:
                then = f"the run was interrupted ({stopped})" + (f" during {failed}" if failed else "")
                self.summary["error"] = then
                reason = f"{then}; nothing after it ran"
            elif isinstance(exc, DataError):
                then = reason = "data validation failed: nothing was trained or registered"
            else:
                failed = failed or "outside any stage"
                then, reason = f"{failed} failed: {self.summary['error']}", f"stage failed: {failed}"
            moved = self.summary.get("champion_moved")  # the registry changed before the failure
            if moved:
                self.summary["decision"] = {
                    "outcome": "promoted",
                    "promoted": True,
                    "served": False,
                    "model_name": moved["model_name"],
                    "champion": moved["champion"],
                    "reason": f"{moved['model_name']} version {moved['champion']} became champion; "
                    f"then {then}",
                }
            else:
                self.summary["decision"] = {"outcome": "stopped", "promoted": False, "reason": reason}
            try:  # callers (the CLI) report what the run changed, not only that it failed
                exc.slimflow_summary = self.summary  # type: ignore[union-attr]
            except AttributeError:
                pass
        down = tracking.unreachable(exc, self.ctx.tracking_uri) if exc is not None else None
        # the MLflow run stays RUNNING on the server; once its lease lapses the next pipeline closes it
        if down:
            self.summary.update(status="tracking_unavailable", error=down)
            self.summary["decision"]["reason"] = down
            self._write_summary()
            raise TrackingUnavailable(down) from exc
        try:
            self.client.set_tag(self.run_id, "slimflow.status", self.summary["status"])
            self.client.log_text(self.run_id, json.dumps(self.summary, indent=2, default=str), "summary.json")
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            # closing the MLflow run failed: keep the local summary and say why; the run's own
            # exception, if it had one, stays the one reported
            self.summary["tracking_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            if exc is None:
                raise
        finally:
            self._write_summary()

    def _write_summary(self) -> None:
        text = json.dumps(self.summary, indent=2, default=str)
        runs = self.workdir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / f"{self.flow_run_id or self.run_id}.json").write_text(text, encoding="utf-8")
        if self.summary_path:
            p = Path(self.summary_path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")


def _submit(task: Any, args: tuple[Any, ...], runner: Any | None) -> Any:
    if runner is None:
        return task.submit(*args)
    import inspect

    return runner.submit(task, parameters=dict(inspect.signature(task.fn).bind(*args).arguments))


def results_dir(cfg: PipelineConfig) -> Path:
    """Where Prefect persists task results (and so its cache) for this workdir."""
    return cfg.workdir_path() / "prefect-results"


def _dig(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def _outputs_exist(result: StageResult) -> bool:
    return all(Path(p).exists() for p in result.output_paths().values())
