"""The JSON bodies of the HTTP API as pydantic models: FastAPI validates requests against them (a wrong field
gives 422 naming it, e.g. ``["body", "inputs", 2]``) and publishes them in the OpenAPI schema.

:func:`predict_request` builds the predict body for one server's limits, so that the published schema states
them (``maxItems`` = ``max_inputs``, ``maxLength`` = ``max_chars``); the handler enforces them itself, with 413
for too many inputs and 422 for a text too long. Every error is :class:`ErrorResponse`."""

# No ``from __future__ import annotations``: pydantic and FastAPI read these annotations as real objects.
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, create_model


def _utf8(text: str) -> str:
    """Refuse lone surrogates (``"\\ud800"`` in JSON): they are not Unicode text and no tokenizer takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not valid Unicode: a lone surrogate at character {e.start}") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_utf8)]


def predict_request(max_inputs: int = 64, max_chars: int = 20_000) -> type[BaseModel]:
    """The predict body with these limits in its schema (enforced by the handler: 413 / 422)."""
    text = Annotated[Text, Field(json_schema_extra={"maxLength": max_chars})]
    pair = Annotated[list[text], Field(min_length=2, max_length=2)]
    return create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        task=(Text, Field(min_length=1, max_length=200, description="name of a loaded adapter")),
        inputs=(list[Union[text, pair]], Field(min_length=1, json_schema_extra={"maxItems": max_inputs},
                                              description="texts, or [text, pair] items")))


PredictRequest = predict_request()


class Prediction(BaseModel):
    label: str | None = None
    scores: dict[str, float] | None = None
    score: float | None = None


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_\-]+$", min_length=1, max_length=200)
    path: Text = Field(min_length=1, max_length=4096)


class AdapterInfo(BaseModel):
    name: str
    path: str | None
    kind: str
    labels: list[str]
    num_labels: int
    max_length: int


class StoreInfo(BaseModel):
    """With ``--adapter-store``: every adapter it holds, and which are in memory (least recently used first)."""

    known: list[str]
    resident: list[str]
    loading: list[str]
    max_loaded: int | None
    max_memory_bytes: int | None
    memory_bytes: int


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]  # in memory: --adapter, hot-loaded and resident stored adapters
    store: StoreInfo | None = None


class Unloaded(BaseModel):
    unloaded: str


class Health(BaseModel):
    status: str
    model: str | None
    adapters: int
    queued_inputs: int


class ErrorItem(BaseModel):
    loc: list[Union[str, int]]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error: a one-line message, or (validation errors) a list of items naming the field."""

    detail: Union[str, list[ErrorItem]]


def errors(*codes: int, **descriptions: str) -> dict[int, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, all with the :class:`ErrorResponse` body."""
    text = {400: "the body cannot be parsed, or the adapter directory cannot be loaded",
            403: "read-only, or the directory is outside the adapter roots", 404: "no such adapter",
            405: "method not allowed (the Allow header lists the allowed ones)", 409: "name in use",
            413: "body or input count over the server's limits",
            415: "the body is not sent as JSON (content-type: application/json)",
            422: "malformed request (the detail names the field), a text too long, or an adapter that "
                 "produced non-finite scores for these inputs",
            503: "queue full, deadline passed, or shutting down; retry after Retry-After seconds"}
    return {c: {"model": ErrorResponse, "description": descriptions.get(f"e{c}", text[c])} for c in codes}
