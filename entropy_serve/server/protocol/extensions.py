"""entropy-serve's own request fields: samplers and strategies (protocol.py has OpenAI's).

Clients send them at the top level of the body (the SDK's `extra_body`), or, for those
that can only pass vLLM's `vllm_xargs`, inside it (same names); a strategy may also be
named by prefixing the model name (`"model": "entropy_fork:NAME"`). STRATEGIES is the
one registry of strategy names: validation, the model-name prefix and dispatch
(server/strategies/) all derive from it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from entropy_serve.json_input import MalformedJSON, parse_json
from entropy_serve.samplers.chain import TemperatureMethod
from entropy_serve.tasks.voting import VoteMode

STRICT = ConfigDict(extra="forbid", strict=True)


class AdaptiveTemperature(BaseModel):
    """Per-token temperature from the model's entropy (samplers/temperature.py)."""

    model_config = STRICT

    method: TemperatureMethod
    tau: float = Field(0.5, ge=0.0, le=10.0, description="hapo: T = T_base * (1 + tau * h)")
    theta: float = Field(1.0, gt=0.0, le=100.0, description="edt: T = T0 * base^(theta / H)")
    base: float = Field(0.8, gt=0.0, lt=1.0, description="edt: N")
    range: float = Field(0.5, ge=0.0, le=5.0, description="dynatemp: T in [T - range, T + range]")
    exponent: float = Field(1.0, gt=0.0, le=10.0, description="dynatemp: (H / ln V)^exponent")


ConfidenceMeasure = Literal["topk", "entropy"]  # strategies/stopping.py


class EarlyStop(BaseModel):
    """Vote-level early stopping: leaves are sampled in waves, and sampling stops as soon
    as the rule finds the vote decided (strategies/stopping.py)."""

    model_config = STRICT

    rule: Literal["beta", "esc"] = "beta"
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="beta: P(leading answer is the majority) to stop at")
    window: int = Field(4, ge=2, le=64, description="esc: stop when this many latest answers agree")
    wave: int | None = Field(None, ge=1, le=1024, description="leaves per round (default: 4 for beta, window for esc)")

    @property
    def leaves_per_wave(self) -> int:
        if self.wave is not None:
            return self.wave
        return self.window if self.rule == "esc" else 4


def _early_stop_by_rule(value: Any) -> Any:
    """`"early_stop": "esc"` is that rule with its defaults."""
    return {"rule": value} if isinstance(value, str) else value


class VotingStrategy(BaseModel):
    """What strategies that vote over their leaves' answers share: how to vote, and when
    to stop sampling."""

    model_config = STRICT
    votes: ClassVar[bool] = True

    vote: VoteMode = "majority"
    early_stop: EarlyStop | None = None

    _early_stop_by_rule = field_validator("early_stop", mode="before")(_early_stop_by_rule)


class SelfConsistency(VotingStrategy):
    """n independent samples, one vote (server/strategies/self_consistency.py)."""

    name: Literal["self_consistency"]
    n: int = Field(8, ge=2, le=1024, description="independent samples to vote over (at most, with early_stop)")

    @property
    def num_leaves(self) -> int:
        return self.n


class EntropyFork(VotingStrategy):
    """ETTRL's tree rollouts: fork each tree at its highest-entropy tokens (strategies/entropy_fork.py).

    Defaults are ETTRL's (M=12 trees, N=2 forks, B=2 branches: 60 leaves)."""

    name: Literal["entropy_fork"]
    trees: int = Field(12, ge=1, le=1024, description="M: initial samples")
    forks: int = Field(2, ge=1, le=64, description="N: fork points per tree, at its highest-entropy tokens")
    branches: int = Field(2, ge=1, le=64, description="B: continuations sampled from each fork point")
    fork_rule: Literal["entropy", "savings"] = Field(
        "entropy",
        description="entropy: the highest-entropy tokens (ETTRL); savings: entropy x the prefix tokens a fork shares",
    )
    min_prefix: int = Field(0, ge=0, le=4096, description="fork no earlier than this many tokens into a tree")

    @property
    def num_leaves(self) -> int:
        return self.trees * (1 + self.forks * self.branches)


