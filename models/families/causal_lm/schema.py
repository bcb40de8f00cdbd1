"""The served API of a generator on ``POST /predict``: prompts in, generated texts out. (The
OpenAI-compatible ``/v1/chat/completions`` route is a separate, later addition.)"""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel, ConfigDict, Field, field_validator


@cache
def request_model(max_batch: int, max_chars: int) -> type[BaseModel]:
    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        texts: list[str] = Field(..., min_length=1, max_length=max_batch, description="User prompts.")

        @field_validator("texts")
        @classmethod
        def _bounded(cls, texts: list[str]) -> list[str]:
            long = [i for i, t in enumerate(texts) if len(t) > max_chars]
            if long:
                raise ValueError(f"texts {long[:5]} are longer than {max_chars} characters")
            return texts

        def inputs(self) -> list[str]:
            return list(self.texts)

    return GenerateRequest


class Generation(BaseModel):
    text: str


class GenerateResponse(BaseModel):
    predictions: list[Generation]
    model: str
    version: str | None
