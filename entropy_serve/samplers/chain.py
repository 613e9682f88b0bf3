"""The whole sampling-distribution chain for rows that use our samplers.

Order of operations, per row, equal to the order transformers applies the same warpers
(`GenerationMixin._get_logits_processor`: temperature, top-k, top-p, min-p, typical):

1. model entropy H of softmax(logits)  (the model's own uncertainty, reported back)
1b. the caller's constraint, if any (a grammar mask: the filters below then choose among
   the tokens it allows, as they do after vLLM's own grammar mask)
1c. repetition, frequency and presence penalties (penalties.py), on rows that have any
2. temperature: fixed T, or adaptive T(H) (hapo / edt / dynatemp, see temperature.py);
   logits /= T
3. top-k   (filters.py; transformers' TopKLogitsWarper: ties with the k-th value are kept)
4. top-p   (TopPLogitsWarper)
5. min-p   (MinPLogitsWarper: relative to the most likely token, after temperature)
6. typical (TypicalLogitsWarper, see typical.py)
7. sampled entropy: the entropy of the distribution the token is drawn from

Each step runs only on the rows that enable it: a row with no filter pays for none.
Filtered tokens become -inf. The caller's logits tensor is modified in place.

Rows with `vllm_order` (the server's plain seeded requests on CPU, which our adapter
draws for vLLM: samplers/draw.py) take min-p before top-k and top-p instead, the order
of vLLM's sampler, so their distribution is the one vLLM itself would sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch

from entropy_serve.samplers.entropy import entropy, entropy_and_self_certainty
from entropy_serve.samplers.filters import min_p_mask, top_k_mask, top_p_mask
from entropy_serve.samplers.penalties import TokenHistory, apply_penalties_
from entropy_serve.samplers.temperature import dynatemp_temperature, edt_temperature, hapo_temperature
from entropy_serve.samplers.typical import typical_filter_

FIXED, HAPO, EDT, DYNATEMP = 0, 1, 2, 3
TemperatureMethod = Literal["hapo", "edt", "dynatemp"]  # a request's adaptive_temperature.method
METHODS = dict(zip(get_args(TemperatureMethod), (HAPO, EDT, DYNATEMP), strict=True))


@dataclass(frozen=True)
class EntropyProfile:
    """A model's token-entropy statistics, as `hapo` needs them (see calibration)."""

    log_entropy_pivot: float
    log_entropy_spread: float


@dataclass(frozen=True)
class SamplerParams:
    """One request's sampler parameters: the one definition of their names, types and
    neutral values (the defaults, which switch each step off). The server builds one per
    request (server/core/sampler_plan.py), it travels to the engine inside `SamplingParams.extra_args`
    (server/engine/adapters/spec.py), and the adapter stacks a batch of them into RowParams."""

    temperature: float = 1.0  # base temperature (> 0)
    method: int = FIXED  # FIXED / HAPO / EDT / DYNATEMP
    hapo_tau: float = 0.0
    edt_theta: float = 1.0
    edt_base: float = 0.8
    dynatemp_min: float = 1.0
    dynatemp_max: float = 1.0
    dynatemp_exponent: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    typical_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off
    frequency_penalty: float = 0.0  # 0.0: off
    presence_penalty: float = 0.0  # 0.0: off
    vllm_order: int = 0  # 1: min-p before top-k and top-p, as vLLM's sampler (see the module doc)


PARAM_DTYPES = {f.name: torch.int64 if f.type == "int" else torch.float32 for f in fields(SamplerParams)}


@dataclass
class RowParams:
    """SamplerParams of a batch: one [rows] tensor per field, same names (see `stack`)."""

    temperature: torch.Tensor
    method: torch.Tensor
    hapo_tau: torch.Tensor
    edt_theta: torch.Tensor
    edt_base: torch.Tensor
    dynatemp_min: torch.Tensor
    dynatemp_max: torch.Tensor
    dynatemp_exponent: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    typical_p: torch.Tensor
    repetition_penalty: torch.Tensor
    frequency_penalty: torch.Tensor
    presence_penalty: torch.Tensor
    vllm_order: torch.Tensor

    def has_penalties(self) -> bool:
        return bool(
            ((self.repetition_penalty != 1.0) | (self.frequency_penalty != 0.0) | (self.presence_penalty != 0.0)).any()
        )

    @classmethod
    def stack(cls, rows: list[SamplerParams], device: torch.device | None = None) -> RowParams:
        """RowParams [len(rows)] from one SamplerParams per row."""
        return cls(
            **{
                name: torch.tensor([getattr(row, name) for row in rows], dtype=dtype, device=device)
                for name, dtype in PARAM_DTYPES.items()
            }
        )

    @classmethod
    def uniform(cls, num_rows: int, device: torch.device | None = None, **values) -> RowParams:
        """Every row alike: SamplerParams(**values) (neutral where not given)."""
        return cls.stack([SamplerParams(**values)] * num_rows, device)

    def select(self, rows: torch.Tensor) -> RowParams:
        return RowParams(**{name: value[rows] for name, value in vars(self).items()})