class DeepConf(BaseModel):
    """DeepConf online (Fu et al. 2025): warm-up traces set a confidence threshold; later
    traces that fall below it are stopped in the engine; a confidence-weighted vote
    (strategies/deepconf.py)."""

    model_config = STRICT
    votes: ClassVar[bool] = True
    vote: ClassVar[str] = "confidence_weighted"

    name: Literal["deepconf"]
    n: int = Field(16, ge=2, le=1024, description="traces at most, warm-up included")
    warmup: int = Field(4, ge=1, le=1024, description="traces sampled whole first; they set the threshold")
    confidence: ConfidenceMeasure = Field(
        "topk", description="token confidence: -mean of the top_k log-probabilities, or -entropy"
    )
    top_k: int = Field(20, ge=1, le=20, description="topk: log-probabilities per token")
    window: int = Field(16, ge=1, le=4096, description="tokens per group confidence (a sliding mean)")
    keep: float = Field(
        0.9, gt=0.0, le=1.0, description="share of warm-up traces the threshold would keep (0.9: DeepConf-high)"
    )
    wave: int = Field(4, ge=1, le=1024, description="traces per round after the warm-up")
    consensus: float = Field(
        0.95, gt=0.5, le=1.0, description="stop sampling when the winner holds this share of the vote"
    )

    @model_validator(mode="after")
    def _warmup_within_budget(self) -> DeepConf:
        if self.warmup >= self.n:
            raise ValueError(f"strategy.warmup: {self.warmup} must be less than strategy.n ({self.n})")
        return self

    @property
    def num_leaves(self) -> int:
        return self.n


class Escalate(BaseModel):
    """Entropy-gated escalation: answer greedily; keep that answer when its tokens' entropy
    is low, else sample confidence-weighted traces until the weighted vote is decided
    (strategies/escalate.py). Fields left out take the model's learned defaults
    (strategies/defaults.py), else these."""

    model_config = STRICT
    votes: ClassVar[bool] = True
    vote: ClassVar[str] = "confidence_weighted"

    name: Literal["escalate"]
    signal: Literal["answer", "mean", "lowest"] = Field(
        "answer",
        description="the greedy trace's uncertainty: its answer tokens' mean entropy, all tokens', "
        "or the highest window mean",
    )
    threshold_nats: float = Field(0.5, ge=0.0, le=100.0, description="escalate when the signal's entropy exceeds this")
    n: int = Field(16, ge=1, le=1024, description="sampled traces at most, after the greedy one")
    wave: int = Field(4, ge=1, le=1024, description="traces per round")
    stop_confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="stop when P(the leading answer is the majority) reaches this"
    )
    min_agreement: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="after a wave, stop when the leading answer holds less than this share of the vote "
        "(no majority to find); 0: never",
    )
    weighting: Literal["confidence", "uniform", "self_certainty"] = Field(
        "confidence",
        description="a trace's vote: exp(-its highest window mean entropy), 1, "
        "or CISC's softmax of its mean self-certainty",
    )
    cisc_temperature: float = Field(
        1.0, gt=0.0, le=100.0, description="self_certainty weighting: softmax temperature (nats)"
    )
    window: int = Field(16, ge=1, le=4096, description="tokens per window of the confidence")

    @property
    def num_leaves(self) -> int:
        return self.n + 1


class Auto(BaseModel):
    """The model's learned answering: escalation with its learned settings, at its learned
    temperature when the request sets none (strategies/escalate.py)."""

    model_config = STRICT
    votes: ClassVar[bool] = True
    vote: ClassVar[str] = "confidence_weighted"
    num_leaves: ClassVar[int] = 1  # the resolved Escalate's budget is checked

    name: Literal["auto"]


class Difficulty(BaseModel):
    """DiffAdapt: the difficulty probe picks the sampling (strategies/difficulty.py)."""

    model_config = STRICT
    votes: ClassVar[bool] = False
    num_leaves: ClassVar[int] = 1

    name: Literal["difficulty"]


def _name_of(model: type[BaseModel]) -> str:
    (name,) = get_args(model.model_fields["name"].annotation)
    return name


STRATEGIES: dict[str, type[BaseModel]] = {
    _name_of(m): m for m in (SelfConsistency, EntropyFork, DeepConf, Escalate, Auto, Difficulty)
}
Strategy = Annotated[Union[tuple(STRATEGIES.values())], Field(discriminator="name")]  # noqa: UP007 (a union built from the registry)

# Our sampler fields may also come inside vllm_xargs (for clients that only pass those).
SAMPLER_XARGS = ("typical_p", "adaptive_temperature", "return_entropy")


def _adaptive_from_string(value: str) -> dict:
    """vllm_xargs' spelling: a method name ("edt") or the JSON object as a string."""
    if not value.lstrip().startswith("{"):
        return {"method": value}
    try:
        return parse_json(value)
    except MalformedJSON as error:
        raise ValueError(f"vllm_xargs.adaptive_temperature: not valid JSON ({error})") from error


class ExtensionFields(BaseModel):
    """Our fields, shared by both endpoints' requests (mixed into protocol.SamplingRequest)."""

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
        if not colon or prefix not in STRATEGIES:
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
