"""The sampler decision, pure: which chain samples a request, and with what.

`plan_sampler` decides it once per request: the chain; our chain's parameters as one
SamplerParams; the labels metrics count the request under; the 400s for combinations
our samplers cannot honour. `engine_sampling_params` builds vLLM's SamplingParams from
it, once; `checked_constraint` resolves the output constraint. planning.py builds the
engine's jobs from them.

The chains. OURS: typical_p, adaptive_temperature or return_entropy at temperature > 0.
Our engine adapter applies temperature, top-k, top-p, min-p and typical in
transformers' order (samplers/chain.py) and vLLM's own copies are set to neutral, so
the entropy of the distribution a token is drawn from is exact. GREEDY: the same fields
at temperature 0; vLLM takes the argmax, the adapter only measures. VLLM: none of our
fields; vLLM samples as usual and our adapter never sees the request.
vLLM's V1 runner applies penalties after custom logits processors, which would make
the reported sampled entropy wrong, so penalties cannot be combined with our chain.

Seeds, where the adapter draws them (on CPU, see engine/holder.py's `seeds_drawn_by_adapter`):
vLLM gets no seed, and the adapter draws the row's token with the request's seed
(samplers/draw.py). A seeded OURS row is drawn after our chain; a seeded request with
none of our fields is SEEDED: vLLM still applies what it applies before logits
processors (allowed_token_ids, bad_words, min_tokens, logit_bias, structured outputs),
and our adapter applies the rest of vLLM's sampling in vLLM's order (penalties,
temperature, min-p, top-k, top-p), then draws. Its entropy is measured, not reported.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind

from entropy_serve.samplers.chain import METHODS, EntropyProfile, SamplerParams
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.constraints import OutputConstraint
from entropy_serve.server.protocol.requests import ChatCompletionRequest, SamplingRequest

GREEDY_EPS = 1e-5


class Chain(enum.Enum):
    VLLM = "vllm"  # vLLM samples; our adapter never sees the request
    OURS = "ours"  # our adapter shapes the distribution and measures it
    GREEDY = "greedy"  # vLLM takes the argmax; our adapter measures the entropy
    SEEDED = "seeded"  # a plain seeded request our adapter draws for vLLM (the module doc)


@dataclass(frozen=True)
class SamplerPlan:
    chain: Chain
    params: SamplerParams  # what our chain applies (neutral unless chain is OURS)
    labels: tuple[str, ...]  # the tokens-by-sampler counter's labels
    draws_seed: bool = False  # the adapter draws with the request's seed; vLLM gets none

    @property
    def vllm_samples(self) -> bool:
        """vLLM applies the request's temperature, filters and penalties itself."""
        return self.chain in (Chain.VLLM, Chain.GREEDY)

    @property
    def vllm_constrains(self) -> bool:
        """vLLM applies the request's structured-output constraint itself."""
        return self.chain in (Chain.VLLM, Chain.SEEDED)


def is_greedy(request: SamplingRequest) -> bool:
    return request.temperature is not None and request.temperature < GREEDY_EPS


