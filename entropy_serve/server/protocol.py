"""OpenAI request bodies: parsed and validated here, at the edge.

Every field the OpenAI SDK sends for completions and chat is typed with its valid range,
so a bad value becomes an HTTP 400 naming the field before anything reaches the engine.
Unknown fields are ignored with a log line, as vLLM's own server does. `to_sampling_params`
is the single place where a request becomes vLLM `SamplingParams`.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind

from entropy_serve.server.errors import BadRequest

logger = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOP_LOGPROBS = 20

Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class AdaptiveTemperature(BaseModel):
    """Per-token temperature from the model's entropy (samplers/temperature.py)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["hapo", "edt", "dynatemp"]
    tau: float = Field(0.5, ge=0.0, le=10.0, description="hapo: T = T_base * (1 + tau * h)")
    theta: float = Field(1.0, gt=0.0, le=100.0, description="edt: T = T0 * base^(theta / H)")
    base: float = Field(0.8, gt=0.0, lt=1.0, description="edt: N")
    range: float = Field(0.5, ge=0.0, le=5.0, description="dynatemp: T in [T - range, T + range]")
    exponent: float = Field(1.0, gt=0.0, le=10.0, description="dynatemp: (H / ln V)^exponent")


VoteMode = Literal["majority", "entropy_weighted"]


class SelfConsistency(BaseModel):
    """n independent samples, one vote (server/strategies/self_consistency.py)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["self_consistency"]
    n: int = Field(8, ge=2, le=1024, description="independent samples to vote over")
    vote: VoteMode = "majority"

    @property
    def num_leaves(self) -> int:
        return self.n


class EntropyFork(BaseModel):
    """ETTRL's tree rollouts: fork each tree at its highest-entropy tokens (strategies/entropy_fork.py).

    Defaults are ETTRL's (M=12 trees, N=2 forks, B=2 branches: 60 leaves)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["entropy_fork"]
    trees: int = Field(12, ge=1, le=1024, description="M: initial samples")
    forks: int = Field(2, ge=1, le=64, description="N: fork points per tree, at its highest-entropy tokens")
    branches: int = Field(2, ge=1, le=64, description="B: continuations sampled from each fork point")
    vote: VoteMode = "majority"

    @property
    def num_leaves(self) -> int:
        return self.trees * (1 + self.forks * self.branches)


class Difficulty(BaseModel):
    """DiffAdapt: the difficulty probe picks the strategy (strategies/difficulty.py)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["difficulty"]
    num_leaves: ClassVar[int] = 1


Strategy = Annotated[SelfConsistency | EntropyFork | Difficulty, Field(discriminator="name")]
STRATEGY_NAMES = ("self_consistency", "entropy_fork", "difficulty")
VOTING_STRATEGIES = ("self_consistency", "entropy_fork")


# Our sampler fields may also come inside vllm_xargs (for clients that only pass those).
SAMPLER_XARGS = ("typical_p", "adaptive_temperature", "return_entropy")


def _adaptive_from_string(value: str) -> dict:
    """vllm_xargs' spelling: a method name ("edt") or the JSON object as a string."""
    if not value.lstrip().startswith("{"):
        return {"method": value}
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"vllm_xargs.adaptive_temperature: not valid JSON ({error})") from error


class SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extras.
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    vllm_xargs: dict[str, str | int | float | bool | list[str | int | float]] | None = None
    # entropy-serve's samplers.
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    adaptive_temperature: AdaptiveTemperature | None = None
    return_entropy: bool = False
    strategy: Strategy | None = None

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_by_name(cls, value: Any) -> Any:
        """`"strategy": "entropy_fork"` is that strategy with its defaults."""
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _strategy_from_model_name(cls, data: Any) -> Any:
        """`"model": "entropy_fork:NAME"` is model NAME with that strategy's defaults, for
        clients that cannot send extra fields. A strategy in the body must agree."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return data
        prefix, colon, model = data["model"].partition(":")
        if not colon or prefix not in STRATEGY_NAMES:
            return data
        data = dict(data, model=model)
        given = data.get("strategy")
        if given is None:
            data["strategy"] = prefix
        elif (given if isinstance(given, str) else dict(given).get("name")) != prefix:
            raise ValueError(f"strategy: the model name asks for {prefix!r}, the strategy field for another")
        return data

    @model_validator(mode="before")
    @classmethod
    def _lift_sampler_xargs(cls, data: Any) -> Any:
        """Move our fields out of vllm_xargs, so both spellings validate the same way."""
        if not isinstance(data, dict) or not isinstance(data.get("vllm_xargs"), dict):
            return data
        data, xargs = dict(data), dict(data["vllm_xargs"])
        for name in SAMPLER_XARGS:
            if name not in xargs:
                continue
            value = xargs.pop(name)
            if name == "adaptive_temperature" and isinstance(value, str):
                value = _adaptive_from_string(value)
            if name in data and data[name] != value:
                raise ValueError(f"{name}: given both in the body and in vllm_xargs, differently")
            data[name] = value
        data["vllm_xargs"] = xargs or None
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> SamplingRequest:
        if self.extra_fields():
            logger.warning("ignoring unknown request fields: %s", sorted(self.extra_fields()))
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if isinstance(self.stop, list) and any(not s for s in self.stop):
            raise ValueError("stop: stop sequences must not be empty")
        if self.strategy is not None:
            if self.stream and self.strategy.name in VOTING_STRATEGIES:
                raise ValueError("strategy: streaming is not supported with a strategy (the answer exists only after the vote)")
            if self.n != 1 and self.strategy.name == "difficulty":
                raise ValueError("strategy: 'difficulty' answers with one sample; n must be 1")
            if self.n != 1:
                raise ValueError("strategy: set the number of samples in the strategy (strategy.n, strategy.trees), not n")
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

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        """The vLLM parameters of this request, with `max_tokens` already resolved."""
        optional = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
        }
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        try:
            return SamplingParams(
                n=self.n,
                max_tokens=max_tokens,
                stop=stop,
                seed=self.seed,
                min_tokens=self.min_tokens,
                ignore_eos=self.ignore_eos,
                logprobs=self.num_top_logprobs(),
                extra_args=self.vllm_xargs,
                output_kind=RequestOutputKind.DELTA,  # see generation.py
                **{k: v for k, v in optional.items() if v is not None},
            )
        except (ValueError, VLLMValidationError) as error:  # vLLM's own cross-field checks
            raise BadRequest(str(error)) from error


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_prompt(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo: echoing the prompt is not supported")
        if self.suffix:
            raise ValueError("suffix: insertion (suffix) is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be an empty list")
        return self

    def num_top_logprobs(self) -> int | None:
        return self.logprobs


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        return self

    def requested_max_tokens(self) -> int | None:
        # max_completion_tokens replaces the deprecated max_tokens in OpenAI's chat API.
        return self.max_completion_tokens or self.max_tokens

    def num_top_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages in the plain form chat templates expect (content parts joined)."""
        return [{"role": m.role, "content": m.text()} for m in self.messages]
