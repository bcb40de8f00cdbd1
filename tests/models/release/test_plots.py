"""The run's pictures are drawn from the figures (and nothing is drawn from nothing)."""

from __future__ import annotations

from slimflow.models.release import plots


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_training_curves_confusion_and_latency_are_written(tmp_path):
    hist = {
        "teacher": {"train_loss": [(1, 0.6), (2, 0.4)], "val_loss": [(1, 0.5), (2, 0.45)],
                    "val_accuracy": [(1, 0.8), (2, 0.84)], "val_f1": [(1, 0.79), (2, 0.83)]},
        "student": {"train_loss": [(1, 0.7)], "val_loss": [], "val_accuracy": [(1, 0.81)], "val_f1": []},
    }  # fmt: skip
    assert _png(plots.training_curves(hist, tmp_path / "curves.png"))
    assert plots.training_curves({"teacher": {"train_loss": []}}, tmp_path / "none.png") is None
    report = {
        "labels": ["fresh", "rotten"],
        "confusion": [[250, 50], [40, 260]],
        "per_class": [{"label": "fresh", "precision": 0.862, "recall": 0.833, "f1": 0.847, "support": 300},
                      {"label": "rotten", "precision": 0.839, "recall": 0.867, "f1": 0.852, "support": 300}],
    }  # fmt: skip
    assert _png(plots.confusion(report, "best: test split", tmp_path / "cm.png"))
    s = {"batch_size": 1, "length": "data", "p50_ms": 1.0, "p50_ci_low_ms": 0.9, "p50_ci_high_ms": 1.1,
         "p95_ms": 1.5, "p99_ms": 2.0}  # fmt: skip
    rows = [
        {"name": "a", "status": "ok", "bench": {"settings": [s]}},
        {"name": "b", "status": "ok", "bench": {"settings": [{**s, "p50_ms": 3.0, "p50_ci_low_ms": 2.8,
                                                              "p50_ci_high_ms": 3.2, "p95_ms": 4.0,
                                                              "p99_ms": 5.0, "reliable": False}]}},
        {"name": "c", "status": "failed"},
    ]  # fmt: skip
    assert _png(plots.latency(rows, 1, tmp_path / "lat.png", best="a"))
    assert plots.latency(rows, 32, tmp_path / "none.png") is None  # no setting at that batch size
