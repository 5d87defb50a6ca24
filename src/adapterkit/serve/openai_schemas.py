"""Request bodies of the OpenAI-style generation endpoints, as pydantic models (FastAPI answers a wrong field
with 422 naming it). The shapes follow OpenAI's API reference for ``POST /v1/completions`` and
``POST /v1/chat/completions`` (https://platform.openai.com/docs/api-reference), restricted to what the server
does: one choice per prompt (``n`` = 1), no log-probabilities, no tools. A field the server does not know is
refused (422), never silently ignored."""

# No ``from __future__ import annotations``: pydantic and FastAPI read these annotations as real objects.
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from .schemas import Text

Number = Union[StrictInt, StrictFloat]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class Sampling(BaseModel):
    """The fields both endpoints share. ``temperature`` 0 (or ``top_p`` 0) is greedy decoding."""

    model_config = ConfigDict(extra="forbid")
    model: Text = Field(min_length=1, max_length=4096, description="a loaded LM adapter's name, or the base model's")
    max_tokens: Optional[StrictInt] = Field(None, ge=1, description="tokens to generate at most (the server caps it)")
    temperature: Number = Field(1.0, ge=0, le=2)
    top_p: Number = Field(1.0, ge=0, le=1)
    stop: Union[Text, list[Text], None] = Field(None, description="up to 4 strings; the text ends before the first")
    seed: Optional[StrictInt] = Field(None, ge=0, lt=2**63)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    n: StrictInt = Field(1, ge=1, le=1, description="choices per prompt: 1 only")
    user: Optional[Text] = Field(None, max_length=256, description="accepted and ignored")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops


class CompletionRequest(Sampling):
    prompt: Union[Text, list[Text]] = Field(description="a prompt, or a list of prompts (one choice each)")
    max_tokens: Optional[StrictInt] = Field(16, ge=1, description="tokens to generate at most (OpenAI's default 16)")
    echo: Literal[False] = False
    logprobs: Literal[None] = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("give at least one prompt")
        return value


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[Text, list[TextPart]]
    name: Optional[Text] = Field(None, max_length=256)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1, description="the newer name of max_tokens")
    logprobs: Optional[Literal[False]] = None


__all__ = ["ChatRequest", "CompletionRequest", "Message", "Sampling", "StreamOptions", "TextPart"]
