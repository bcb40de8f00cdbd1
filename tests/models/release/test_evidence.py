"""The approval form shows the reviewer the figures, the gates, the data check and the links."""

from __future__ import annotations

from slimflow.models.release.evidence import champion_figures, links, review_evidence

ROW = {
    "name": "student-pruned/cpu/ort_int8_dynamic",
    "source": "student-pruned",
    "variant": "ort_int8_dynamic",
    "target": "cpu",
    "runtime": "onnxruntime",
    "test": {"accuracy": 0.8312, "f1": 0.83, "rows": 600},
    "bench": {
        "settings": [
            {"batch_size": 32, "length": "data", "p50_ms": 40.0, "p50_ci_low_ms": 39.0,
             "p50_ci_high_ms": 41.0, "p95_ms": 45.0, "p95_ci_low_ms": 44.0, "p95_ci_high_ms": 47.0},
            {"batch_size": 1, "length": "data", "p50_ms": 1.234, "p50_ci_low_ms": 1.2,
             "p50_ci_high_ms": 1.25, "p95_ms": 1.61, "p95_ci_low_ms": 1.5, "p95_ci_high_ms": 1.72},
        ]
    },
}  # fmt: skip
VERDICT = {
    "name": ROW["name"],
    "passed": True,
    "size_mb": 22.9,
    "gates": [
        {"gate": "min_retention", "value": 0.9843, "threshold": 0.95, "passed": True, "unreliable": ""},
        {"gate": "max_p95_ms", "value": 1.72, "threshold": 20.0, "passed": True, "unreliable": ""},
        {"gate": "max_size_mb", "value": 22.9, "threshold": 100.0, "passed": True, "unreliable": ""},
    ],
}
CONTEXT = {
    "data_source": "packaged:rotten_tomatoes",
    "data_fingerprint": "0123456789abcdef0123",
    "counts": {"train": 2100, "validation": 300, "test": 600},
    "gx": "passed (validate-data run abc)",
}


def test_the_form_puts_challenger_champion_and_teacher_side_by_side_with_every_gate():
    champion = champion_figures(
        {"slimflow.test_accuracy": "0.8200", "slimflow.p50_ms": "2.5", "slimflow.p95_upper_ms": "3.1",
         "slimflow.size_mb": "45.0"}, "3"
    )  # fmt: skip
    where = links("http://127.0.0.1:5000", "1", "run123", "reviews clf", "4")
    md = review_evidence("reviews clf", "4", ROW, VERDICT, 0.8444, 1, champion, CONTEXT, where)
    assert "Promote **reviews clf** version **4**" in md
    assert "| | challenger v4 | champion v3 | teacher |" in md
    assert "| test accuracy | 0.8312 | 0.8200 | 0.8444 |" in md
    assert "| retention of teacher | 98.44% | 97.11% | 100% |" in md
    # the gated batch size (1), with its CI: not the batch-32 figures
    assert "| p50 latency, batch 1 | 1.23 ms [95% CI 1.20, 1.25] | 2.50 ms |" in md
    assert "| p95 latency, batch 1 | 1.61 ms [95% CI 1.50, 1.72] | upper 3.10 ms |" in md
    assert "| size | 22.9 MB | 45.0 MB |" in md
    assert "| min_retention | >= 0.95 | 0.9843 | pass |" in md
    assert "| max_p95_ms | <= 20 | 1.72 | pass |" in md
    assert "| max_size_mb | <= 100 | 22.9 | pass |" in md
    assert "train 2100, validation 300, test 600; Great Expectations: passed (validate-data run abc)" in md
    assert "[MLflow run](http://127.0.0.1:5000/#/experiments/1/runs/run123)" in md
    assert "(http://127.0.0.1:5000/#/models/reviews%20clf/versions/4)" in md


def test_first_promotion_unreliable_latency_and_local_store_are_said_plainly():
    verdict = {**VERDICT, "gates": [{**VERDICT["gates"][1], "passed": True, "unreliable": "others used 40%"}]}
    row = {**ROW, "bench": {"settings": [{**ROW["bench"]["settings"][1], "reliable": False,
                                          "unreliable_reason": "others used 40% of the CPU"}]}}  # fmt: skip
    where = links("sqlite:////tmp/w/mlflow.db", "1", "run123", "clf", "1")
    md = review_evidence("clf", "1", row, verdict, 0.8444, 1, None, CONTEXT, where)
    assert "champion (none yet)" in md and "| test accuracy | 0.8312 | – | 0.8444 |" in md
    assert "| max_p95_ms | <= 20 | 1.72 | not judged (unreliable) |" in md
    assert "Latency measurement marked unreliable: others used 40% of the CPU." in md
    assert "MLflow run: run `run123` (open with `slimflow ui`)" in md


def test_links_never_carry_credentials():
    where = links("https://bob:hunter2@mlflow.example:8443/", "7", "r1", "m", "2")
    assert where["run"] == "https://mlflow.example:8443/#/experiments/7/runs/r1"
    assert "hunter2" not in str(where) and "bob" not in str(where)
