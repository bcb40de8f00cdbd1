"""benchmarks/llm_compare.py with --rounds: every variant timed several times in turn, the median
round counts, and each round's speed-up is kept (on made-up benchmark results: the script measures)."""

import argparse
from pathlib import Path

import pytest

from tests.conftest import BENCHMARKS, load_benchmark_script


@pytest.fixture(scope="module")
def llm():
    return load_benchmark_script("llm_compare")


def speed(rate: float, ttft: float = 50.0) -> dict:
    s = {"batch_size": 1, "decode_tokens_per_s": rate, "decode_tokens_per_s_ci": [rate * 0.99, rate * 1.01],
         "ttft_p50_ms": ttft, "prefill_tokens_per_s": 640.0}  # fmt: skip
    return {"settings": [s], "peak_rss_mb": 900.0}


def row(name: str, kind: str, rates: list[float], em: float = 0.8, ppl: float = 100.0) -> dict:
    return {"variant": name, "kind": kind, "path": "/x", "size_mb": 100.0, "exact_match": em,
            "perplexity": ppl, "answers": ["fresh", "rotten"],
            "speed_rounds": [speed(r) for r in rates]}  # fmt: skip


def test_the_median_round_counts_and_is_a_real_round(llm) -> None:
    rounds = [speed(150.0, ttft=10), speed(180.0, ttft=20), speed(120.0, ttft=30)]
    chosen = llm.median_round(rounds, 1)
    assert chosen is rounds[0]  # 150 is the median; its own TTFT and CI come with it
    # an even count takes the lower of the middle two: the figure never flatters
    assert llm.median_round([speed(100.0), speed(200.0)], 1)["settings"][0]["decode_tokens_per_s"] == 100.0
    with pytest.raises(ValueError, match="no benchmark rounds"):
        llm.median_round([], 1)


def test_each_rounds_speed_up_pairs_runs_taken_close_in_time(llm) -> None:
    base, fast = (
        row("pytorch", "pytorch_fp32", [30.0, 20.0, 31.0]),
        row("int4", "genai", [180.0, 140.0, 150.0]),
    )
    for r in (base, fast):
        r["speed"] = llm.median_round(r["speed_rounds"], 1)
    ratio = llm.ratio(base, fast, 1)
    assert ratio["decode_speedup_rounds"] == pytest.approx([6.0, 7.0, 150.0 / 31.0])
    assert ratio["decode_speedup"] == pytest.approx(150.0 / 30.0)  # median round over median round


def test_the_table_lists_every_round(llm) -> None:
    rows = [row("pytorch", "pytorch_fp32", [30.0, 31.0]), row("int4", "genai", [180.0, 155.0])]
    for r in rows:
        r["speed"] = llm.median_round(r["speed_rounds"], 1)
    args = argparse.Namespace(batch=[1], prompt_tokens=64, new_tokens=64)
    report = llm._report(rows, args, Path("/m"))
    text = llm._table(report)
    assert "| int4 | 100 |" in text and "155.0 [" in text  # the lower middle round is shown
    assert "int4: 180.0, 155.0 (6.00x, 5.00x)" in text
    # one round: nothing more printed
    single = [row("pytorch", "pytorch_fp32", [30.0]), row("int4", "genai", [150.0])]
    for r in single:
        r["speed"] = llm.median_round(r["speed_rounds"], 1)
    assert "by round" not in llm._table(llm._report(single, args, Path("/m")))


def test_rounds_below_one_are_refused_before_any_work(tmp_path) -> None:
    import subprocess
    import sys

    for script in (BENCHMARKS / "llm_compare.py", BENCHMARKS / "compare.py"):
        cmd = [sys.executable, str(script), "--rounds", "0", "--summary", str(tmp_path / "none")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2 and "--rounds must be at least 1 (got 0)" in proc.stderr