def plan_sampler(
    request: SamplingRequest, profile: EntropyProfile | None, draws_seeds: bool = False, measure_entropy: bool = False
) -> SamplerPlan:
    """Which chain samples `request`, with what; 400s for what our chain cannot honour.
    `draws_seeds`: whether the adapter draws seeded requests (see the module doc).
    `measure_entropy`: a strategy needs the entropies, whether or not the client asked for
    them (`return_entropy`, the client's own field)."""
    typical = request.typical_p is not None and request.typical_p < 1.0
    adaptive = request.adaptive_temperature
    labels = (("typical",) if typical else ()) + ((adaptive.method,) if adaptive is not None else ())
    labels = labels or ("vllm",)
    draws_seed = draws_seeds and request.seed is not None and not is_greedy(request)
    if not (typical or adaptive is not None or request.return_entropy or measure_entropy):
        if draws_seed:
            return SamplerPlan(Chain.SEEDED, vllm_sampling(request), labels, draws_seed=True)
        return SamplerPlan(Chain.VLLM, SamplerParams(), labels)
    constraints = request.token_constraints()
    if constraints:
        raise BadRequest(
            f"{constraints[0]}: cannot be combined with typical_p, adaptive_temperature or return_entropy yet "
            "(vLLM applies it before our sampler measures the model's entropy, which would then be misreported)",
            param=constraints[0],
        )
    penalties = request.penalties()
    if is_greedy(request):
        if adaptive is not None:
            raise BadRequest("adaptive_temperature: needs temperature > 0", param="adaptive_temperature")
        return SamplerPlan(Chain.GREEDY, SamplerParams(), labels)
    if penalties:
        raise BadRequest(
            f"{penalties[0]}: penalties cannot be combined with typical_p, adaptive_temperature or "
            "return_entropy (vLLM would apply them after our sampler)",
            param=penalties[0],
        )
    if adaptive is not None and adaptive.method == "hapo" and profile is None:
        raise BadRequest(
            "adaptive_temperature: hapo needs the model's entropy profile; create one with "
            "`entropy-serve calibrate --model ... --out PROFILE.json` and serve with --entropy-profile",
            param="adaptive_temperature",
        )
    temperature = 1.0 if request.temperature is None else request.temperature
    fields = dict(
        **_filters(request),
        typical_p=1.0 if request.typical_p is None else request.typical_p,
    )
    if adaptive is not None:
        fields.update(
            method=METHODS[adaptive.method],
            hapo_tau=adaptive.tau,
            edt_theta=adaptive.theta,
            edt_base=adaptive.base,
            dynatemp_min=max(0.0, temperature - adaptive.range),
            dynatemp_max=temperature + adaptive.range,
            dynatemp_exponent=adaptive.exponent,
        )
    return SamplerPlan(Chain.OURS, SamplerParams(**fields), labels, draws_seed=draws_seed)


def _filters(request: SamplingRequest) -> dict:
    """Temperature and filters, vLLM's defaults where the request leaves a field out."""
    return dict(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_k=max(request.top_k or 0, 0),
        top_p=1.0 if request.top_p is None else request.top_p,
        min_p=request.min_p or 0.0,
    )


def vllm_sampling(request: SamplingRequest) -> SamplerParams:
    """vLLM's own sampling of `request` as our chain's parameters, in vLLM's order (a
    SEEDED row: the module doc)."""
    return SamplerParams(
        **_filters(request),
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        frequency_penalty=request.frequency_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
        vllm_order=1,
    )


def engine_sampling_params(
    request: SamplingRequest, sampler: SamplerPlan, max_tokens: int, constraint: OutputConstraint | None = None
) -> SamplingParams:
    """vLLM's parameters for `request`, built once: temperature and filters are vLLM's
    own only where our chain does not apply them, and so is the constraint; the seed is
    vLLM's only where our adapter does not draw with it."""
    vllm_samples = sampler.vllm_samples
    optional = {
        "temperature": request.temperature if vllm_samples else 1.0,
        "top_p": request.top_p if vllm_samples else 1.0,
        "top_k": request.top_k if vllm_samples else 0,
        "min_p": request.min_p if vllm_samples else 0.0,
        "presence_penalty": request.presence_penalty if vllm_samples else 0.0,
        "frequency_penalty": request.frequency_penalty if vllm_samples else 0.0,
        "repetition_penalty": request.repetition_penalty if vllm_samples else 1.0,
    }
    try:
        return SamplingParams(
            n=request.n,
            max_tokens=max_tokens,
            stop=request.stop_sequences(),
            seed=None if sampler.draws_seed else request.seed,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            logprobs=request.num_top_logprobs(),
            prompt_logprobs=request.num_prompt_logprobs(),
            logit_bias={int(token): bias for token, bias in request.logit_bias.items()} if request.logit_bias else None,
            allowed_token_ids=request.allowed_token_ids,
            bad_words=request.bad_words,
            structured_outputs=constraint.params if constraint and sampler.vllm_constrains else None,
            # vLLM's tool parsers need the special tokens some models mark their calls with.
            skip_special_tokens=not (isinstance(request, ChatCompletionRequest) and request.tool_mode() == "auto"),
            extra_args=request.vllm_xargs,
            output_kind=RequestOutputKind.DELTA,  # submission.py accumulates or streams deltas
            **{k: v for k, v in optional.items() if v is not None},
        )
    except (ValueError, VLLMValidationError) as error:  # vLLM's own cross-field checks
        raise BadRequest(str(error)) from error


def checked_constraint(request: SamplingRequest) -> OutputConstraint | None:
    """The request's output constraint (400s for what cannot be combined with one)."""
    constraint = request.constraint()
    if constraint is not None and request.min_tokens > 0:
        raise BadRequest(
            f"min_tokens: cannot be combined with {constraint.field} (the grammar may have to end before it)",
            param="min_tokens",
        )
    return constraint
