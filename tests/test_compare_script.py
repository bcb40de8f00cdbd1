"""benchmarks/compare.py picks the teacher's best quantized form from a run summary and computes its
ratios (the script itself measures; these are its choices, on made-up candidate rows)."""

import pytest

from tests.conftest import load_benchmark_script


@pytest.fixture(scope="module")
def compare():
    return load_benchmark_script("compare")


def row(source, variant, acc, p50, status="ok"):
    bench = {"settings": [{"batch_size": 1, "length": "data", "p50_ms": p50}]}
    return {"source": source, "variant": variant, "status": status, "test": {"accuracy": acc}, "bench": bench}


def test_the_fastest_quantized_teacher_within_the_bar_is_chosen(compare):
    rows = [
        row("teacher", "torch_fp32", 0.80, 90.0),
        row("teacher", "onnx_fp32", 0.80, 70.0),
        row("teacher", "ort_int8_dynamic", 0.70, 20.0),  # fastest, but loses too much
        row("teacher", "ort_weight_int8", 0.80, 40.0),
        row("teacher", "ort_weight_int4", 0.79, 30.0),  # 0.79 >= 0.98 * 0.80
        row("teacher", "ort_int8_static", 0.80, 10.0, status="failed"),
        row("student", "ort_int8_dynamic", 0.80, 2.0),  # not the teacher
        {**row("teacher", "early_exit", 0.80, 1.0), "runtime": "cascade"},  # cut from it, not quantized
    ]
    assert compare.teacher_quantized(rows, 0.98)["variant"] == "ort_weight_int4"
    assert compare.teacher_quantized(rows, 0.999)["variant"] == "ort_weight_int8"
    # none within the bar: the most accurate quantized one
    assert compare.teacher_quantized(rows[:3], 0.98)["variant"] == "ort_int8_dynamic"
    assert compare.teacher_quantized([r for r in rows if r["source"] == "student"], 0.98) is None


def test_ratios_compare_the_fast_model_with_the_slow_one(compare):
    slow = {"bench": {"file_bytes": 400}, "test": {"accuracy": 0.8}}
    fast = {"bench": {"file_bytes": 100}, "test": {"accuracy": 0.78}}
    b1s = {"p50_ms": 40.0, "p50_ci_low_ms": 38.0, "p50_ci_high_ms": 42.0}
    b1f = {"p50_ms": 4.0, "p50_ci_low_ms": 3.5, "p50_ci_high_ms": 5.0}
    b32 = {"s": {"throughput_eps": 50.0}, "f": {"throughput_eps": 400.0}}
    r = compare.compare_rows(slow, fast, b1s, b1f, b32, "s", "f")
    assert r == pytest.approx(
        {
            "b1_p50_speedup": 10.0,
            "b1_p50_speedup_ci_low": 38.0 / 5.0,
            "b32_throughput_ratio": 8.0,
            "size_ratio": 4.0,
            "accuracy_ratio": 0.78 / 0.8,
        }
    )


def test_the_best_candidate_comes_from_the_search_whether_or_not_it_was_promoted(compare):
    search = {
        "selection": {"best": "student/ort_int8_dynamic/cpu"},
        "candidates": [
            {"name": "student/onnx_fp32/cpu", "path": "/c/a"},
            {"name": "student/ort_int8_dynamic/cpu", "path": "/c/b"},
        ],
    }
    promoted = {"search": search, "decision": {"outcome": "promoted", "champion": "2"}}
    assert compare.selected_candidate(promoted) == "/c/b"
    assert compare.selected_candidate({"decision": {"model_dir": "/c/x"}}) == "/c/x"  # no search rows
    assert compare.selected_candidate({}) is None


def test_the_promoted_candidate_comes_before_the_search_best(compare):
    search = {
        "selection": {"best": "teacher/genai_int4/cpu"},
        "candidates": [
            {"name": "teacher/genai_int4/cpu", "path": "/c/int4"},
            {"name": "teacher/genai_int8/cpu", "path": "/c/int8"},
        ],
    }
    summary = {"search": search, "promotion": {"winner": "teacher/genai_int8/cpu"}}
    assert compare.selected_candidate(summary) == "/c/int8"
    summary["promotion"]["winner"] = None  # nothing passed the gates: the search's best
    assert compare.selected_candidate(summary) == "/c/int4"


def test_the_most_accurate_measured_cascade_is_compared(compare):
    def casc(name, acc, p50, status="ok"):
        r = row("student_then_teacher", "cascade", acc, p50, status)
        return {**r, "name": name, "runtime": "cascade"}

    rows = [casc("a", 0.84, 2.0), casc("b", 0.845, 3.0), casc("c", 0.845, 2.5), casc("d", 0.9, 1.0, "failed"),
            {**row("teacher", "ort_int8_dynamic", 0.99, 1.0), "runtime": "onnxruntime"}]  # fmt: skip
    assert compare.best_cascade(rows)["name"] == "c"
    assert compare.best_cascade(rows[-2:]) is None
    # early exits are compared on their own (with the whole model they are cut from), not as cascades
    exits = [{**row("compressed", "early_exit", 0.99, 0.5), "name": "e", "runtime": "cascade"},
             {**row("compressed", "early_exit", 0.95, 0.4), "name": "f", "runtime": "cascade"}]  # fmt: skip
    assert compare.best_cascade(rows + exits)["name"] == "c"
    assert compare.best_cascade(rows + exits, early_exit=True)["name"] == "e"
    assert compare.best_cascade(rows, early_exit=True) is None


def test_the_untuned_row_is_measured_only_when_tuning_chose_other_settings(compare, tmp_path):
    import json

    model = tmp_path / "model"
    model.mkdir()
    assert not compare.tuned_away_from_default(model)  # no runtime.json
    default = {"threads": 2, "spinning": True, "graph_level": "all"}
    saved = {"hardware": "h", "thread_budget": 2, "by_batch": {"1": default, "32": default}, "trials": []}
    (model / "runtime.json").write_text(json.dumps(saved))
    assert not compare.tuned_away_from_default(model)
    saved["by_batch"]["1"] = {**default, "threads": 1}
    (model / "runtime.json").write_text(json.dumps(saved))
    assert compare.tuned_away_from_default(model)
    saved["by_batch"]["1"] = {**default, "disabled_fusions": ["SkipLayerNormFusion"]}
    (model / "runtime.json").write_text(json.dumps(saved))
    assert compare.tuned_away_from_default(model)
    saved["by_batch"]["1"] = {**default, "denormal_as_zero": True}
    (model / "runtime.json").write_text(json.dumps(saved))
    assert compare.tuned_away_from_default(model)
    saved["by_batch"]["1"] = {**default, "disabled_fusions": [], "denormal_as_zero": False}  # newer files
    (model / "runtime.json").write_text(json.dumps(saved))
    assert not compare.tuned_away_from_default(model)
    copy = compare.untuned_copy(model, tmp_path / "copy")
    assert not (copy / "runtime.json").exists()
