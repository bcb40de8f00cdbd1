"""Offline batch inference over a file: every input row comes back unchanged, with prediction columns.

Streams the input in chunks (memory stays bounded by the chunk, whatever the file's size), keeps the
user's data as it was (no input column is ever overwritten: a clash is refused, naming a prefix to
use; CSV values are read and written as text, "NA" stays "NA"), accepts a UTF-8 byte-order mark,
refuses duplicate column names, and neutralises formula-looking cells in CSV output (OWASP CSV
injection guidance: a cell starting with = + - @ tab or CR is prefixed with a single quote, unless
it is a plain number). Output is written to a temporary file and renamed when complete.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slimflow.models.core.errors import ConfigError, DataError

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def file_format(path: Path, what: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{what} must end in .csv, .tsv, .jsonl, .ndjson or .parquet, got {path.name!r}")
    return fmt


def neutralise(value: Any) -> Any:
    """A CSV cell that a spreadsheet would run as a formula, made inert (plain numbers are kept)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def columns_of(path: Path, fmt: str) -> list[str]:
    """The input's column names, checked for duplicates (read from the header or first records)."""
    from slimflow.models.data.tables import check_unique_columns, csv_header

    if fmt == "csv":
        names = csv_header(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        names = list(pq.ParquetFile(path).schema_arrow.names)
    else:
        names = []
        for chunk in read_chunks(path, fmt, 1000):
            names = [str(c) for c in chunk.columns]
            break
    check_unique_columns(names, path)
    return names


def read_chunks(path: Path, fmt: str, rows: int) -> Iterator[Any]:
    """DataFrames of at most ``rows`` rows, in file order."""
    import pandas as pd

    if fmt == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        yield from pd.read_csv(path, encoding="utf-8-sig", sep=sep, dtype=str, keep_default_na=False,
                               chunksize=rows)  # fmt: skip
    elif fmt == "jsonl":
        from slimflow.models.data.tables import _no_duplicate_keys

        batch: list[dict[str, Any]] = []
        with path.open("r", encoding="utf-8-sig") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line, object_pairs_hook=_no_duplicate_keys(i, path))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {i} is not valid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {i} is not a JSON object")
                batch.append(row)
                if len(batch) == rows:
                    yield pd.DataFrame.from_records(batch).astype(object)
                    batch = []
        if batch:
            yield pd.DataFrame.from_records(batch).astype(object)
    else:
        import pyarrow.parquet as pq

        for b in pq.ParquetFile(path).iter_batches(batch_size=rows):
            yield b.to_pandas(integer_object_nulls=True)


class _Writer:
    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.first, self.parquet = path, fmt, True, None

    def write(self, frame: Any) -> None:
        if self.fmt == "csv":
            sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
            safe = frame.map(neutralise) if hasattr(frame, "map") else frame.applymap(neutralise)
            safe.to_csv(self.path, index=False, sep=sep, mode="w" if self.first else "a", header=self.first)
        elif self.fmt == "jsonl":
            text = frame.to_json(orient="records", lines=True, force_ascii=False) if len(frame) else ""
            with self.path.open("w" if self.first else "a", encoding="utf-8") as f:
                f.write(text if not text or text.endswith("\n") else text + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self.parquet is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                self.parquet = pq.ParquetWriter(self.path, table.schema)
            else:
                table = pa.Table.from_pandas(frame, schema=self.parquet.schema, preserve_index=False)
            self.parquet.write_table(table)
        self.first = False

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        elif self.first:  # no rows at all: still a valid, empty file
            self.path.write_text("", encoding="utf-8")


def predict_file(
    predict: Callable[[list[str]], Any],
    input_file: Path,
    output_file: Path,
    text_column: str = "text",
    prefix: str = "",
    chunk_rows: int = 10_000,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``predict`` (texts -> a frame with 'label' and 'score') over ``input_file`` chunk by chunk
    and write every row with ``{prefix}label`` and ``{prefix}score`` added. Returns rows and label counts."""
    fin, fout = file_format(input_file, "--input"), file_format(output_file, "--output")
    if not input_file.is_file():
        raise ConfigError(f"--input: file not found: {input_file}")
    columns = columns_of(input_file, fin)
    if columns and text_column not in columns:
        raise ConfigError(f"--input has no column {text_column!r} (columns: {', '.join(columns)})")
    label_col, score_col = f"{prefix}label", f"{prefix}score"
    clash = [c for c in (label_col, score_col) if c in columns]
    if clash:
        raise ConfigError(
            f"--input already has a column {clash[0]!r}; its values are kept as they are, so the predictions "
            "need other names: pass --prefix, e.g. --prefix predicted_ (predicted_label, predicted_score)"
        )
    output_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_file.with_name(f".{output_file.name}.tmp")
    writer = _Writer(tmp, fout)
    counts: Counter[str] = Counter()
    rows = 0
    try:
        for chunk in read_chunks(input_file, fin, chunk_rows):
            if text_column not in chunk.columns:
                raise ConfigError(
                    f"--input has no column {text_column!r} in rows {rows + 1}-{rows + len(chunk)}"
                )
            texts = [
                "" if v is None or (isinstance(v, float) and v != v) else str(v) for v in chunk[text_column]
            ]
            preds = predict(texts)
            out = chunk.reset_index(drop=True)
            out[label_col] = list(preds["label"])
            out[score_col] = list(preds["score"])
            writer.write(out)
            counts.update(out[label_col])
            rows += len(out)
            if on_chunk is not None:
                on_chunk(len(out))
        writer.close()
        tmp.replace(output_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"rows": rows, "labels": dict(counts)}
