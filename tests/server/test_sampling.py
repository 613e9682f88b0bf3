"""Request -> sampler resolution, without an engine."""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from entropy_serve.samplers.chain import EDT, FIXED, HAPO, EntropyProfile
from entropy_serve.server.adapters.spec import RowSpec
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol import CompletionRequest
from entropy_serve.server.sampling import check_sampler_request, engine_params, sampler_labels

PROFILE = EntropyProfile(log_entropy_pivot=1.0, log_entropy_spread=2.0)


def request(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="p", **fields)


def test_plain_requests_stay_with_vllm():
    params = SamplingParams(temperature=0.7, top_p=0.9)
    assert engine_params(request(), params, "k", PROFILE) is params
    assert sampler_labels(request()) == ["vllm"]


def test_our_rows_take_over_temperature_and_filters():
    req = request(temperature=0.7, top_p=0.9, top_k=20, min_p=0.1, typical_p=0.5)
    params = engine_params(req, req.to_sampling_params(8), "key-1", PROFILE)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    spec = RowSpec.from_extra_args(params.extra_args)
    assert spec == RowSpec(
        key="key-1", report=True, shape=True, temperature=0.7, method=FIXED, top_k=20, top_p=0.9, min_p=0.1,
        typical_p=0.5, log_entropy_pivot=1.0, log_entropy_spread=2.0,
    )


def test_adaptive_parameters_reach_the_spec():
    req = request(temperature=0.8, adaptive_temperature={"method": "edt", "theta": 0.3, "base": 0.7})
    spec = RowSpec.from_extra_args(engine_params(req, req.to_sampling_params(8), "k", PROFILE).extra_args)
    assert (spec.method, spec.edt_theta, spec.edt_base, spec.temperature) == (EDT, 0.3, 0.7, 0.8)
    req = request(temperature=1.0, adaptive_temperature={"method": "dynatemp", "range": 0.6, "exponent": 2})
    spec = RowSpec.from_extra_args(engine_params(req, req.to_sampling_params(8), "k", PROFILE).extra_args)
    assert (spec.dynatemp_min, spec.dynatemp_max, spec.dynatemp_exponent) == pytest.approx((0.4, 1.6, 2.0))
    req = request(adaptive_temperature={"method": "hapo"})
    spec = RowSpec.from_extra_args(engine_params(req, req.to_sampling_params(8), "k", PROFILE).extra_args)
    assert (spec.method, spec.hapo_tau) == (HAPO, 0.5)  # the documented serving default


def test_greedy_rows_are_only_measured():
    req = request(temperature=0.0, return_entropy=True, typical_p=0.3)
    params = engine_params(req, req.to_sampling_params(8), "k", PROFILE)
    assert params.temperature == 0.0
    spec = RowSpec.from_extra_args(params.extra_args)
    assert spec.report and not spec.shape


def test_other_extra_args_are_kept():
    req = request(return_entropy=True, vllm_xargs={"mine": 1})
    assert engine_params(req, req.to_sampling_params(8), "k", None).extra_args["mine"] == 1


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
        check_sampler_request(request(**fields), profile)


def test_greedy_with_penalties_may_still_report():
    check_sampler_request(request(temperature=0.0, return_entropy=True, presence_penalty=0.5), None)
