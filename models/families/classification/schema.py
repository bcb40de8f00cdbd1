"""The served API of a classifier: ``POST /predict {"texts": [...]}`` -> labels with scores."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from slimflow.models.families.schema import request_model

__all__ = ["PredictResponse", "Prediction", "request_model"]


class Prediction(BaseModel):
    label: str
    score: float
    answered_by: Literal["fast", "fallback"] | None = Field(
        None, description="A cascade's part that answered this text; absent for other models."
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str
    version: str | None
