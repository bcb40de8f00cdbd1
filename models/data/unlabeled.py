"""Unlabeled text for distillation: the teacher labels it (soft targets), the student learns from
those as from the labeled rows — the classic augmentation that lets small students match larger
ones (Hinton et al. 2015; TinyBERT, DistilBERT use the same idea with more text).

A text that is also in the train, validation or test split (compared case-folded, whitespace
collapsed) is dropped: a test text the student was trained on, even without its label, would
flatter its test score. Blank and repeated texts are dropped too; every count is reported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from slimflow.models.assets import PACKAGED_DATASETS, packaged_name
from slimflow.models.core.errors import ConfigError, DataError
from slimflow.models.data.tables import LABEL, TEXT, _read, check_text_column, normalize_text, resolve_format


def read_texts(source: str, text_column: str, where: str) -> pd.Series:
    """The ``text_column`` of a CSV/JSONL/Parquet file or a packaged dataset, as it is."""
    name = packaged_name(source)
    if name is not None:
        if name not in PACKAGED_DATASETS:
            raise ConfigError(
                f"{where}: unknown packaged dataset {name!r}; known: {sorted(PACKAGED_DATASETS)}"
            )
        raw, origin = PACKAGED_DATASETS.get(name).load(), f"packaged:{name}"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: file not found: {path}")
        fmt = resolve_format(SimpleNamespace(format="auto", source=str(path)))  # type: ignore[arg-type]
        try:
            raw = _read(path, fmt)
        except UnicodeDecodeError:
            raise DataError(f"{where}: {path} is not UTF-8 text") from None
        check_text_column(raw, text_column, path)
        origin = str(path)
    if text_column not in raw.columns:
        raise ConfigError(
            f"{where}: {origin} has no column {text_column!r} (columns: {', '.join(map(str, raw.columns))})"
        )
    return raw[text_column]


def unlabeled_frame(
    texts: pd.Series, splits: dict[str, pd.DataFrame], max_rows: int | None, seed: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows (``text``, ``label`` None) to add to the training split, and what was dropped why."""
    raw = texts.map(lambda v: v.strip() if isinstance(v, str) else "")
    counts = {"rows_read": int(len(raw))}
    kept = raw[raw != ""]
    counts["blank_dropped"] = counts["rows_read"] - int(len(kept))
    keys = kept.map(normalize_text)
    seen = set()
    for frame in splits.values():
        seen.update(frame[TEXT].astype(str).map(normalize_text))
    in_splits = keys.isin(seen)
    counts["in_splits_dropped"] = int(in_splits.sum())
    kept, keys = kept[~in_splits], keys[~in_splits]
    repeated = keys.duplicated()
    counts["duplicates_dropped"] = int(repeated.sum())
    kept = kept[~repeated]
    if max_rows is not None and len(kept) > max_rows:
        kept = kept.sample(n=max_rows, random_state=seed).sort_index()
    counts["rows_used"] = int(len(kept))
    return pd.DataFrame({TEXT: kept.to_numpy(), LABEL: [None] * len(kept)}), counts


def texts_fingerprint(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for t in frame[TEXT]:
        h.update(str(t).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
