"""Per-request sampler parameters, as they travel inside `SamplingParams.extra_args`.

The server resolves a request once (base temperature, filters, adaptive method, the
model's entropy profile) into a RowSpec and stores it under EXTRA_ARGS_KEY; the engine
adapters read it back for each row. Requests without it are left to vLLM untouched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from entropy_serve.samplers.chain import FIXED, EntropyProfile, RowParams, param_dtype

EXTRA_ARGS_KEY = "entropy_serve"


@dataclass(frozen=True)
class RowSpec:
    key: str  # unique per engine request: entropies are published under it
    report: bool = False  # publish per-token entropies for this request
    shape: bool = False  # run the sampler chain (False for greedy rows: vLLM takes argmax)
    temperature: float = 1.0
    method: int = FIXED
    hapo_tau: float = 0.0
    edt_theta: float = 1.0
    edt_base: float = 0.8
    dynatemp_min: float = 1.0
    dynatemp_max: float = 1.0
    dynatemp_exponent: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    log_entropy_pivot: float = 0.0
    log_entropy_spread: float = 1.0

    def to_extra_args(self) -> dict:
        return {EXTRA_ARGS_KEY: asdict(self)}

    @classmethod
    def from_extra_args(cls, extra_args: dict | None) -> RowSpec | None:
        if not extra_args or EXTRA_ARGS_KEY not in extra_args:
            return None
        try:
            return cls(**extra_args[EXTRA_ARGS_KEY])
        except TypeError as error:  # vLLM turns ValueError into an HTTP 400
            raise ValueError(f"malformed {EXTRA_ARGS_KEY} sampler spec: {error}") from error

    @property
    def profile(self) -> EntropyProfile:
        return EntropyProfile(self.log_entropy_pivot, self.log_entropy_spread)


PARAM_FIELDS = [f.name for f in fields(RowParams)]


def stack_params(specs: list[RowSpec], device: torch.device) -> RowParams:
    """RowParams [rows] from one RowSpec per row."""
    columns = {}
    for name in PARAM_FIELDS:
        columns[name] = torch.tensor([getattr(s, name) for s in specs], dtype=param_dtype(name), device=device)
    return RowParams(**columns)
