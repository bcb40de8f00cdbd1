"""The data stage: load -> validate (GX) -> clean -> split -> validate split -> write parquet.

Returns a small, picklable ``PreparedData`` (paths and figures, not frames) that later stages and
Prefect's cache use. On bad data it writes the report first, then raises ``DataValidationError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from slimflow.models.core.errors import DataValidationError
from slimflow.models.core.results import StageResult
from slimflow.models.data import tables as D
from slimflow.models.data.config import DataConfig
from slimflow.models.data.validation import ValidationReport, Validator, content_frame, split_frame


class PreparedData(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: str = "sequence-classification"  # the task family the data is prepared for
    source: str
    source_path: str  # the file actually read (a packaged: source resolves to a file too)
    source_sha256: str
    data_fingerprint: str  # sha256 of the cleaned (label, text) rows: the dataset's identity
    split_fingerprint: str  # sha256 of the three splits: what downstream caches key on
    labels: list[str]
    paths: dict[str, str]  # split name -> parquet path
    counts: dict[str, int]  # rows per split
    class_counts: dict[str, dict[str, int]]
    rows_raw: int
    blank_dropped: int
    duplicates_dropped: int
    report_dir: str

    def path(self, split: str) -> Path:
        return Path(self.paths[split])


class DataResult(StageResult):
    """The data stage's result: the prepared data (what later stages and caches key on) and the
    figures of its validation."""

    data: PreparedData
    expectations_met: int = 0

    outputs: ClassVar[tuple[str, ...]] = ("data.paths.train", "data.paths.test")

    def metrics(self) -> dict[str, float]:
        d = self.data
        out: dict[str, Any] = {
            "rows_raw": d.rows_raw,
            "blank_dropped": d.blank_dropped,
            "duplicates_dropped": d.duplicates_dropped,
            "expectations_met": self.expectations_met,
        }
        out.update({f"counts_{k}": v for k, v in d.counts.items()})
        return {k: float(v) for k, v in out.items()}


def prepare(
    cfg: DataConfig,
    out_dir: str | Path,
    source_sha256: str,
    report_dir: str | Path | None = None,
    task: str = "sequence-classification",
) -> tuple[PreparedData, ValidationReport]:
    """Validate and split; write splits to ``out_dir`` and the GX report to ``report_dir``."""
    out = Path(out_dir)
    report_dir = Path(report_dir) if report_dir is not None else out / "validation"
    raw = D.load_raw(cfg)
    labels = cfg.labels
    if labels is None and cfg.label_column in raw.columns:
        labels = sorted({str(x) for x in raw[cfg.label_column].dropna()})
    v = Validator(cfg.validation, report_dir, (cfg.text_column, cfg.label_column), labels, cfg.labels)

    def fail() -> None:
        report = v.finish()
        missing = [c for c in (cfg.text_column, cfg.label_column) if c not in raw.columns]
        hint = f"columns in {cfg.source}: {list(map(str, raw.columns))[:20]}" if missing else None
        raise DataValidationError(report.headline(), report=report, hint=hint)

    if not v.run("schema", raw):
        fail()
    canon = D.canonical(raw, cfg)
    if not v.run("content", content_frame(canon, cfg.labels)):
        fail()
    cleaned, stats = D.clean(canon)
    data_fp = D.fingerprint(cleaned)
    if cfg.max_rows is not None:
        cleaned = D.stratified_sample(cleaned, cfg.max_rows, cfg.split.seed)
    parts = D.split(cleaned, cfg.split)
    if not v.run("split", split_frame(parts)):
        fail()
    report = v.finish()

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in parts.items():
        p = out / f"{name}.parquet"
        frame[[D.TEXT, D.LABEL]].reset_index(drop=True).to_parquet(p, index=False)
        paths[name] = str(p)
    prepared = PreparedData(
        task=task,
        source=cfg.source,
        source_path=str(D.check_source(cfg)),
        source_sha256=source_sha256,
        data_fingerprint=data_fp,
        split_fingerprint=D.split_fingerprint(parts),
        labels=labels or [],
        paths=paths,
        counts={k: len(v_) for k, v_ in parts.items()},
        class_counts={
            k: {str(a): int(b) for a, b in f[D.LABEL].value_counts().sort_index().items()}
            for k, f in parts.items()
        },
        rows_raw=len(raw),
        blank_dropped=stats.blank_dropped,
        duplicates_dropped=stats.duplicates_dropped,
        report_dir=str(report_dir),
    )
    return prepared, report
