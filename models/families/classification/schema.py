"""The served API of a classifier: ``POST /predict {"texts": [...]}`` -> labels with scores."""

from __future__ import annotations

from pydantic import BaseModel

from slimflow.models.families.schema import request_model

__all__ = ["PredictResponse", "Prediction", "request_model"]


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str
    version: str | None