# RowParams restates SamplerParams' names only to type them as tensors: keep them equal.
assert [f.name for f in fields(RowParams)] == list(PARAM_DTYPES), "RowParams must mirror SamplerParams"


@dataclass
class ChainResult:
    model_entropy: torch.Tensor  # [rows] nats
    sampled_entropy: torch.Tensor  # [rows] nats
    temperature: torch.Tensor  # [rows] the temperature actually used
    model_self_certainty: torch.Tensor  # [rows] nats, KL(uniform || the model's distribution)


def adaptive_temperature(
    model_entropy: torch.Tensor, params: RowParams, profile: EntropyProfile | None, vocab_size: int
) -> torch.Tensor:
    temperature = params.temperature.clone()
    for method in (HAPO, EDT, DYNATEMP):
        rows = (params.method == method).nonzero().squeeze(-1)
        if rows.numel() == 0:
            continue
        h, p = model_entropy[rows], params.select(rows)
        if method == HAPO:
            if profile is None:
                raise ValueError("hapo needs an entropy profile; none is loaded")
            t = hapo_temperature(h, p.temperature, p.hapo_tau, profile.log_entropy_pivot, profile.log_entropy_spread)
        elif method == EDT:
            t = edt_temperature(h, p.temperature, p.edt_theta, p.edt_base)
        else:
            t = dynatemp_temperature(h, p.dynatemp_min, p.dynatemp_max, p.dynatemp_exponent, vocab_size)
        temperature[rows] = t
    return temperature


def _masking(mask_fn):
    """An in-place filter from a function returning the mask of tokens to remove."""

    def filter_(logits: torch.Tensor, value: torch.Tensor) -> None:
        logits.masked_fill_(mask_fn(logits, value), float("-inf"))

    return filter_


def _filter_rows(logits: torch.Tensor, enabled: torch.Tensor, filter_, value: torch.Tensor) -> None:
    if bool(enabled.all()):  # common case: every row filters, no gather/scatter
        filter_(logits, value)
        return
    rows = enabled.nonzero().squeeze(-1)
    if rows.numel() == 0:
        return
    sub = logits[rows]
    filter_(sub, value[rows])
    logits[rows] = sub


def apply_chain(
    logits: torch.Tensor,
    params: RowParams,
    profile: EntropyProfile | None = None,
    constrain: Callable[[torch.Tensor], None] | None = None,
    history: TokenHistory | None = None,
) -> ChainResult:
    """Shape `logits` [rows, vocab] (fp32) in place, following the module's order;
    `constrain` masks `logits` in place (step 1b); `history` is what penalties read
    (needed when a row has any)."""
    model_entropy, model_self_certainty = entropy_and_self_certainty(logits)
    if constrain is not None:
        constrain(logits)
    if params.has_penalties():
        if history is None:
            raise ValueError("penalties need the rows' token history")
        apply_penalties_(logits, history, params.repetition_penalty, params.frequency_penalty, params.presence_penalty)
    temperature = adaptive_temperature(model_entropy, params, profile, logits.shape[-1])
    logits.div_(temperature.unsqueeze(-1))
    min_p_first = params.vllm_order.bool()
    _filter_rows(logits, (params.min_p > 0.0) & min_p_first, _masking(min_p_mask), params.min_p)
    _filter_rows(logits, params.top_k > 0, _masking(top_k_mask), params.top_k)
    _filter_rows(logits, params.top_p < 1.0, _masking(top_p_mask), params.top_p)
    _filter_rows(logits, (params.min_p > 0.0) & ~min_p_first, _masking(min_p_mask), params.min_p)
    _filter_rows(logits, params.typical_p < 1.0, typical_filter_, params.typical_p)
    return ChainResult(model_entropy, entropy(logits), temperature, model_self_certainty)
