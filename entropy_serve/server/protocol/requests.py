"""OpenAI request bodies: parsed and validated here, at the edge (extensions.py has ours).

Every field the OpenAI SDK sends for completions and chat is typed with its valid range
and validated strictly, as OpenAI's API does: `"n": "7"`, `"logprobs": true` on
completions or `"prompt": [true]` are 400s naming the field, never coerced. Each of
OpenAI's fields is one of three kinds (the README's field table): honoured; accepted and
ignored because it cannot change the output (field_kinds.py's `IGNORED`: `user`, `store`...);
or refused with a 400 naming it unless it holds its neutral value (`NOT_SUPPORTED`:
audio, prediction...), so no client gets a wrong answer with a 200. Structured outputs
and tool calls are typed in constraints.py, chat messages in messages.py. Fields
that are not OpenAI's are ignored with a log line, as vLLM's own server does. Which
sampler runs the request and what vLLM is asked for is decided later, once, in sampler_plan.py.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from entropy_serve.server.protocol.constraints import (
    NamedToolChoice,
    OutputConstraint,
    ResponseFormat,
    StructuredOutputs,
    Tool,
    ToolChoice,
    output_constraint,
    tool_schema,
)
from entropy_serve.server.protocol.extensions import ExtensionFields
from entropy_serve.server.protocol.field_kinds import refuse_unless_neutral
from entropy_serve.server.protocol.messages import ChatMessage

logger = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOP_LOGPROBS = 20

Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PENALTIES = ("presence_penalty", "frequency_penalty", "repetition_penalty")
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range: [-100, 100]
LogitBias = Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class SamplingRequest(ExtensionFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, LogitBias] | None = None  # token id (as a string, JSON's keys) -> bias
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extras.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    allowed_token_ids: list[int] | None = Field(None, min_length=1)
    bad_words: list[str] | None = None
    structured_outputs: StructuredOutputs | None = None
    response_format: ResponseFormat | None = None  # OpenAI's on chat; vLLM takes it on completions too
    vllm_xargs: dict[str, str | int | float | bool | list[str | int | float]] | None = None

    # OpenAI's fields that cannot change the output (IGNORED), typed loosely: never read.
    user: str | None = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    safety_identifier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        bad = [key for key in (value or {}) if not key.isdecimal()]
        if bad:
            raise ValueError(f"keys must be token ids (decimal integers as strings), got {bad[:5]}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> SamplingRequest:
        if self.extra_fields():
            logger.warning("ignoring unknown request fields: %s", sorted(self.extra_fields()))
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if isinstance(self.stop, list) and any(not s for s in self.stop):
            raise ValueError("stop: stop sequences must not be empty")
        if self.strategy is not None:
            if self.stream and self.strategy.votes:
                raise ValueError(
                    "strategy: streaming is not supported with a voting strategy "
                    "(the answer exists only after the vote)"
                )
            if self.n != 1 and not self.strategy.votes:
                raise ValueError(f"strategy: {self.strategy.name!r} answers with one sample; n must be 1")
            if self.n != 1:
                raise ValueError(
                    "strategy: set the number of samples in the strategy (strategy.n, strategy.trees), not n"
                )
            if self.prompt_logprobs is not None:
                raise ValueError("prompt_logprobs: not available with a strategy (its reply is one of many samples)")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs: not available when stream is true")
        return self

    def extra_fields(self) -> dict[str, Any]:
        return self.model_extra or {}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def num_top_logprobs(self) -> int | None:
        """None: no logprobs; k >= 0: the sampled token's logprob plus the top k."""
        raise NotImplementedError

    def num_prompt_logprobs(self) -> int | None:
        """Log-probabilities of the prompt's own tokens: None, or each one's plus the top k."""
        return self.prompt_logprobs

    def stop_sequences(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def token_constraints(self) -> list[str]:
        """The fields that change which tokens vLLM lets through before our sampler sees them."""
        return [name for name in ("logit_bias", "allowed_token_ids", "bad_words") if getattr(self, name)]

    def constraint(self) -> OutputConstraint | None:
        """What the output must match (constraints.py), or None; a 400 when two fields set one."""
        return output_constraint(self.response_format, self.structured_outputs, None)

    def penalties(self) -> list[str]:
        """The penalties this request sets to something other than their neutral value."""
        return [name for name in PENALTIES if getattr(self, name) not in (None, 0.0, 1.0)]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo: score the prompt, generate nothing
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: Any = None  # NOT_SUPPORTED
    best_of: Any = None  # NOT_SUPPORTED

    _not_supported = field_validator("suffix", "best_of")(refuse_unless_neutral)

    @model_validator(mode="after")
    def _check_prompt(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError(
                "max_tokens: 0 generates nothing; it is only allowed with echo (to read the prompt's logprobs)"
            )
        if self.echo and self.strategy is not None:
            raise ValueError("echo: not available with a strategy (its reply is one of many samples)")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be an empty list")
        return self

    def num_top_logprobs(self) -> int | None:
        return self.logprobs

    def num_prompt_logprobs(self) -> int | None:
        """`echo` with `logprobs` also scores the prompt's tokens, as OpenAI's legacy API does."""
        if self.prompt_logprobs is None and self.echo:
            return self.logprobs
        return self.prompt_logprobs

    @property
    def echo_only(self) -> bool:
        """max_tokens 0 with echo: the reply is the prompt (the engine's one token is dropped)."""
        return self.echo and self.max_tokens == 0


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    # NOT_SUPPORTED: a 400 unless neutral.
    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    moderation: Any = None

    _not_supported = field_validator(
        "functions",
        "function_call",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "reasoning_effort",
        "verbosity",
        "moderation",
    )(refuse_unless_neutral)

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice: needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {tool.function.name for tool in self.tools}:
                raise ValueError(f"tool_choice: names {name!r}, which is not among the tools")
        if self.tool_mode() is not None and self.strategy is not None:
            raise ValueError("tools: not available with a strategy yet (its vote compares answers, not tool calls)")
        return self

    def tool_mode(self) -> Literal["auto", "required", "named"] | None:
        """How the reply's tool calls are read (tool_calls.py); None: no tool calls.
        As in OpenAI's API, tools without a tool_choice mean `auto`."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    def constraint(self) -> OutputConstraint | None:
        forced = tool_schema(self.tools, self.tool_choice, self.parallel_tool_calls) if self.tool_mode() else None
        return output_constraint(self.response_format, self.structured_outputs, forced)

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens replaces the deprecated max_tokens in OpenAI's chat API.
        return self.max_completion_tokens or self.max_tokens

    def num_top_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    def chat_messages(self) -> list[dict]:
        """Messages in the plain form chat templates expect (content parts joined)."""
        return [m.for_template() for m in self.messages]

    def template_tools(self) -> list[dict] | None:
        """The tools, as chat templates take them (None: the template shows none)."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None
