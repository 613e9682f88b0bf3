"""Request -> plan (chain, sampler parameters, engine parameters, jobs), without an engine."""

from __future__ import annotations

import pytest

from entropy_serve.samplers.chain import EDT, FIXED, HAPO, EntropyProfile, SamplerParams
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.planning import Planner
from entropy_serve.server.core.sampler_plan import Chain, engine_sampling_params, plan_sampler
from entropy_serve.server.engine.adapters.spec import RowSpec
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.requests import CompletionRequest

PROFILE = EntropyProfile(log_entropy_pivot=1.0, log_entropy_spread=2.0)


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def __len__(self) -> int:
        return 1000


class FakeEngine:
    max_model_len = 100
    tokenizer = FakeTokenizer()

    def require_engine(self):
        return self

    def ready_tokenizer(self):
        return self.tokenizer


def request(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="p", **fields)


def plan(req: CompletionRequest, profile: EntropyProfile | None = PROFILE, draws_seeds: bool = False):
    """As on GPU (vLLM draws seeds) unless `draws_seeds`, as on CPU."""
    return Planner(ServerConfig(model="m", served_model_name="m"), FakeEngine(), profile, draws_seeds).plan(req)


def specs(req: CompletionRequest) -> list[RowSpec]:
    return [RowSpec.from_extra_args(job.params.extra_args) for job in plan(req).jobs]


def test_plain_requests_stay_with_vllm():
    req = request(temperature=0.7, top_p=0.9)
    sampler = plan_sampler(req, PROFILE)
    assert sampler.chain is Chain.VLLM and sampler.labels == ("vllm",)
    (job,) = plan(req).jobs
    assert (job.params.temperature, job.params.top_p) == (0.7, 0.9)
    assert RowSpec.from_extra_args(job.params.extra_args) is None


def test_our_rows_take_over_temperature_and_filters():
    req = request(temperature=0.7, top_p=0.9, top_k=20, min_p=0.1, typical_p=0.5)
    (job,) = plan(req).jobs
    params = job.params
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    assert RowSpec.from_extra_args(params.extra_args) == RowSpec(
        key=job.key,
        shape=True,
        params=SamplerParams(temperature=0.7, method=FIXED, top_k=20, top_p=0.9, min_p=0.1, typical_p=0.5),
    )
    assert plan_sampler(req, PROFILE).labels == ("typical",)


def test_adaptive_parameters_reach_the_spec():
    (spec,) = specs(request(temperature=0.8, adaptive_temperature={"method": "edt", "theta": 0.3, "base": 0.7}))
    assert (spec.params.method, spec.params.edt_theta, spec.params.edt_base, spec.params.temperature) == (
        EDT,
        0.3,
        0.7,
        0.8,
    )
    (spec,) = specs(
        request(temperature=1.0, adaptive_temperature={"method": "dynatemp", "range": 0.6, "exponent": 2.0})
    )
    assert (spec.params.dynatemp_min, spec.params.dynatemp_max, spec.params.dynatemp_exponent) == pytest.approx(
        (0.4, 1.6, 2.0)
    )
    (spec,) = specs(request(adaptive_temperature={"method": "hapo"}))
    assert (spec.params.method, spec.params.hapo_tau) == (HAPO, 0.5)  # the documented serving default


def test_greedy_rows_are_only_measured():
    req = request(temperature=0.0, return_entropy=True, typical_p=0.3)
    assert plan_sampler(req, PROFILE).chain is Chain.GREEDY
    (job,) = plan(req).jobs
    assert job.params.temperature == 0.0
    spec = RowSpec.from_extra_args(job.params.extra_args)
    assert not spec.shape and spec.params == SamplerParams()


def test_other_extra_args_are_kept():
    (job,) = plan(request(return_entropy=True, vllm_xargs={"mine": 1})).jobs
    assert job.params.extra_args["mine"] == 1


def test_n_samples_of_ours_are_one_job_each_with_seeds_and_choice_indices():
    req = CompletionRequest(model="m", prompt=["a", "bc"], n=3, seed=10, return_entropy=True)
    planned = plan(req)
    assert [(j.prompt_index, j.first_sample, j.params.n, j.params.seed) for j in planned.jobs] == [
        (p, i, 1, 10 + i) for p in range(2) for i in range(3)
    ]
    assert len({j.key for j in planned.jobs}) == 6
    assert [planned.choice_index(j.prompt_index, j.first_sample) for j in planned.jobs] == list(range(6))
    vllm_plan = plan(req.model_copy(update={"return_entropy": False}))
    assert [(j.params.n, j.params.seed) for j in vllm_plan.jobs] == [(3, 10), (3, 10)]


def test_where_the_adapter_draws_seeds_vllm_gets_none():
    req = CompletionRequest(model="m", prompt=["a", "bc"], n=2, seed=10, return_entropy=True, temperature=0.7)
    planned = plan(req, draws_seeds=True)
    assert [j.params.seed for j in planned.jobs] == [None] * 4
    assert [RowSpec.from_extra_args(j.params.extra_args).seed for j in planned.jobs] == [10, 11, 10, 11]
    greedy = plan(
        req.model_copy(update={"temperature": 0.0, "n": 1}), draws_seeds=True
    )  # a seed changes nothing: no draw
    assert [RowSpec.from_extra_args(j.params.extra_args).seed for j in greedy.jobs] == [None] * 2


