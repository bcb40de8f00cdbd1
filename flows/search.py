"""The candidate search, orchestrated: export each source, build each candidate (in parallel waves),
evaluate their test accuracy (in parallel), measure their latency (one at a time: concurrent
benchmarks would measure each other), then choose. Logs everything to MLflow: a nested
``optimize`` run with one child run per candidate, the candidate table and the Pareto plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slimflow.flows.bookkeeping import PipelineRun
from slimflow.models.config.loading import config_to_params
from slimflow.models.core.provenance import hardware_fingerprint
from slimflow.models.core.redact import redact
from slimflow.models.core.results import ModelResult
from slimflow.models.data.prepare import PreparedData
from slimflow.models.families import get_family
from slimflow.models.optimize import candidates as C
from slimflow.models.optimize.bench import flat_metrics, setting
from slimflow.models.optimize.config import DaskRunner, EarlyExitConfig, OptimizeConfig, ThreadsRunner
from slimflow.models.release.evidence import artifact_url
from slimflow.models.release.tracking import log_params
from slimflow.tasks.common import ModelRef
from slimflow.tasks.optimize import (
    benchmark_candidate,
    build_candidate,
    build_cascade_candidate,
    build_early_exit_candidate,
    evaluate_candidate,
    export_source,
)


def _reason(exc: BaseException) -> str:
    text = redact(str(exc)).strip()  # it becomes a tag and a summary line
    return text.splitlines()[0][:500] if text else type(exc).__name__


@contextmanager
def candidate_runner(cfg: ThreadsRunner | DaskRunner) -> Iterator[Any | None]:
    """None = the flow's own thread pool; else an entered DaskTaskRunner (local cluster or address)."""
    if cfg.kind == "threads":
        yield None
        return
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        runner = DaskTaskRunner(address=cfg.address)
    else:
        kwargs = {"n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker,
                  "processes": True, "dashboard_address": None}  # fmt: skip
        runner = DaskTaskRunner(cluster_kwargs=kwargs)
    with runner:
        yield runner


def candidate_search(
    run: PipelineRun,
    cfg: OptimizeConfig,
    data: PreparedData,
    made: dict[str, ModelResult],
    teacher_accuracy: float,
) -> C.SearchResult:
    specs, skipped = C.plan(cfg, list(made), data.task)
    refs = {name: ModelRef.of(result) for name, result in made.items()}
    quantizers = {q.variant: q for q in cfg.quantize}
    rows: dict[str, dict[str, Any]] = {
        s.name: {
            "name": s.name,
            "source": s.source,
            "variant": s.variant,
            "target": s.target,
            "runtime": s.runtime,
            "reference": s.reference,
            "status": "pending",
        }
        for s in specs
    }

    def fail(name: str, reason: str) -> None:
        rows[name].update(status="failed", reason=reason)

    def reject(name: str, reason: str) -> None:  # its check said no, as designed: not an error
        rows[name].update(status="rejected", reason=reason)

    # 1. export every (source, target) that has ONNX candidates
    pairs = sorted({(s.source, s.target) for s in specs if s.runtime == "onnxruntime"})
    exports = (
        run.fan_out(
            "export-onnx",
            {f"{src}/{tgt}": (export_source, (cfg.export, tgt, refs[src], data)) for src, tgt in pairs},
            parallel=cfg.max_parallel,
            outputs=("onnx_path",),
        )
        if pairs  # causal LMs build from the model folder: no optimum export to make
        else {}
    )

    # 2. build (quantize + agreement check)
    jobs = {}
    for s in specs:
        export = exports.get(f"{s.source}/{s.target}") if s.runtime == "onnxruntime" else None
        if isinstance(export, BaseException):
            fail(s.name, f"export failed: {_reason(export)}")
            continue
        spec = {"source": s.source, "variant": s.variant, "target": s.target, "runtime": s.runtime,
                "int8_preset": s.int8_preset}  # fmt: skip
        args = (spec, quantizers.get(s.variant), export, refs[s.source], data, cfg.agreement, cfg.export)
        jobs[s.name] = (build_candidate, args)
    with candidate_runner(cfg.runner) as runner:
        built = run.fan_out("build-candidates", jobs, parallel=cfg.max_parallel, runner=runner)
        ready = [n for n, r in rows.items() if r["status"] == "pending" and n in built]
        ready = [n for n in ready if not isinstance(built[n], BaseException) and "rejected" not in built[n]]
        evals = run.fan_out(
            "evaluate-candidates",
            {n: (evaluate_candidate, (n, built[n]["path"], built[n]["sha256"], data)) for n in ready},
            parallel=cfg.max_parallel,
            runner=runner,
        )
    for name, res in built.items():
        if isinstance(res, BaseException):
            fail(name, _reason(res))
        elif "rejected" in res:  # a verdict (cached: a rerun does not rebuild it)
            reject(name, res["rejected"])
        else:
            rows[name].update(build=res, path=res["path"], file_bytes=res["file_bytes"])

    # 3. test accuracy (computed above, in the same runner)
    for name, res in evals.items():
        if isinstance(res, BaseException):
            fail(name, f"evaluation failed: {_reason(res)}")
        else:
            rows[name]["test"] = {k: v for k, v in res.items() if k not in ("name", "path")}

    # 3b. cascades of two built and scored candidates (threshold fitted on validation only)
    built = dict(built)
    _cascades(run, cfg, data, rows, built, skipped)

    # 4. latency, one at a time (a generator's: generation speed)
    hw = hardware_fingerprint()
    family = get_family(data.task)
    gen = cfg.generation if family.generative else None
    ready = [n for n, r in rows.items() if r["status"] == "pending"]
    benches = run.fan_out(
        "benchmark-candidates",
        {
            n: (benchmark_candidate, (n, built[n]["path"], built[n]["sha256"], cfg.bench, hw, data, gen))
            for n in ready
        },
        parallel=1,
    )
    for name, res in benches.items():
        if isinstance(res, BaseException):
            fail(name, f"benchmark failed: {_reason(res)}")
        else:
            rows[name]["bench"] = {k: v for k, v in res.items() if k not in ("name", "path")}
            rows[name]["status"] = "ok"

    # 5. choose, plot, log
    table = list(rows.values())
    selection = C.select(table, teacher_accuracy, cfg, family.primary_metric, family.latency_label)
    out_dir = run.workdir / "runs" / (run.flow_run_id or run.run_id)
    png = (
        C.plot_pareto(table, selection, out_dir / "pareto.png")
        if any(r["status"] == "ok" for r in table)
        else None
    )
    result = C.SearchResult(
        candidates=table,
        skipped=[{"name": s.name, "reason": s.reason} for s in skipped],
        selection=selection,
        pareto_png=str(png) if png else None,
    )
    _log(run, cfg, exports, result)
    return result


