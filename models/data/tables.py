"""Load, clean, split and fingerprint labeled text data.

Packaged datasets (``packaged:NAME``, see ``slimflow.models.assets``) or CSV, JSONL and Parquet
files. Everything here is pure pandas: the Great Expectations gate lives in ``validation.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from slimflow.models.assets import PACKAGED_DATASETS, packaged_name
from slimflow.models.core.errors import ConfigError, DataError
from slimflow.models.data.config import DataConfig, SplitConfig

TEXT, LABEL = "text", "label"  # canonical column names after loading
SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------------------- loading
def resolve_format(cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    suffixes = [s.lower() for s in Path(cfg.source).suffixes]
    for fmt, exts in (
        ("csv", {".csv", ".tsv"}),
        ("jsonl", {".jsonl", ".ndjson", ".json"}),
        ("parquet", {".parquet", ".pq"}),
    ):
        if exts & set(suffixes):
            return fmt
    raise ConfigError(
        f"data.source {cfg.source!r}: cannot tell the format from the extension; "
        "set data.format to csv, jsonl or parquet"
    )


def check_source(cfg: DataConfig) -> Path:
    """Fail fast (before any heavy import) when the data file cannot be used; return its path."""
    name = packaged_name(cfg.source)
    if name is not None:
        if name not in PACKAGED_DATASETS:
            raise ConfigError(
                f"data.source: unknown packaged dataset {name!r}; known: {sorted(PACKAGED_DATASETS)}"
            )
        path = PACKAGED_DATASETS.get(name).locate()
    else:
        path = Path(cfg.source).expanduser()
        resolve_format(cfg)
    if not path.is_file():
        raise ConfigError(f"data.source: file not found: {path}")
    return path


def source_digest(cfg: DataConfig) -> str:
    """sha256 of the source file's bytes: part of the data stage's cache key (a changed file re-runs it)."""
    h = hashlib.sha256()
    with check_source(cfg).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def csv_header(path: Path, sep: str) -> list[str]:
    """The header row as written (pandas renames a repeated name to 'name.1' without a word)."""
    import csv

    with path.open("r", encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f, delimiter=sep), [])


def check_unique_columns(names: list[str], path: Path | str) -> None:
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise DataError(
            f"{path}: duplicate column name(s) {dup[:5]}: rename them so each column is unambiguous"
        )


def _no_duplicate_keys(line: int, path: Path):  # noqa: ANN202 - a json object_pairs_hook
    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise DataError(f"{path}: line {line} repeats the key(s) {dup[:5]}")
        return dict(pairs)

    return hook


def _read(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        check_unique_columns(csv_header(path, sep), path)
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
        return pd.read_csv(path, encoding="utf-8-sig", sep=sep, dtype=str, keep_default_na=True)
    if fmt == "jsonl":
        with path.open("r", encoding="utf-8-sig") as f:
            rows = []
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line, object_pairs_hook=_no_duplicate_keys(i, path)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {i} is not valid JSON: {e.msg}") from None
                    if not isinstance(rows[-1], dict):
                        raise DataError(f"{path}: line {i} is not a JSON object")
        # object columns: an integer label column with a null stays integers (not 1.0, NaN)
        return pd.DataFrame.from_records(rows).astype(object) if rows else pd.DataFrame()
    import pyarrow.parquet as pq  # heavy, only for parquet

    table = pq.read_table(path)
    check_unique_columns(table.column_names, path)
    return table.to_pandas(integer_object_nulls=True)


def check_text_column(raw: pd.DataFrame, column: str, path: Path | str) -> None:
    """Texts must be strings (or missing): a number or a list in the text column is named, not
    silently turned into text."""
    if column not in raw.columns:
        return  # the schema check reports a missing column
    values = raw[column]
    bad = values[~values.map(lambda v: isinstance(v, str) or v is None or (isinstance(v, float) and v != v))]
    if len(bad):
        i = int(bad.index[0])
        raise DataError(
            f"{path}: column {column!r} must hold text, but row {i + 1} holds a {type(bad.iloc[0]).__name__}"
            f" ({len(bad)} such row(s))"
        )


def load_raw(cfg: DataConfig, check_text: bool = True) -> pd.DataFrame:
    """Read the source as given: the raw table that the schema expectations check (``check_text``:
    the text column must hold strings; chat data holds lists of turns instead)."""
    path = check_source(cfg)
    name = packaged_name(cfg.source)
    try:
        if name is not None:
            return PACKAGED_DATASETS.get(name).load()
        raw = _read(path, resolve_format(cfg))
        if check_text:
            check_text_column(raw, cfg.text_column, path)
        return raw
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (invalid byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "re-encode the file as UTF-8"
        ) from None
    except DataError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"{path}: cannot read as {resolve_format(cfg) if not name else 'csv'}: {e}") from None


def label_text(v: object) -> str | None:
    """A label as text: 1 and 1.0 are both '1' (a float column with nulls must not rename classes)."""
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def canonical(raw: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Select the configured columns as ``text``/``label`` strings (labels compared as text)."""
    df = pd.DataFrame({TEXT: raw[cfg.text_column], LABEL: raw[cfg.label_column]})
    df[TEXT] = df[TEXT].astype("string")
    df[LABEL] = df[LABEL].map(label_text).astype("string")
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------- cleaning
_WS = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Key used to detect repeats and leaks: case-folded, whitespace collapsed."""
    return _WS.sub(" ", s).strip().casefold()


@dataclass(frozen=True)
class CleanStats:
    rows_in: int
    blank_dropped: int
    duplicates_dropped: int
    rows_out: int


def clean(df: pd.DataFrame) -> tuple[pd.DataFrame, CleanStats]:
    """Strip whitespace, drop null/blank texts and repeated texts (first kept).

    Only call this after validation passed: the suite bounds how many rows these rules may drop.
    """
    n = len(df)
    out = df.copy()
    out[TEXT] = out[TEXT].str.strip()
    keep = out[TEXT].notna() & (out[TEXT] != "") & out[LABEL].notna()
    out = out[keep]
    blank = n - len(out)
    key = out[TEXT].map(normalize_text)
    out = out[~key.duplicated(keep="first")]
    dups = n - blank - len(out)
    return out.reset_index(drop=True), CleanStats(n, blank, dups, len(out))


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows with the class proportions kept (deterministic for a seed); rows without
    a label column (chat data) are sampled uniformly."""
    if n >= len(df):
        return df
    if LABEL not in df.columns:
        return df.sample(n=n, random_state=seed).sort_index()
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(df, train_size=n, stratify=df[LABEL], random_state=seed)
    return keep.sort_index()


def split(df: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Deterministic stratified train/validation/test split. Rows keep their input order within a split."""
    from sklearn.model_selection import train_test_split

    rest, test = train_test_split(df, test_size=cfg.test, stratify=df[LABEL], random_state=cfg.seed)
    val_share = cfg.validation / (1 - cfg.test)
    train, val = train_test_split(rest, test_size=val_share, stratify=rest[LABEL], random_state=cfg.seed)
    return {"train": train.sort_index(), "validation": val.sort_index(), "test": test.sort_index()}


# ------------------------------------------------------------------------------------ fingerprints
def fingerprint(df: pd.DataFrame) -> str:
    """sha256 over (label, text) rows in order: identical content gives an identical fingerprint."""
    h = hashlib.sha256()
    for label, text in zip(df[LABEL].tolist(), df[TEXT].tolist(), strict=True):
        h.update(json.dumps([label, text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def split_fingerprint(parts: dict[str, pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(name.encode() + b"\0" + fingerprint(parts[name]).encode())
    return h.hexdigest()


def read_split(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(path)
