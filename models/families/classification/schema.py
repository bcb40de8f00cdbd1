"""The served API of a classifier: ``POST /predict {"texts": [...]}`` -> labels with scores."""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel, ConfigDict, Field


@cache
def request_model(max_batch: int, max_chars: int) -> type[BaseModel]:
    """The request body for a server allowing ``max_batch`` texts of ``max_chars`` characters."""

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        texts: list[str] = Field(..., min_length=1, max_length=max_batch, description="Texts to classify.")

        def check(self) -> None:
            long = [i for i, t in enumerate(self.texts) if len(t) > max_chars]
            if long:
                raise ValueError(f"texts {long[:5]} are longer than {max_chars} characters")

        def inputs(self) -> list[str]:
            return list(self.texts)

    return PredictRequest


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str
    version: str | None