def _cascades(
    run: PipelineRun,
    cfg: OptimizeConfig,
    data: PreparedData,
    rows: dict[str, dict[str, Any]],
    built: dict[str, Any],
    skipped: list[C.Skipped],
) -> None:
    """Add each configured cascade and early exit whose parts (an early exit: the candidate it is
    cut from) were built and scored as a pending candidate (then benchmarked like the others); one
    whose part is missing is listed as skipped."""
    plans: dict[str, tuple[list[str], Any, dict[str, Any]]] = {}
    for cc in cfg.cascades:
        f_src, _, target = cc.fast.split("/")
        row = {"source": f"{f_src}_then_{cc.fallback.split('/')[0]}", "variant": "cascade",
               "target": target, "runtime": "cascade", "reference": cc.fallback}  # fmt: skip
        plans[cc.name()] = ([cc.fast, cc.fallback], cc, row)
    for ee in cfg.early_exits:
        src, _, target = ee.candidate.split("/")
        row = {"source": src, "variant": "early_exit", "target": target, "runtime": "cascade",
               "reference": ee.candidate}  # fmt: skip
        plans[ee.name()] = ([ee.candidate], ee, row)
    jobs = {}
    for name, (parts, conf, _) in plans.items():
        missing = [p for p in parts if rows.get(p, {}).get("status") != "pending"]
        if missing:
            why = ", ".join(
                f"{p} ({rows[p]['status']})" if p in rows
                else f"{p} (itself a cascade or early exit: parts are built candidates)" if p in plans
                else f"{p} (not planned)"
                for p in missing
            )  # fmt: skip
            skipped.append(C.Skipped(name, f"its part(s) {why} are not measured candidates of this run"))
        elif isinstance(conf, EarlyExitConfig):
            jobs[name] = (build_early_exit_candidate, (name, conf, built[conf.candidate], data))
        else:
            jobs[name] = (build_cascade_candidate, (name, conf, built[conf.fast], built[conf.fallback], data))
    if not jobs:
        return
    made = run.fan_out("build-cascades", jobs, parallel=cfg.max_parallel)
    for name, res in made.items():
        row = {"name": name, **plans[name][2]}
        if isinstance(res, BaseException):
            rows[name] = {**row, "status": "failed", "reason": _reason(res)}
            continue
        built[name] = res
        rows[name] = {**row, "status": "pending", "build": res, "path": res["path"],
                      "file_bytes": res["file_bytes"], "test": res["test"]}  # fmt: skip


