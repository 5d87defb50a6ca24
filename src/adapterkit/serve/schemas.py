"""The JSON bodies of the HTTP API as pydantic models: FastAPI validates requests against them (a wrong field
gives 422 naming it, e.g. ``["body", "inputs", 2]``) and publishes them in the OpenAPI schema."""

# No ``from __future__ import annotations``: pydantic and FastAPI read these annotations as real objects.
from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr

Pair = Annotated[list[StrictStr], Field(min_length=2, max_length=2)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: StrictStr = Field(min_length=1, max_length=200, description="name of a loaded adapter")
    inputs: list[Union[StrictStr, Pair]] = Field(min_length=1, description="texts, or [text, pair] items")


class Prediction(BaseModel):
    label: str | None = None
    scores: dict[str, float] | None = None
    score: float | None = None


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=200)
    path: StrictStr = Field(min_length=1)
