"""The candidate search inside the flow: tiny local models, real export/quantization/benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimflow.flows.pipeline import run_pipeline
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from tests.conftest import make_reviews

pytestmark = pytest.mark.integration

BENCH = {"warmup": 2, "iterations": 10, "min_iterations": 5, "time_budget_s": 1, "bootstrap": 200,
         "threads": 1, "isolate": False, "pin_cores": False,
         "tune": {"seconds": 0.05, "rounds": 1}}  # fmt: skip


def _cfg(tmp_path: Path, data: Path, model: Path, **optimize) -> PipelineConfig:
    train = {"epochs": 3, "batch_size": 16, "max_length": 32, "learning_rate": 5e-3}
    return PipelineConfig.model_validate(
        {
            "name": "it-search",
            "workdir": str(tmp_path / "work"),
            "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                     "labels": ["neg", "pos"], "validation": {"min_per_class": 10}},
            "finetune": {"model": str(model), "method": {"kind": "full"}, "train": train},
            "distill": {"student": {"kind": "layer_drop", "keep_layers": [1]}, "train": train},
            "optimize": {
                "targets": ["cpu", "cuda"],
                "quantize": [{"kind": "ort_int8_dynamic"}, {"kind": "torch_int8"}],
                "agreement": {"min_agreement": 0.9},
                "accuracy_bar": {"min_retention": 0.9},
                "bench": BENCH,
                **optimize,
            },
        }
    )  # fmt: skip


def test_search_builds_checks_measures_and_picks_a_candidate(tmp_path, tiny_model_dir, capfd):
    data = tmp_path / "reviews.csv"
    make_reviews(320).to_csv(data, index=False)
    s = run_pipeline(_cfg(tmp_path, data, tiny_model_dir, max_parallel=4), progress=False)
    assert s["status"] == "completed"
    # parallel candidate tasks against Prefect's temporary local server: no sqlite lock tracebacks
    printed = capfd.readouterr()
    assert "database is locked" not in printed.out + printed.err
    search = s["search"]
    rows = {r["name"]: r for r in search["candidates"]}
    expected = {f"{src}/{v}/cpu" for src in ("teacher", "student")
                for v in ("onnx_fp32", "torch_fp32", "ort_int8_dynamic", "torch_int8")}  # fmt: skip
    assert set(rows) == expected
    assert all(r["status"] == "ok" for r in rows.values()), {n: r.get("reason") for n, r in rows.items()}
    # the CUDA target is reported skipped with the reason, never run on the CPU instead
    skipped = {x["name"]: x["reason"] for x in search["skipped"]}
    assert len(skipped) == 8 and all("CUDAExecutionProvider" in why for why in skipped.values())
    assert not any(r["target"] == "cuda" for r in rows.values())

    for r in rows.values():
        assert (
            0 <= r["test"]["accuracy"] <= 1
            and r["test"]["rows"] == s["stages"]["validate-data"]["metrics"]["counts_test"]
        )
        st = r["bench"]["settings"]
        assert {(x["batch_size"], x["length"]) for x in st} == {
            (1, "data"),
            (1, 128),
            (32, "data"),
            (32, 128),
        }
        # ONNX candidates: runtime settings searched per batch size, saved with them, measured with
        if r["runtime"] == "onnxruntime":
            assert r["bench"]["runtime_tuning"]["."]["tuned"] is True
            saved = json.loads((Path(r["path"]) / "runtime.json").read_text(encoding="utf-8"))
            assert set(saved["by_batch"]) == {"1", "32"}
            assert all(x["session"].startswith("1 thread") for x in st)  # threads: 1 caps every choice
        else:
            assert r["bench"]["runtime_tuning"]["."]["tuned"] is False
    int8 = rows["student/ort_int8_dynamic/cpu"]
    assert int8["build"]["agreement"]["agreement"] >= 0.9 and int8["reference"] == "student/onnx_fp32/cpu"
    assert rows["student/onnx_fp32/cpu"]["build"]["parity"]["passed"]

    sel = search["selection"]
    assert sel["best"] in rows and rows[sel["best"]]["meets_bar"] and rows[sel["best"]]["pareto"]
    ok = [r for r in rows.values() if r["meets_bar"]]
    assert rows[sel["best"]]["bench"]["settings"][0]["p50_ms"] == min(
        r["bench"]["settings"][0]["p50_ms"] for r in ok
    )
    assert s["decision"]["outcome"] == "candidate_selected" and s["decision"]["promoted"] is False
    assert (Path(s["decision"]["model_dir"]) / "candidate.json").is_file()
    assert Path(search["pareto_png"]).stat().st_size > 10_000

    client = tracking.client(s["tracking_uri"])
    exp = [s["mlflow_experiment_id"]]
    opt = client.search_runs(
        exp, f"tags.mlflow.parentRunId = '{s['mlflow_run_id']}' and attributes.run_name = 'optimize'"
    )
    assert len(opt) == 1 and "ort_int8_dynamic" in opt[0].data.params["optimize.quantize"]
    assert opt[0].data.metrics["export.student.cpu.parity_max_abs_diff"] <= 1e-4
    cands = client.search_runs(exp, f"tags.mlflow.parentRunId = '{opt[0].info.run_id}'")
    assert {c.info.run_name for c in cands} == expected
    best_run = next(c for c in cands if c.info.run_name == sel["best"])
    assert best_run.data.tags["slimflow.best"] == "True"
    onnx_run = next(c for c in cands if c.info.run_name == "student/ort_int8_dynamic/cpu")
    assert onnx_run.data.tags["slimflow.session.b1_data"].startswith("1 thread, spinning")
    assert {"test_accuracy", "b1_data.p50_ms", "b1_data.p95_ci_high_ms", "b32_128.throughput_eps"} <= set(
        best_run.data.metrics
    )
    arts = {a.path for a in client.list_artifacts(s["mlflow_run_id"])}
    assert "pareto.png" in arts
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.data.tags["slimflow.best_candidate"] == sel["best"] and "best.p50_ms" in parent.data.metrics

    # pictures and tables on the pipeline's run: curves, confusion matrix of the best, latency
    plotted = {a.path for a in client.list_artifacts(s["mlflow_run_id"], "plots")}
    assert {"plots/training_curves.png", "plots/latency.png", "plots/confusion_matrix.png"} <= plotted
    tables = {a.path for a in client.list_artifacts(s["mlflow_run_id"], "tables")}
    assert {"tables/candidates.json", "tables/per_class_test.json"} <= tables
    assert rows[sel["best"]]["test"]["report"]["confusion"]  # per-class figures of every candidate

    # the flow run's page in the Prefect UI carries the candidate table (markdown and a table artifact)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as pc:
        arts = pc.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[s["flow_run_id"]])))
    by_type = {a.type: a for a in arts}
    assert {"markdown", "table"} <= set(by_type) and "warnings" not in s
    assert (
        f"Best: **{sel['best']}**" in by_type["markdown"].data and "Pareto plot" in by_type["markdown"].data
    )
    table = (
        json.loads(by_type["table"].data) if isinstance(by_type["table"].data, str) else by_type["table"].data
    )
    assert {row["candidate"] for row in table} == expected

    # a rerun takes every search task from the cache
    again = run_pipeline(_cfg(tmp_path, data, tiny_model_dir), progress=False)
    for stage in ("export-onnx", "build-candidates", "evaluate-candidates", "benchmark-candidates"):
        assert again["stages"][stage]["cached"] == again["stages"][stage]["jobs"] > 0, stage
    assert again["search"]["selection"]["best"] == sel["best"]

    # an export that fails its parity check fails its candidates, with the message; the rest go on
    strict = run_pipeline(_cfg(tmp_path, data, tiny_model_dir, export={"atol": 1e-12}), progress=False)
    assert strict["status"] == "completed"
    rows = {r["name"]: r for r in strict["search"]["candidates"]}
    for r in rows.values():
        if r["runtime"] == "onnxruntime":
            assert (
                r["status"] == "failed" and "export failed" in r["reason"] and "parity failed" in r["reason"]
            ), r
        else:
            assert r["status"] == "ok", r
    assert strict["search"]["selection"]["best"] in {n for n, r in rows.items() if r["runtime"] == "torch"}


def test_candidate_builds_and_evaluations_run_on_a_dask_cluster_with_the_same_results(
    tmp_path, tiny_model_dir
):
    """optimize.runner: dask (a local cluster of 2 worker processes, through prefect-dask) gives the
    same candidates, checks and accuracies as the in-process thread pool; the work really ran in
    the Dask workers (other pids)."""
    import os

    data = tmp_path / "reviews.csv"
    make_reviews(320).to_csv(data, index=False)
    slim = {"targets": ["cpu"], "quantize": [{"kind": "ort_int8_dynamic"}], "include_torch_fp32": False}
    threads = run_pipeline(_cfg(tmp_path / "t", data, tiny_model_dir, **slim), progress=False)
    dask = run_pipeline(
        _cfg(tmp_path / "d", data, tiny_model_dir, runner={"kind": "dask", "n_workers": 2}, **slim),
        progress=False,
    )
    assert threads["status"] == dask["status"] == "completed"
    rows_t = {r["name"]: r for r in threads["search"]["candidates"]}
    rows_d = {r["name"]: r for r in dask["search"]["candidates"]}
    assert set(rows_t) == set(rows_d) and len(rows_d) == 4
    for name, r in rows_d.items():
        assert r["status"] == "ok", r.get("reason")
        assert r["test"] == rows_t[name]["test"], name  # same accuracy, f1 and rows
        assert r["build"]["sha256"] == rows_t[name]["build"]["sha256"], name  # same bytes built
    pids = {r["build"]["worker"]["pid"] for r in rows_d.values()}
    assert os.getpid() not in pids, "the builds ran in the pipeline process, not on Dask"
    assert dask["stages"]["build-candidates"]["completed"] == 4


def test_a_rejected_candidate_is_a_cached_verdict(tmp_path, tiny_model_dir):
    """Same inputs -> same verdict, without rebuilding the candidate (failures used not to be cached)."""
    data = tmp_path / "reviews.csv"
    make_reviews(240).to_csv(data, index=False)
    bad = {"quantize": [{"kind": "ort_weight_int8", "keep_fp32": ["no_such_matmul"]}], "targets": ["cpu"]}
    first = run_pipeline(_cfg(tmp_path, data, tiny_model_dir, **bad), progress=False)
    again = run_pipeline(_cfg(tmp_path, data, tiny_model_dir, **bad), progress=False)
    for s in (first, again):
        rows = {r["name"]: r for r in s["search"]["candidates"]}
        rejected = [r for r in rows.values() if r["variant"] == "ort_weight_int8"]
        assert rejected and all(
            r["status"] == "rejected" and "no_such_matmul" in r["reason"] for r in rejected
        )
    build = again["stages"]["build-candidates"]
    assert build["cached"] == build["jobs"] > 0 and build["failed"] == 0
    # in MLflow a rejected candidate's run is FINISHED (its check did its job), tagged as rejected
    from slimflow.models.release import tracking

    client = tracking.client(again["tracking_uri"])
    runs = client.search_runs([again["mlflow_experiment_id"]], "tags.`slimflow.status` = 'rejected'")
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