def _log(run: PipelineRun, cfg: OptimizeConfig, exports: dict[str, Any], result: C.SearchResult) -> None:
    """One nested 'optimize' run (config, exports, table, plot) with a child run per candidate."""
    import mlflow.entities as me

    client, exp = run.client, run.ctx.experiment_id
    now = int(time.time() * 1000)
    parent = client.create_run(
        exp, run_name="optimize", tags={"mlflow.parentRunId": run.run_id, "slimflow.stage": "optimize"}
    ).info.run_id
    log_params({f"optimize.{k}": v for k, v in config_to_params(cfg).items()}, parent)
    metrics: list[me.Metric] = []
    for key, exp_res in exports.items():
        tag = key.replace("/", ".")
        if isinstance(exp_res, BaseException):
            client.set_tag(parent, f"export.{tag}.error", _reason(exp_res))
            continue
        metrics += [
            me.Metric(f"export.{tag}.parity_max_abs_diff", exp_res["parity"]["max_abs_diff"], now, 0),
            me.Metric(f"export.{tag}.seconds", exp_res["export_seconds"], now, 0),
            me.Metric(f"export.{tag}.file_mb", exp_res["file_bytes"] / 2**20, now, 0),
        ]
        client.log_text(parent, json.dumps(exp_res, indent=2, default=str), f"exports/{tag}.json")
    sel = result.selection
    for r in result.candidates:
        child = client.create_run(
            exp,
            run_name=r["name"],
            tags={
                "mlflow.parentRunId": parent,
                "slimflow.stage": "candidate",
                "slimflow.candidate": r["name"],
                "slimflow.source": r["source"],
                "slimflow.variant": r["variant"],
                "slimflow.target": r["target"],
                "slimflow.runtime": r["runtime"],
                "slimflow.status": r["status"],
                "slimflow.pareto": str(bool(r.get("pareto"))),
                "slimflow.meets_bar": str(bool(r.get("meets_bar"))),
                "slimflow.best": str(r["name"] == sel["best"]),
                **({"slimflow.reason": r["reason"]} if r.get("reason") else {}),
                **({"slimflow.slower_than_fp32": "true"} if r.get("slower_than_reference") else {}),
                **{  # the ONNX Runtime settings each measured batch ran with (tuned or default)
                    f"slimflow.session.b{s['batch_size']}_{s['length']}": s["session"]
                    for s in (r.get("bench") or {}).get("settings", [])
                    if s.get("session")
                },
            },
        ).info.run_id
        m: dict[str, float] = {}
        if r.get("test"):  # every figure the family reports (accuracy, f1, ...; exact_match, perplexity)
            m.update({f"test_{k}": float(v) for k, v in r["test"].items() if isinstance(v, int | float)})
            m.pop("test_rows", None)
        if r.get("retention") is not None:
            m["accuracy_retention"] = r["retention"]
        if r.get("speedup_vs_reference"):
            m["speedup_vs_fp32"] = r["speedup_vs_reference"]
        if r.get("build", {}).get("agreement"):
            m["validation_agreement"] = r["build"]["agreement"]["agreement"]
        if r.get("bench"):
            m.update(flat_metrics(r["bench"], ""))
        if m:
            client.log_batch(child, metrics=[me.Metric(k, float(v), now, 0) for k, v in m.items()])
        client.log_text(child, json.dumps(r, indent=2, default=str), "candidate.json")
        # a candidate its own check rejected finished its job: only errors show as FAILED in MLflow
        client.set_terminated(child, "FAILED" if r["status"] == "failed" else "FINISHED")
    client.log_text(parent, json.dumps(result.model_dump(), indent=2, default=str), "candidates.json")
    client.log_text(parent, _markdown(result), "candidates.md")
    if result.pareto_png:
        client.log_artifact(parent, result.pareto_png)
        client.log_artifact(run.run_id, result.pareto_png)
    best = result.best
    if best:
        b = setting(best["bench"], sel["rank_batch_size"])
        metric = sel.get("metric", "accuracy")
        best_metrics = {
            f"best.test_{metric}": best["test"][metric],
            "best.p50_ms": b["p50_ms"],
            "best.p95_ms": b["p95_ms"],
            "best.file_mb": best["file_bytes"] / 2**20,
        }
        metrics += [me.Metric(k, v, now, 0) for k, v in best_metrics.items()]
        client.log_batch(run.run_id, metrics=[me.Metric(k, v, now, 0) for k, v in best_metrics.items()])
    client.log_batch(parent, metrics=metrics[:1000])
    client.set_tag(parent, "slimflow.best_candidate", sel["best"] or "none")
    client.set_tag(run.run_id, "slimflow.best_candidate", sel["best"] or "none")
    client.set_terminated(parent, "FINISHED")
    try:
        _plots(run, result)
    except Exception as e:  # noqa: BLE001 - a picture must not fail a run; say so in the summary
        run.summary.setdefault("warnings", []).append(f"plots: {type(e).__name__}: {_reason(e)}")
    # the same evidence on the Prefect flow run's page
    md = _markdown(result)
    if result.pareto_png:
        url = artifact_url(run.ctx.tracking_uri, run.run_id, Path(result.pareto_png).name)
        md += (
            f"\n![Pareto: accuracy against latency]({url})\n"
            if url
            else f"\nPareto plot: `{result.pareto_png}`\n"
        )
    run.artifact(
        "candidates", markdown=md, description="Candidate search: every variant, its figures, the best"
    )
    run.artifact("candidate-table", table=_table(result), description="Candidates (one row each)")


