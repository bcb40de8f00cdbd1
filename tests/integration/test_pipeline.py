"""The Prefect flow end to end: real packaged model and data, MLflow records, Prefect caching."""

import re
from pathlib import Path

import pytest

from slimflow.flows.pipeline import run_pipeline
from slimflow.models.pipeline_config import PipelineConfig
from slimflow.models.release import tracking
from tests.conftest import make_reviews

pytestmark = pytest.mark.integration


def runs_named(summary: dict, name: str) -> list:
    client = tracking.client(summary["tracking_uri"])
    return client.search_runs([summary["mlflow_experiment_id"]], f"attributes.run_name = '{name}'")


def test_real_model_and_data_slice_end_to_end(tmp_path):
    cfg = PipelineConfig.model_validate(
        {
            "name": "it-real",
            "workdir": str(tmp_path / "work"),
            "data": {
                "labels": ["fresh", "rotten"],
                "max_rows": 400,
                "validation": {"min_per_class": 50, "max_duplicate_fraction": 0.02},
            },
            "finetune": {
                "model": "packaged:all-MiniLM-L6-v2",
                "method": {"kind": "lora", "r": 4, "target_modules": ["query", "value"]},
                "train": {"epochs": 1, "batch_size": 32, "learning_rate": 2e-3, "max_length": 48},
            },
            "distill": {
                "student": {"kind": "layer_drop", "keep_layers": [0, 2, 4]},
                "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "max_length": 48},
            },
            "compress": {
                "steps": [{"kind": "prune_heads", "ratio": 0.3}, {"kind": "prune_ffn", "ratio": 0.3}],
                "calibration_examples": 64,
                "recovery": {
                    "train": {"epochs": 1, "batch_size": 32, "learning_rate": 5e-5, "max_length": 48}
                },
            },
            # the real pruned MiniLM (uneven heads per layer) through export, fusion and INT8
            "optimize": {
                "sources": ["compressed"],
                "quantize": [{"kind": "ort_int8_dynamic"}],
                "accuracy_bar": {"min_retention": None, "min_accuracy": 0.0},
                "bench": {
                    "warmup": 2,
                    "iterations": 10,
                    "min_iterations": 5,
                    "time_budget_s": 1,
                    "bootstrap": 200,
                    "threads": 2,
                    "isolate": False,
                    "pin_cores": False,
                    "tune": {"seconds": 0.1, "rounds": 1},
                },
            },  # fmt: skip
        }
    )
    s = run_pipeline(cfg, summary_path=str(tmp_path / "summary.json"), progress=False)
    assert s["status"] == "completed"
    assert [st["status"] for st in list(s["stages"].values())[:4]] == ["completed"] * 4
    assert (tmp_path / "summary.json").is_file() and s["flow_run_id"]

    client = tracking.client(s["tracking_uri"])
    parent = client.get_run(s["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["finetune.method.r"] == "4" and parent.data.params["data.max_rows"] == "400"
    for tag in ("slimflow.git_commit", "slimflow.hardware", "version.torch", "version.peft", "hw.cores"):
        assert parent.data.tags.get(tag), tag
    assert "finetune-teacher.test_accuracy" in parent.data.metrics
    children = client.search_runs(
        [s["mlflow_experiment_id"]], f"tags.mlflow.parentRunId = '{s['mlflow_run_id']}'"
    )
    assert {c.info.run_name for c in children} == {
        "validate-data",
        "finetune-teacher",
        "distill-student",
        "compress",
        "optimize",
    }
    assert all(c.info.status == "FINISHED" for c in children)

    data_run = next(c for c in children if c.info.run_name == "validate-data")
    assert data_run.inputs.dataset_inputs, "dataset input not logged"
    ds_tags = {t.key: t.value for t in data_run.inputs.dataset_inputs[0].tags}
    assert ds_tags["slimflow.data_fingerprint"] == data_run.data.tags["slimflow.data.fingerprint"]
    assert len(ds_tags["slimflow.data_fingerprint"]) == 64

    teacher_run = next(c for c in children if c.info.run_name == "finetune-teacher")
    m = teacher_run.data.metrics
    # one name per figure: the stage's run logs it plainly, the parent as finetune-teacher.<name>
    assert not [k for k in m if "." in k and not k.startswith("step")], sorted(m)
    assert parent.data.metrics["finetune-teacher.test_accuracy"] == m["test_accuracy"]
    assert 0.0 < m["trainable_share"] < 0.05
    assert m["merge_max_abs_diff"] < 1e-4
    assert 0.5 <= m["test_accuracy"] <= 1.0
    history = client.get_metric_history(teacher_run.info.run_id, "val_accuracy")
    assert [h.step for h in history] == [1]
    arts = {a.path for a in client.list_artifacts(teacher_run.info.run_id, "teacher_model")}
    assert "teacher_model/model.safetensors" in arts
    assert len(teacher_run.data.tags["slimflow.model.sha256"]) == 64  # checked after any download
    model_dir = Path(s["stages"]["finetune-teacher"]["outputs"]["model_dir"])
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not list((tmp_path / "work" / "models" / "teacher").glob(".*.tmp"))  # no partial outputs
    student_run = next(c for c in children if c.info.run_name == "distill-student")
    logged = [a.path for a in client.list_artifacts(student_run.info.run_id, "teacher_outputs")]
    assert len(logged) == 1 and logged[0].endswith(".npy")  # the teacher's soft targets, computed once
    sm = student_run.data.metrics
    assert sm["params"] < 0.8 * sm["teacher_params"]  # 3 of 6 layers kept
    assert sm["teacher_test_accuracy"] == pytest.approx(m["test_accuracy"])
    student_dir = Path(s["stages"]["distill-student"]["outputs"]["model_dir"])
    from tests.conftest import FAMILY

    assert FAMILY.load_trained(student_dir)[0].config.num_hidden_layers == 3
    cm = next(c for c in children if c.info.run_name == "compress").data.metrics
    assert cm["params_no_emb_after"] <= 0.8 * cm["params_no_emb_before"]
    assert cm["params_before"] == sm["params"]  # it pruned the student
    assert cm["step0.heads_removed"] == round(0.3 * 3 * 12)
    compressed = FAMILY.load_trained(s["stages"]["compress"]["outputs"]["model_dir"])[0]
    assert compressed.config.intermediate_size == 1536 - round(0.3 * 1536)
    rows = {r["name"]: r for r in s["search"]["candidates"]}
    assert set(rows) == {"compressed/onnx_fp32/cpu", "compressed/ort_int8_dynamic/cpu"}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    fp32, int8 = rows["compressed/onnx_fp32/cpu"], rows["compressed/ort_int8_dynamic/cpu"]
    assert fp32["build"]["parity"]["max_abs_diff"] <= 1e-4  # fused graph of unevenly pruned heads
    assert int8["build"]["agreement"]["agreement"] >= 0.97
    assert abs(int8["test"]["accuracy"] - fp32["test"]["accuracy"]) <= 0.03
    assert fp32["test"]["accuracy"] == pytest.approx(cm["test_accuracy"], abs=0.005)
    assert int8["file_bytes"] < 0.5 * fp32["file_bytes"]
    assert s["decision"]["outcome"] == "candidate_selected"
    assert client.search_registered_models() == []  # registration is a later stage


def _tiny_cfg(
    tmp_path: Path,
    data: Path,
    tiny_model_dir: Path,
    lr: float = 5e-3,
    temperature: float = 2.0,
    ffn: float = 0.25,
) -> PipelineConfig:
    train = {"epochs": 1, "batch_size": 32, "max_length": 32}
    return PipelineConfig.model_validate(
        {
            "name": "it-cache",
            "workdir": str(tmp_path / "work"),
            "data": {
                "source": str(data),
                "text_column": "review",
                "label_column": "sentiment",
                "labels": ["neg", "pos"],
                "validation": {"min_per_class": 10},
            },
            "finetune": {
                "model": str(tiny_model_dir),
                "method": {"kind": "lora", "r": 2, "target_modules": ["query", "value"]},
                "train": {**train, "learning_rate": lr},
            },
            "distill": {
                "student": {"kind": "layer_drop", "keep_layers": [1]},
                "temperature": temperature,
                "train": {**train, "learning_rate": 5e-3},
            },
            "compress": {
                "steps": [{"kind": "prune_ffn", "ratio": ffn}],
                "calibration_examples": 16,
                "recovery": {"train": {**train, "learning_rate": 1e-3}},
            },
        }
    )


def test_reruns_reuse_cached_stages_and_rerun_exactly_what_changed(tmp_path, tiny_model_dir, capfd):
    data = tmp_path / "reviews.csv"
    make_reviews(200).to_csv(data, index=False)
    cfg = _tiny_cfg(tmp_path, data, tiny_model_dir)

    first = run_pipeline(cfg, progress=None)  # stderr is not a terminal here: plain progress lines
    assert [v["status"] for v in first["stages"].values()] == ["completed"] * 4
    assert str(tmp_path) in first["tracking_uri"]  # its own store, whatever ran before in this process
    err = capfd.readouterr().err
    acc = first["stages"]["finetune-teacher"]["metrics"]["test_accuracy"]
    assert "slimflow finetune-teacher: started" in err
    assert re.search(rf"slimflow finetune-teacher: completed in \dm\d\ds: test_accuracy {acc:.4g}", err)
    assert re.search(r"teacher epoch 1/\d: train loss [\d.]+, validation loss [\d.]+, accuracy", err)
    assert "(done)" in err  # the plain progress line that closes each epoch's batches
    assert "newly initialized" not in err  # the new head is the point, not news

    second = run_pipeline(cfg, progress=False)
    assert "slimflow finetune-teacher:" not in capfd.readouterr().err  # progress off: no lines
    assert [v["status"] for v in second["stages"].values()] == ["cached"] * 4
    assert second["stages"]["finetune-teacher"]["prefect_state"] == "Cached"
    assert second["stages"]["finetune-teacher"]["metrics"] == first["stages"]["finetune-teacher"]["metrics"]
    assert len(runs_named(second, "finetune-teacher")) == 1  # no duplicate training
    parent = tracking.client(second["tracking_uri"]).get_run(second["mlflow_run_id"])
    assert parent.data.tags["slimflow.stage.finetune-teacher"] == "cached"
    assert (
        parent.data.tags["slimflow.stage.finetune-teacher.run_id"]
        == first["stages"]["finetune-teacher"]["mlflow_run_id"]
    )

    # a changed pruning config re-runs pruning only; a changed distillation config re-runs it and
    # pruning; a changed fine-tuning config re-runs fine-tuning and everything after it
    third = run_pipeline(_tiny_cfg(tmp_path, data, tiny_model_dir, ffn=0.5), progress=False)
    assert [v["status"] for v in third["stages"].values()] == ["cached", "cached", "cached", "completed"]
    third = run_pipeline(_tiny_cfg(tmp_path, data, tiny_model_dir, temperature=4.0), progress=False)
    assert [v["status"] for v in third["stages"].values()] == ["cached", "cached", "completed", "completed"]
    third = run_pipeline(_tiny_cfg(tmp_path, data, tiny_model_dir, lr=1e-3), progress=False)
    assert [v["status"] for v in third["stages"].values()] == [
        "cached",
        "completed",
        "completed",
        "completed",
    ]

    # changed data bytes (same path) re-run everything
    make_reviews(200, seed=5).to_csv(data, index=False)
    fourth = run_pipeline(cfg, progress=False)
    assert [v["status"] for v in fourth["stages"].values()] == ["completed"] * 4

    # a cached result whose model folder was deleted is recomputed, not handed on dangling
    import shutil

    shutil.rmtree(fourth_model := Path(fourth["stages"]["finetune-teacher"]["outputs"]["model_dir"]))
    fifth = run_pipeline(cfg, progress=False)
    assert fifth["stages"]["validate-data"]["status"] == "cached"
    assert fifth["stages"]["finetune-teacher"]["status"] == "completed"
    assert fifth["stages"]["distill-student"]["status"] == "cached"  # same teacher weights: same key
    assert (fourth_model / "model.safetensors").is_file()