def test_a_plain_seeded_request_is_drawn_by_the_adapter_with_vllms_sampling():
    fields = dict(
        seed=5,
        n=2,
        temperature=0.8,
        top_p=0.9,
        top_k=7,
        min_p=0.05,
        frequency_penalty=0.4,
        presence_penalty=0.2,
        repetition_penalty=1.1,
        logit_bias={"3": 2.0},
    )
    req = request(**fields)
    sampler = plan_sampler(req, PROFILE, draws_seeds=True)
    assert (sampler.chain, sampler.labels, sampler.draws_seed) == (Chain.SEEDED, ("vllm",), True)
    planned = plan(req, draws_seeds=True)
    assert not planned.measures_entropy
    for i, job in enumerate(planned.jobs):
        params = job.params
        assert (params.n, params.seed, params.temperature, params.top_p, params.top_k, params.min_p) == (
            1,
            None,
            1.0,
            1.0,
            0,
            0.0,
        )
        assert (params.frequency_penalty, params.presence_penalty, params.repetition_penalty) == (0.0, 0.0, 1.0)
        assert params.logit_bias == {3: 2.0}  # vLLM applies it before our adapter, as it would anyway
        assert RowSpec.from_extra_args(params.extra_args) == RowSpec(
            key=job.key,
            shape=True,
            seed=5 + i,
            params=SamplerParams(
                temperature=0.8,
                top_k=7,
                top_p=0.9,
                min_p=0.05,
                repetition_penalty=1.1,
                frequency_penalty=0.4,
                presence_penalty=0.2,
                vllm_order=1,
            ),
        )
    unseeded = plan(req.model_copy(update={"seed": None}), draws_seeds=True)
    assert plan_sampler(req.model_copy(update={"seed": None}), PROFILE, True).chain is Chain.VLLM
    assert [(j.params.n, j.params.temperature) for j in unseeded.jobs] == [(2, 0.8)]


def test_a_seeded_constraint_stays_with_vllm_where_the_adapter_draws():
    req = request(seed=1, response_format={"type": "json_object"})
    (job,) = plan(req, draws_seeds=True).jobs
    assert job.params.structured_outputs is not None
    assert RowSpec.from_extra_args(job.params.extra_args).grammar is None


@pytest.mark.parametrize(
    "fields,profile,message",
    [
        ({"adaptive_temperature": {"method": "hapo"}}, None, "entropy-serve calibrate"),
        ({"adaptive_temperature": {"method": "edt"}, "temperature": 0.0}, PROFILE, "temperature > 0"),
        ({"typical_p": 0.5, "frequency_penalty": 0.3}, PROFILE, "frequency_penalty"),
        ({"return_entropy": True, "repetition_penalty": 1.2}, PROFILE, "repetition_penalty"),
    ],
)
def test_combinations_we_cannot_honour_are_400(fields, profile, message):
    with pytest.raises(BadRequest, match=message):
        plan_sampler(request(**fields), profile)


def test_greedy_with_penalties_may_still_report():
    sampler = plan_sampler(request(temperature=0.0, return_entropy=True, presence_penalty=0.5), None)
    assert sampler.chain is Chain.GREEDY


def test_engine_parameters_are_built_once_from_the_plan():
    req = request(temperature=0.5, typical_p=0.9)
    params = engine_sampling_params(req, plan_sampler(req, None), max_tokens=9)
    assert (params.temperature, params.max_tokens) == (1.0, 9)  # our chain applies the 0.5


# Prompt and max_tokens bounds.


def planner(**limits) -> Planner:
    return Planner(ServerConfig(model="m", served_model_name="m", **limits), FakeEngine(), None)


def test_default_max_tokens_is_what_is_left_of_the_context():
    assert planner().resolve_max_tokens(None, 30) == 70


def test_configured_limit_caps_the_default():
    assert planner(max_tokens_limit=20).resolve_max_tokens(None, 30) == 20


def test_requested_max_tokens_within_bounds_is_kept():
    assert planner().resolve_max_tokens(70, 30) == 70


def test_requested_max_tokens_beyond_the_context_is_400():
    with pytest.raises(BadRequest, match="max_tokens: 71"):
        planner().resolve_max_tokens(71, 30)


def test_prompt_filling_the_context_is_400():
    with pytest.raises(BadRequest, match="100 tokens is longer than the 99 allowed") as raised:
        planner().resolve_max_tokens(None, 100)
    assert raised.value.code == "context_length_exceeded"


def test_configured_prompt_limit():
    with pytest.raises(BadRequest, match="longer than the 10 allowed"):
        planner(max_prompt_tokens=10).resolve_max_tokens(None, 11)


def test_config_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="max_n"):
        ServerConfig(model="m", served_model_name="m", max_n=0)
