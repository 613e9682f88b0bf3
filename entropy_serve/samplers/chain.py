"""The whole sampling-distribution chain for rows that use our samplers.

Order of operations, per row, equal to the order transformers applies the same warpers
(`GenerationMixin._get_logits_processor`: temperature, top-k, top-p, min-p, typical):

1. model entropy H of softmax(logits)  (the model's own uncertainty, reported back)
2. temperature: fixed T, or adaptive T(H) (hapo / edt / dynatemp, see temperature.py);
   logits /= T
3. top-k   (transformers' TopKLogitsWarper: ties with the k-th value are kept)
4. top-p   (TopPLogitsWarper)
5. min-p   (MinPLogitsWarper: relative to the most likely token, after temperature)
6. typical (TypicalLogitsWarper, see typical.py)
7. sampled entropy: the entropy of the distribution the token is drawn from

Each step runs only on the rows that enable it: a row with no filter pays for none.
Filtered tokens become -inf. The caller's logits tensor is modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropy_serve.samplers.entropy import entropy
from entropy_serve.samplers.temperature import dynatemp_temperature, edt_temperature, hapo_temperature
from entropy_serve.samplers.typical import typical_filter_

FIXED, HAPO, EDT, DYNATEMP = 0, 1, 2, 3
METHODS = {"hapo": HAPO, "edt": EDT, "dynatemp": DYNATEMP}


@dataclass(frozen=True)
class EntropyProfile:
    """A model's token-entropy statistics, as `hapo` needs them (see calibration)."""

    log_entropy_pivot: float
    log_entropy_spread: float


@dataclass
class RowParams:
    """Per-row sampling parameters, each a [rows] tensor; neutral values switch a step off."""

    temperature: torch.Tensor  # base temperature (> 0)
    method: torch.Tensor  # FIXED / HAPO / EDT / DYNATEMP (int64)
    hapo_tau: torch.Tensor
    edt_theta: torch.Tensor
    edt_base: torch.Tensor
    dynatemp_min: torch.Tensor
    dynatemp_max: torch.Tensor
    dynatemp_exponent: torch.Tensor
    top_k: torch.Tensor  # 0: off (int64)
    top_p: torch.Tensor  # 1.0: off
    min_p: torch.Tensor  # 0.0: off
    typical_p: torch.Tensor  # 1.0: off

    def select(self, rows: torch.Tensor) -> RowParams:
        return RowParams(**{name: value[rows] for name, value in vars(self).items()})

    @classmethod
    def uniform(cls, num_rows: int, device: torch.device | None = None, **values) -> RowParams:
        """Every row alike: NEUTRAL values, overridden by `values`."""
        return cls(
            **{
                name: torch.full((num_rows,), value, device=device, dtype=param_dtype(name))
                for name, value in {**NEUTRAL, **values}.items()
            }
        )


# The values that switch each step off (a row with these is left as the model made it).
NEUTRAL = dict(
    temperature=1.0, method=FIXED, hapo_tau=0.0, edt_theta=1.0, edt_base=0.8, dynatemp_min=1.0,
    dynatemp_max=1.0, dynatemp_exponent=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
)
INT_FIELDS = frozenset({"method", "top_k"})


def param_dtype(name: str) -> torch.dtype:
    return torch.int64 if name in INT_FIELDS else torch.float32


@dataclass
class ChainResult:
    model_entropy: torch.Tensor  # [rows] nats
    sampled_entropy: torch.Tensor  # [rows] nats
    temperature: torch.Tensor  # [rows] the temperature actually used


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


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Tokens to remove: below the row's k-th largest logit (ties kept). top_k [rows] >= 1."""
    k = top_k.clamp(max=logits.shape[-1])
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(-1, (k - 1).unsqueeze(-1))
    return logits < kth


def top_p_mask(logits: torch.Tensor, top_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= (1 - top_p).unsqueeze(-1)
    sorted_remove[..., -min_tokens_to_keep:] = False
    return sorted_remove.scatter(-1, sorted_indices, sorted_remove)


def min_p_mask(logits: torch.Tensor, min_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p.unsqueeze(-1) * probs.amax(dim=-1, keepdim=True)
    remove = probs < threshold
    sorted_indices = torch.argsort(logits, descending=True, dim=-1)
    sorted_remove = remove.gather(-1, sorted_indices)
    sorted_remove[..., :min_tokens_to_keep] = False
    return sorted_remove.scatter(-1, sorted_indices, sorted_remove)


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
    logits: torch.Tensor, params: RowParams, profile: EntropyProfile | None = None
) -> ChainResult:
    """Shape `logits` [rows, vocab] (fp32) in place, following the module's order."""
    model_entropy = entropy(logits)
    temperature = adaptive_temperature(model_entropy, params, profile, logits.shape[-1])
    logits.div_(temperature.unsqueeze(-1))
    _filter_rows(logits, params.top_k > 0, _masking(top_k_mask), params.top_k)
    _filter_rows(logits, params.top_p < 1.0, _masking(top_p_mask), params.top_p)
    _filter_rows(logits, params.min_p > 0.0, _masking(min_p_mask), params.min_p)
    _filter_rows(logits, params.typical_p < 1.0, typical_filter_, params.typical_p)
    return ChainResult(model_entropy, entropy(logits), temperature)
