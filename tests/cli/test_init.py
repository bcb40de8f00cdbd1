"""`slimflow init`: columns and classes found in the user's file, clear errors when they are not."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from slimflow.models.core.errors import DataError
from slimflow.models.pipeline_config import load_config
from slimflow.models.starter import DataProfile, Sizing, profile, render
from tests.cli.test_cli import slimflow
from tests.conftest import make_reviews


def _csv(tmp_path, frame: pd.DataFrame, name: str = "mine.csv"):
    p = tmp_path / name
    frame.to_csv(p, index=False)
    return p


def test_profile_finds_the_text_and_label_columns_by_content(tmp_path):
    df = make_reviews(300)
    df.insert(0, "row_id", range(len(df)))
    df = df.rename(columns={"review": "what_they_wrote", "sentiment": "verdict"})
    df.loc[3, "what_they_wrote"] = "   "  # a blank text is counted, not classified
    prof = profile(_csv(tmp_path, df))
    assert (prof.text_column, prof.label_column) == ("what_they_wrote", "verdict")
    assert prof.rows == 300 and prof.blank_texts == 1 and prof.usable == 299
    assert prof.counts == {"pos": 150, "neg": 149} or prof.counts == {"neg": 150, "pos": 149}
    assert prof.labels == ["neg", "pos"]


def test_profile_checks_given_columns_and_names_what_is_wrong(tmp_path):
    df = make_reviews(100)
    path = _csv(tmp_path, df)
    with pytest.raises(
        DataError, match=r"--label-column 'stars' is not a column; columns: \['review', 'sentiment'\]"
    ):
        profile(path, label_column="stars")
    one_class = _csv(tmp_path, df.assign(sentiment="pos"), "one.csv")
    with pytest.raises(DataError, match="1 distinct label"):
        profile(one_class)
    ids = _csv(tmp_path, pd.DataFrame({"a": range(300), "b": [str(i) for i in range(300)]}), "ids.csv")
    with pytest.raises(DataError, match="name it with --label-column|--text-column"):
        profile(ids)


def test_rendered_config_loads_and_explains_its_choices(tmp_path):
    prof = DataProfile(
        path=tmp_path / "x.csv", fmt="csv", rows=1000, columns=["t", "y"], text_column="t", label_column="y",
        counts={"b": 600, "a": 390}, blank_texts=10, null_labels=0, duplicate_fraction=0.01, min_chars=1,
        max_chars=300,
    )  # fmt: skip
    sizing = Sizing(max_length=40, token_p50=12, token_p99=37, epochs=4, max_rows=None,
                    examples_per_s=50.0, teacher_minutes=1.0, gpu=False, cores=2)  # fmt: skip
    text = render(prof, sizing, "x", "packaged:all-MiniLM-L6-v2", "x.csv")
    (tmp_path / "x.yaml").write_text(text)
    cfg = load_config(tmp_path / "x.yaml")
    assert cfg.data.labels == ["a", "b"] and cfg.data.text_column == "t"
    assert cfg.data.validation.min_chars == 1 and cfg.data.validation.min_per_class == 100
    assert cfg.data.validation.max_blank_fraction == pytest.approx(0.02)
    assert cfg.finetune.train.max_length == 40 and cfg.finetune.train.epochs == 4
    assert cfg.promote.model_name == "x" and cfg.optimize.targets == ["cpu"]
    assert "rarest class here: 390 rows" in text and "99% of texts <= 37" in text
    assert yaml.safe_load(text)["data"]["source"] == "x.csv"


def test_init_refuses_to_overwrite_and_a_bad_name(tmp_path):
    data = _csv(tmp_path, make_reviews(100))
    (tmp_path / "taken.yaml").write_text("name: mine\n")
    r = slimflow("init", "--data", str(data), "-o", "taken.yaml", "--no-measure", cwd=tmp_path)
    assert r.returncode == 2 and "taken.yaml exists" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "taken.yaml").read_text() == "name: mine\n"
    r = slimflow("init", "--data", str(data), "--name", "../up", "--no-measure", cwd=tmp_path)
    assert r.returncode == 2 and "--name '../up' is not allowed" in r.stderr
    r = slimflow("init", "--data", str(tmp_path / "absent.csv"), cwd=tmp_path)
    assert r.returncode == 2 and "file not found" in r.stderr
