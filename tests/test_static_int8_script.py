"""benchmarks/static_int8.py runs every variant on a tiny exported classifier and reports each
one's agreement and latency (the figures themselves are for an idle machine, not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_reviews
from tests.models.optimize.test_export import exported, trained  # noqa: F401 (fixtures)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "static_int8.py"


def test_static_int8_script_reports_every_variant(exported, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    frame = make_reviews(600).rename(columns={"review": "text"})
    frame.to_parquet(data / "train.parquet")
    frame.iloc[:60].to_parquet(data / "validation.parquet")
    out = tmp_path / "static.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--export", str(exported[0]), "--data", str(data), "--rows", "60",
         "--threads", "1", "--seconds", "0.1", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    names = [x["variant"] for x in rows]
    assert names[0] == "FP32 (fused)" and rows[0]["agreement"] == 1.0
    assert {"static minmax, QDQ", "static minmax + sensitivity pass", "dynamic INT8 (per-channel)"} <= set(
        names
    )
    assert all(0 <= x["agreement"] <= 1 and x["p50_ms"] > 0 and x["mb"] > 0 for x in rows)
    assert "agreement bar" in r.stdout and "static entropy, 128 rows" in r.stdout
