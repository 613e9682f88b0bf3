"""Which sampler runs a request, resolved once per engine request.

A request that asks for `typical_p`, `adaptive_temperature` or `return_entropy` is
handed to our engine adapters: its RowSpec (in `SamplingParams.extra_args`) carries its
temperature, top-k, top-p and min-p, and vLLM's own copies are set to neutral values, so
the whole distribution is shaped in one place, in transformers' order (see
samplers/chain.py), and the entropy of the distribution the token is drawn from is
exact. Greedy requests (temperature 0) keep vLLM's argmax; ours only measure them.

vLLM's V1 runner applies penalties after custom logits processors, which would make the
reported sampled entropy wrong, so penalties cannot be combined with our samplers.
"""

from __future__ import annotations

import copy

from vllm import SamplingParams

from entropy_serve.samplers.chain import METHODS, EntropyProfile
from entropy_serve.server.adapters.spec import RowSpec
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol import SamplingRequest

GREEDY_EPS = 1e-5
PENALTIES = ("presence_penalty", "frequency_penalty", "repetition_penalty")


def uses_our_sampler(request: SamplingRequest) -> bool:
    return (
        (request.typical_p is not None and request.typical_p < 1.0)
        or request.adaptive_temperature is not None
        or request.return_entropy
    )


def sampler_labels(request: SamplingRequest) -> list[str]:
    """Names of the samplers a request uses (for the tokens-by-sampler counter)."""
    labels = []
    if request.typical_p is not None and request.typical_p < 1.0:
        labels.append("typical")
    if request.adaptive_temperature is not None:
        labels.append(request.adaptive_temperature.method)
    return labels or ["vllm"]


def check_sampler_request(request: SamplingRequest, profile: EntropyProfile | None) -> None:
    """400s for combinations our samplers cannot honour."""
    if not uses_our_sampler(request):
        return
    penalties = [name for name in PENALTIES if getattr(request, name) not in (None, 0.0, 1.0)]
    greedy = request.temperature is not None and request.temperature < GREEDY_EPS
    if penalties and not greedy:
        raise BadRequest(
            f"{penalties[0]}: penalties cannot be combined with typical_p, adaptive_temperature or "
            "return_entropy (vLLM would apply them after our sampler)",
            param=penalties[0],
        )
    adaptive = request.adaptive_temperature
    if adaptive is not None and greedy:
        raise BadRequest("adaptive_temperature: needs temperature > 0", param="adaptive_temperature")
    if adaptive is not None and adaptive.method == "hapo" and profile is None:
        raise BadRequest(
            "adaptive_temperature: hapo needs the model's entropy profile; create one with "
            "`entropy-serve calibrate --model ... --out PROFILE.json` and serve with --entropy-profile",
            param="adaptive_temperature",
        )


def engine_params(
    request: SamplingRequest, params: SamplingParams, key: str, profile: EntropyProfile | None
) -> SamplingParams:
    """`params` for one engine request, handed to our adapters if the request uses them."""
    if not uses_our_sampler(request):
        return params
    greedy = params.temperature < GREEDY_EPS
    spec = _row_spec(request, params, key, profile, greedy)
    ours = copy.copy(params)
    ours.extra_args = {**(params.extra_args or {}), **spec.to_extra_args()}
    if not greedy:  # the chain applies these; vLLM must not apply them a second time
        ours.temperature, ours.top_p, ours.top_k, ours.min_p = 1.0, 1.0, 0, 0.0
    return ours


def _row_spec(
    request: SamplingRequest, params: SamplingParams, key: str, profile: EntropyProfile | None, greedy: bool
) -> RowSpec:
    # Always published (metrics see every token of ours); responses show them on request.
    fields = dict(key=key, report=True, shape=not greedy)
    if profile is not None:
        fields.update(log_entropy_pivot=profile.log_entropy_pivot, log_entropy_spread=profile.log_entropy_spread)
    if greedy:
        return RowSpec(**fields)
    adaptive = request.adaptive_temperature
    if adaptive is not None:
        fields["method"] = METHODS[adaptive.method]
        fields.update(hapo_tau=adaptive.tau, edt_theta=adaptive.theta, edt_base=adaptive.base)
        fields.update(
            dynatemp_min=max(0.0, params.temperature - adaptive.range),
            dynatemp_max=params.temperature + adaptive.range,
            dynatemp_exponent=adaptive.exponent,
        )
    return RowSpec(
        temperature=params.temperature,
        top_k=max(params.top_k, 0),
        top_p=params.top_p,
        min_p=params.min_p,
        typical_p=request.typical_p if request.typical_p is not None else 1.0,
        **fields,
    )
