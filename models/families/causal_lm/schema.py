"""The served API of a generator on ``POST /predict``: prompts in (the shared ``{"texts": [...]}``
body), generated texts out. The OpenAI-compatible routes are in ``release/openai_api.py``."""

from __future__ import annotations

from pydantic import BaseModel

from slimflow.models.families.schema import request_model

__all__ = ["GenerateResponse", "Generation", "request_model"]


class Generation(BaseModel):
    text: str


class GenerateResponse(BaseModel):
    predictions: list[Generation]
    model: str
    version: str | None
