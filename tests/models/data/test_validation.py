"""The Great Expectations gate: good data passes; each kind of bad data fails by name."""

import json

import pandas as pd
import pytest

from slimflow.models.core.errors import DataValidationError
from slimflow.models.data import validation as V
from slimflow.models.data.prepare import prepare
from tests.conftest import data_cfg, make_reviews


def run_prepare(tmp_path, df: pd.DataFrame, **cfg_kw):
    p = tmp_path / "in.csv"
    df.to_csv(p, index=False)
    cfg = data_cfg(p, **cfg_kw)
    return prepare(cfg, tmp_path / "out", "sha", tmp_path / "report")


def failed_titles(exc: DataValidationError) -> list[str]:
    return [o.title for o in exc.report.failures()]


def test_good_data_passes_and_writes_the_report(tmp_path, reviews):
    prepared, report = run_prepare(tmp_path, reviews, validation={"min_per_class": 10})
    assert report.success and not report.failures()
    assert report.suites_run == ["schema", "content", "split"]
    assert len(report.outcomes) >= 12
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()
    saved = json.loads((tmp_path / "report" / "validation_result.json").read_text())
    assert saved["summary"]["success"] is True
    assert set(saved["great_expectations"]) == {"schema", "content", "split"}
    assert sum(prepared.counts.values()) == len(reviews)
    assert all((tmp_path / "out" / f"{s}.parquet").is_file() for s in ("train", "validation", "test"))


def _bad(reviews: pd.DataFrame, kind: str) -> pd.DataFrame:
    df = reviews.copy()
    if kind == "null_text":
        df.loc[3, "review"] = None
    elif kind == "blank_text":
        df.loc[3, "review"] = "   "
    elif kind == "label_outside_set":
        df.loc[[3, 5], "sentiment"] = "meh"
    elif kind == "text_too_long":
        df.loc[3, "review"] = "word " * 500
    elif kind == "conflicting_labels":
        df.loc[3, "review"] = df.loc[4, "review"]  # same text, rows 3 and 4 carry different labels
    elif kind == "too_many_repeats":
        df.loc[0:40, "review"] = df.loc[0, "review"]
        df.loc[0:40, "sentiment"] = df.loc[0, "sentiment"]
    elif kind == "too_few_per_class":
        df = pd.concat([df[df.sentiment == "pos"], df[df.sentiment == "neg"].head(5)])
    elif kind == "missing_column":
        df = df.rename(columns={"sentiment": "stars"})
    return df


@pytest.mark.parametrize(
    ("kind", "expected_title"),
    [
        ("null_text", "text is not null"),
        ("blank_text", "text is not blank"),
        ("label_outside_set", "labels within"),
        ("text_too_long", "text length within"),
        ("conflicting_labels", "no text carries two different labels"),
        ("too_many_repeats", "repeated texts at most"),
        ("too_few_per_class", "distinct rows per class"),
        ("missing_column", "required label column is present"),
    ],
)
def test_each_kind_of_bad_data_is_refused_by_name(tmp_path, reviews, kind, expected_title):
    with pytest.raises(DataValidationError) as e:
        run_prepare(tmp_path, _bad(reviews, kind), validation={"min_per_class": 20, "max_chars": 1000})
    titles = failed_titles(e.value)
    assert any(expected_title in t for t in titles), titles
    assert expected_title.split(" (")[0] in str(e.value)  # the message names it too
    assert not (tmp_path / "out" / "train.parquet").exists()  # nothing handed to training
    assert (tmp_path / "report" / "validation_result.json").is_file()  # report kept for the failure


def test_failure_message_gives_counts(tmp_path, reviews):
    df = reviews.copy()
    df.loc[[1, 2, 3], "review"] = None
    headline = r"^data validation failed: 1 of \d+ expectations not met"
    with pytest.raises(DataValidationError, match=headline) as e:
        run_prepare(tmp_path, df)
    assert "\n" not in str(e.value)  # one line: Prefect repeats it in several log records
    detail = e.value.report.summary()
    assert "✗ [content] text is not null (tolerance 0.00%): 3 of 240 rows unexpected (1.25%)" in detail


def test_missing_column_lists_the_columns_present(tmp_path, reviews):
    with pytest.raises(DataValidationError, match=r"columns in .*\['review', 'stars'\]"):
        run_prepare(tmp_path, _bad(reviews, "missing_column"))


def test_undeclared_labels_need_two_classes(tmp_path, reviews):
    one = reviews[reviews.sentiment == "pos"]
    with pytest.raises(DataValidationError) as e:
        run_prepare(tmp_path, one, labels=None, validation={"min_per_class": 5})
    assert "at least two classes" in failed_titles(e.value)


def test_blank_rows_within_tolerance_pass_and_are_dropped(tmp_path, reviews):
    df = reviews.copy()
    df.loc[3, "review"] = "  "
    prepared, report = run_prepare(tmp_path, df, validation={"max_blank_fraction": 0.01, "min_per_class": 10})
    assert report.success
    assert prepared.blank_dropped == 1 and sum(prepared.counts.values()) == len(df) - 1


def test_a_leaky_split_fails_the_split_suite(tmp_path):
    df = make_reviews(60)
    train = df.iloc[:40].rename(columns={"review": "text", "sentiment": "label"})
    test = df.iloc[40:].rename(columns={"review": "text", "sentiment": "label"})
    test = pd.concat(
        [test, train.iloc[:1].assign(text=lambda f: f["text"].str.upper())]
    )  # same text, other case
    v = V.Validator(
        data_cfg("x.csv").validation, tmp_path, ("review", "sentiment"), ["neg", "pos"], ["neg", "pos"]
    )
    parts = {"train": train, "validation": test, "test": test.iloc[:0]}
    assert v.run("split", V.split_frame(parts)) is False
    report = v.finish()
    titles = [o.title for o in report.failures()]
    assert "no text appears in two splits (no train/test leak)" in titles
    assert "every class occurs in every split" in titles  # the empty test split has no class at all


def test_an_empty_suite_never_counts_as_a_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(V, "_expectations", lambda *a, **k: [])
    v = V.Validator(
        data_cfg("x.csv").validation, tmp_path, ("review", "sentiment"), ["neg", "pos"], ["neg", "pos"]
    )
    with pytest.raises(RuntimeError, match="no expectations"):
        v.run("schema", pd.DataFrame({"review": ["a"], "sentiment": ["pos"]}))
    assert v.finish().success is False  # nothing evaluated is not a success


def test_the_report_never_contradicts_a_passing_check_and_counts_declared_classes_only(tmp_path, reviews):
    _, report = run_prepare(tmp_path, reviews, validation={"min_per_class": 10})
    occurs = next(o for o in report.outcomes if o.title.startswith("every declared label"))
    assert occurs.success and occurs.observed == "all present"  # GX 1.24 gives no observed value here
    # two rows of an undeclared label: 'labels within' names them; the per-class check judges the
    # declared classes (118-119 rows each), not the stray label's two rows
    with pytest.raises(DataValidationError) as e:
        run_prepare(tmp_path, _bad(reviews, "label_outside_set"), validation={"min_per_class": 10})
    failed = failed_titles(e.value)
    assert any("labels within" in t for t in failed) and not any("per class" in t for t in failed), failed
    per_class = next(o for o in e.value.report.outcomes if "per class" in o.title)
    assert per_class.success and per_class.observed in (
        "smallest class has 118 distinct rows",
        "smallest class has 119 distinct rows",
    ), per_class.observed
