"""The request body of ``POST /predict``, shared by every family: ``{"texts": [...]}``."""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel, ConfigDict, Field, field_validator


@cache
def request_model(max_batch: int, max_chars: int) -> type[BaseModel]:
    """The request body for a server allowing ``max_batch`` texts of ``max_chars`` characters.
    Error messages name positions, never the texts themselves."""

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        texts: list[str] = Field(
            ...,
            min_length=1,
            max_length=max_batch,
            description="Inputs: texts to classify, prompts to answer.",
        )

        @field_validator("texts")
        @classmethod
        def _readable(cls, texts: list[str]) -> list[str]:
            long = [i for i, t in enumerate(texts) if len(t) > max_chars]
            if long:
                raise ValueError(f"texts {long[:5]} are longer than {max_chars} characters")
            bad = []
            for i, t in enumerate(texts):
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate ("\ud800") parses as JSON, but is no text
                    bad.append(i)
            if bad:
                raise ValueError(f"texts {bad[:5]} are not valid Unicode (lone surrogate code points)")
            return texts

        def inputs(self) -> list[str]:
            return list(self.texts)

    return PredictRequest