TRAINED = (("finetune-teacher", "teacher"), ("distill-student", "student"), ("compress", "recovery"))


def _plots(run: PipelineRun, result: C.SearchResult) -> None:
    """On the pipeline's MLflow run, under plots/: training curves, the best candidate's confusion
    matrix and per-class figures on the test split, the candidates' latency; and tables of all
    candidates and of the per-class figures (MLflow table artifacts, comparable across runs)."""
    import pandas as pd

    from slimflow.models.release import plots

    out = run.workdir / "runs" / (run.flow_run_id or run.run_id)
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for stage, prefix in TRAINED:
        rid = (run.summary["stages"].get(stage) or {}).get("mlflow_run_id")
        if not rid:
            continue
        # what tracking.epoch_logger logs each epoch (the family's own validation figures)
        logged = run.client.get_run(rid).data.metrics
        keys = [k for k in logged if k == "train_loss" or (k.startswith("val_") and not k.endswith("_best"))]
        histories[prefix] = {
            key: [(m.step, m.value) for m in run.client.get_metric_history(rid, key)] for key in keys
        }
    sel, best = result.selection, result.best
    pngs = [
        plots.training_curves(histories, out / "training_curves.png"),
        plots.latency(result.candidates, sel["rank_batch_size"], out / "latency.png", best=sel["best"]),
    ]
    report = (best or {}).get("test", {}).get("report")
    if report:
        pngs.append(plots.confusion(report, f"{best['name']}: test split", out / "confusion_matrix.png"))
        run.client.log_table(run.run_id, pd.DataFrame(report["per_class"]), "tables/per_class_test.json")
    for png in pngs:
        if png is not None:
            run.client.log_artifact(run.run_id, str(png), "plots")
    run.client.log_table(run.run_id, pd.DataFrame(_table(result)), "tables/candidates.json")


def _table(result: C.SearchResult) -> list[dict[str, Any]]:
    b = result.selection["rank_batch_size"]
    metric = result.selection.get("metric", "accuracy")
    rows = []
    for r in result.candidates:
        s = setting(r["bench"], b) if r["status"] == "ok" else None
        rows.append(
            {
                "candidate": r["name"],
                "status": r["status"],
                f"test_{metric}": round(r["test"][metric], 4) if r.get("test") else None,
                f"p50_ms_b{b}": round(s["p50_ms"], 3) if s else None,
                f"p95_ms_b{b}": round(s["p95_ms"], 3) if s else None,
                "size_mb": round(r["file_bytes"] / 2**20, 2) if r.get("file_bytes") else None,
                "pareto": bool(r.get("pareto")),
                "note": r.get("reason", ""),
            }
        )
    return rows


def _markdown(result: C.SearchResult) -> str:
    """The candidate table as Markdown, for reading in the MLflow UI."""
    sel = result.selection
    b = sel["rank_batch_size"]
    metric = sel.get("metric", "accuracy")
    short = {"accuracy": "test acc", "exact_match": "test EM"}.get(metric, f"test {metric}")
    lines = [
        f"Best: **{sel['best'] or 'none'}** — {sel['reason']}",
        "",
        f"| candidate | status | {short} | p50 b{b} ms (95% CI) | p95 b{b} ms | MB | Pareto | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.candidates:
        if r["status"] == "ok":
            s = setting(r["bench"], b)
            note = "slower than FP32" if r.get("slower_than_reference") else ""
            lines.append(
                f"| {r['name']} | ok | {r['test'][metric]:.4f} | {s['p50_ms']:.2f} "
                f"({s['p50_ci_low_ms']:.2f}–{s['p50_ci_high_ms']:.2f}) | {s['p95_ms']:.2f} | "
                f"{r['file_bytes'] / 2**20:.1f} | {'yes' if r.get('pareto') else ''} | {note} |"
            )
        else:
            lines.append(f"| {r['name']} | {r['status']} | | | | | | {r.get('reason', '')} |")
    for s in result.skipped:
        lines.append(f"| {s['name']} | skipped | | | | | | {s['reason']} |")
    return "\n".join(lines) + "\n"
