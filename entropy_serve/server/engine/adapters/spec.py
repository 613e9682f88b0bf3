"""What travels from the server to the engine adapters, and how.

Per request: a RowSpec (its entropy key, whether the chain shapes it, its
SamplerParams and its grammar, if any), stored under EXTRA_ARGS_KEY in `SamplingParams.extra_args`; requests
without one are left to vLLM untouched. Per engine: the model's entropy profile (for
`hapo`), set once in PROFILE_ENV before the engine starts; its processes inherit it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from entropy_serve.samplers.chain import EntropyProfile, SamplerParams

EXTRA_ARGS_KEY = "entropy_serve"
PROFILE_ENV = "ENTROPY_SERVE_PROFILE"


@dataclass(frozen=True)
class RowSpec:
    key: str  # unique per engine request: its entropies are published under it
    shape: bool  # run the sampler chain (False for greedy rows: vLLM takes the argmax, we measure)
    params: SamplerParams = SamplerParams()
    grammar: str | None = None  # xgrammar EBNF the row's output must match (adapters/grammar.py)
    grammar_prefix: list[int] = field(default_factory=list)  # prompt tokens the grammar accepts first
    seed: int | None = None  # the adapter draws the row's token with this seed (samplers/draw.py); shaped rows only
    # A warm-up row (server/engine/grammar_warmup.py): compile this grammar off the step, then
    # publish grammar_ready_key(it, the worker's engine) on the entropy channel.
    compile_grammar: str | None = None

    def to_extra_args(self) -> dict:
        return {EXTRA_ARGS_KEY: asdict(self)}

    @classmethod
    def from_extra_args(cls, extra_args: dict | None) -> RowSpec | None:
        if not extra_args or EXTRA_ARGS_KEY not in extra_args:
            return None
        try:
            fields = dict(extra_args[EXTRA_ARGS_KEY])
            return cls(**{**fields, "params": SamplerParams(**fields.get("params", {}))})
        except (TypeError, ValueError) as error:  # vLLM turns ValueError into an HTTP 400
            raise ValueError(f"malformed {EXTRA_ARGS_KEY} sampler spec: {error}") from error


def grammar_ready_key(grammar: str, engine: int = 0) -> str:
    """The entropy-channel key under which the workers of data-parallel engine `engine`
    say `grammar` is compiled (each engine compiles its own)."""
    return f"grammar-ready-{engine}-" + hashlib.sha256(grammar.encode()).hexdigest()[:32]


def profile_to_env(profile: EntropyProfile | None) -> dict[str, str]:
    """The environment that hands `profile` to the engine's adapters."""
    return {PROFILE_ENV: json.dumps(asdict(profile)) if profile is not None else ""}


def profile_from_env() -> EntropyProfile | None:
    value = os.environ.get(PROFILE_ENV)
    return EntropyProfile(**json.loads(value)) if value else None
