"""The ``data:`` section: where the data is, which columns, how it is split and checked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimflow.models.config.base import Strict


class SplitConfig(Strict):
    validation: float = Field(0.1, gt=0, lt=0.5, description="Fraction of rows held out for early stopping.")
    test: float = Field(0.2, gt=0, lt=0.5, description="Fraction of rows held out for the final report.")
    seed: int = Field(42, description="Seed of the stratified split; same seed + same data = same split.")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 0.8:
            raise ValueError("validation + test must leave at least 20% of rows for training")
        return self


class ValidationConfig(Strict):
    """Thresholds of the Great Expectations suite (see validation.py)."""

    min_chars: int = Field(2, ge=1, description="Shortest accepted text, in characters.")
    max_chars: int = Field(5000, ge=2, description="Longest accepted text, in characters.")
    max_blank_fraction: float = Field(
        0.0, ge=0, lt=0.5, description="Share of null/blank texts tolerated (they are dropped); 0 = none."
    )
    max_duplicate_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of repeated texts tolerated (repeats are dropped)."
    )
    min_per_class: int = Field(20, ge=1, description="Minimum rows per class after cleaning.")

    @model_validator(mode="after")
    def _bounds(self) -> ValidationConfig:
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        return self


class DataConfig(Strict):
    source: str = Field(
        "packaged:rotten_tomatoes",
        description="'packaged:NAME' for a dataset shipped in a package, or a .csv/.jsonl/.parquet path.",
    )
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field(
        "auto", description="File format; 'auto' uses the file extension."
    )
    text_column: str = Field("text", min_length=1, description="Column holding the input text.")
    label_column: str = Field("label", min_length=1, description="Column holding the class label.")
    labels: list[str] | None = Field(
        None,
        description="Declared label set (its order fixes label ids). Omitted: the sorted labels found.",
    )
    # causal-lm (task: causal-lm): chat rows, or prompt/completion pairs
    messages_column: str = Field(
        "messages",
        min_length=1,
        description="causal-lm: column of chat turns ([{role, content}, ...], the last one the "
        "assistant's answer that is trained on).",
    )
    prompt_column: str = Field(
        "prompt", min_length=1, description="causal-lm without a messages column: the user's prompt."
    )
    completion_column: str = Field(
        "completion", min_length=1, description="causal-lm without a messages column: the answer."
    )
    max_rows: int | None = Field(
        None, ge=20, description="Stratified subsample after cleaning, for quick runs; None = all rows."
    )
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("labels must list at least two classes")
            if len(set(v)) != len(v):
                raise ValueError(f"labels must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _columns_differ(self) -> DataConfig:
        if self.text_column == self.label_column:
            raise ValueError("text_column and label_column must differ")
        return self
