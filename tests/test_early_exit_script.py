"""benchmarks/early_exit.py on a tiny dynamically quantized classifier: it trains an exit head on the
frozen body, cuts the graph in two sessions whose chained logits equal the whole graph's, picks the
threshold on validation and times both routes (the figures are for an idle machine, not asserted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from slimflow.models.optimize.quantizers import apply_quantizer
from slimflow.models.optimize.quantizers.ort_int8_dynamic import OrtDynamicInt8Config
from tests.conftest import make_reviews
from tests.models.optimize.test_export import ctx, exported, trained  # noqa: F401 (fixtures)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "early_exit.py"


def test_early_exit_script_splits_the_graph_exactly_and_reports_both_routes(exported, trained, tmp_path):  # noqa: F811
    out, _ = exported
    cand = tmp_path / "cand"
    cand.mkdir()
    apply_quantizer(OrtDynamicInt8Config(), ctx(out, trained), cand)
    for f in out.iterdir():  # tokenizer and labels beside the graph, as in a candidate folder
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy(f, cand / f.name)
    data = tmp_path / "data"
    data.mkdir()
    frame = make_reviews(400).rename(columns={"review": "text", "sentiment": "label"})
    frame.iloc[:280].to_parquet(data / "train.parquet")
    frame.iloc[280:340].to_parquet(data / "validation.parquet")
    frame.iloc[340:].to_parquet(data / "test.parquet")
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps(
            {"stages": {"validate-data": {"outputs": {"data.paths.test": str(data / "test.parquet")}}}}
        )
    )
    report = tmp_path / "ee.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--summary", str(summary), "--candidate", str(cand), "--threads", "1",
         "--rounds", "1", "--timed-texts", "20", "--epochs", "3", "--out", str(report)],
        capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["layers"] == 2 and [e["exit_after_layer"] for e in got["exits"]] == [0]
    e = got["exits"][0]
    assert e["split_max_abs_diff"] < 1e-4  # B(A(x)) and the graph's own exit head agree with the whole
    assert 0.0 <= e["test_escalation"] <= 1.0 and 0.0 <= e["test_accuracy"] <= 1.0
    assert e["validation"]["rows"] == 60 and 0.0 <= e["threshold"] <= 1.0
    assert e["timing"]["whole"]["iterations"] == 20 and e["timing"]["early_exit"]["p50_ms"] > 0
    assert "exit after 1 of 2 layers (--exit-after 0)" in r.stdout and "b1 p50 ms" in r.stdout
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--summary", str(summary), "--candidate", str(cand),
         "--exit-after", "1"],
        capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=600,
    )  # fmt: skip
    assert bad.returncode != 0 and "exits go after 0..0" in bad.stderr  # the last layer has no exit
