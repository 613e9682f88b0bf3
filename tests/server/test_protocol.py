"""Request validation and the request -> SamplingParams mapping, without an engine."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from vllm.sampling_params import RequestOutputKind

from entropy_serve.server.core.sampler_plan import engine_sampling_params, plan_sampler
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.field_kinds import IGNORED
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest, SamplingRequest


def completion(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="p", **fields)


def sampling_params(request: SamplingRequest, max_tokens: int):
    return engine_sampling_params(request, plan_sampler(request, None), max_tokens)


def test_defaults_map_to_vllm_defaults():
    params = sampling_params(completion(), 7)
    assert params.max_tokens == 7
    assert params.n == 1
    assert params.temperature == 1.0 and params.top_p == 1.0
    assert params.logprobs is None
    assert params.seed is None
    assert params.output_kind is RequestOutputKind.DELTA


def test_every_sampling_field_reaches_vllm():
    request = completion(
        n=3,
        temperature=0.7,
        top_p=0.9,
        stop="\n",
        seed=5,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        top_k=40,
        min_p=0.1,
        repetition_penalty=1.2,
        logprobs=2,
        min_tokens=1,
        ignore_eos=True,
        vllm_xargs={"a": 1},
    )
    params = sampling_params(request, 10)
    assert (params.n, params.temperature, params.top_p, params.seed) == (3, 0.7, 0.9, 5)
    assert params.stop == ["\n"]
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert (params.top_k, params.min_p, params.repetition_penalty) == (40, 0.1, 1.2)
    assert params.logprobs == 2
    assert params.min_tokens == 1 and params.ignore_eos
    assert params.extra_args == {"a": 1}


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 2.01},
        {"top_p": 0.0},
        {"n": 0},
        {"max_tokens": 0},
        {"seed": 2**64},
        {"logprobs": 21},
        {"stop": [""]},
        {"stream_options": {"include_usage": True}},
        {"suffix": "x"},
        {"prompt": []},
        {"prompt_logprobs": 21},
        {"prompt_logprobs": -1},
        {"prompt_logprobs": 1, "stream": True},
        {"echo": True, "strategy": "self_consistency"},
        {"prompt_logprobs": 0, "strategy": "self_consistency"},
    ],
)
def test_invalid_values_raise(fields):
    with pytest.raises(ValidationError):
        CompletionRequest(**{"model": "m", "prompt": "p", **fields})


def test_echo_with_logprobs_scores_the_prompt():
    request = completion(echo=True, max_tokens=0, logprobs=3)
    assert request.echo_only
    assert request.num_prompt_logprobs() == 3
    assert sampling_params(request, 1).prompt_logprobs == 3
    # An explicit prompt_logprobs wins; without echo, logprobs score only generated tokens.
    assert completion(echo=True, logprobs=3, prompt_logprobs=5).num_prompt_logprobs() == 5
    assert completion(logprobs=3).num_prompt_logprobs() is None
    assert not completion(echo=True, max_tokens=2).echo_only


def test_max_tokens_zero_needs_echo():
    with pytest.raises(ValidationError, match="only allowed with echo"):
        CompletionRequest(model="m", prompt="p", max_tokens=0)


def test_vllm_cross_field_errors_become_bad_request():
    with pytest.raises(BadRequest, match="min_tokens"):
        sampling_params(completion(min_tokens=9), 4)


def test_unknown_fields_are_kept_aside_not_rejected():
    request = completion(guided_choice=["a"], store=True)
    assert request.extra_fields() == {"guided_choice": ["a"]}  # store is OpenAI's: known, and ignored


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("name", IGNORED)
def test_fields_that_cannot_change_the_output_are_accepted(name):
    value = "x" if name in ("user", "safety_identifier", "prompt_cache_key", "service_tier") else {"a": "b"}
    assert ChatCompletionRequest(**CHAT, **{name: value}).extra_fields() == {}


@pytest.mark.parametrize(
    "fields",
    [
        {"functions": [{"name": "f"}]},
        {"function_call": "auto"},
        {"modalities": ["text", "audio"]},
        {"reasoning_effort": "low"},
        {"audio": {"voice": "x"}},
    ],
)
def test_fields_not_honoured_are_refused_naming_them(fields):
    with pytest.raises(ValidationError) as raised:
        ChatCompletionRequest(**CHAT, **fields)
    assert raised.value.errors()[0]["loc"] == (next(iter(fields)),)


def test_neutral_values_of_fields_not_honoured_pass():
    request = ChatCompletionRequest(
        **CHAT, tools=[], tool_choice="none", response_format={"type": "text"}, modalities=["text"]
    )
    assert request.extra_fields() == {}
    assert completion(best_of=1, suffix="").extra_fields() == {}
    with pytest.raises(ValidationError, match="best_of"):
        completion(best_of=3)


def test_logit_bias_reaches_vllm_with_integer_token_ids():
    params = sampling_params(
        completion(logit_bias={"9906": 100, "2": -50.5}, allowed_token_ids=[1, 2], bad_words=["x"]), 4
    )
    assert params.logit_bias == {9906: 100.0, 2: -50.5}
    assert params.allowed_token_ids == [1, 2] and params.bad_words == ["x"]
    for bad in ({"x": 1}, {"5": 101}, {"5": "1"}):
        with pytest.raises(ValidationError, match="logit_bias"):
            completion(logit_bias=bad)


@pytest.mark.parametrize("field", [{"logit_bias": {"5": 1}}, {"allowed_token_ids": [5]}, {"bad_words": ["x"]}])
def test_token_constraints_cannot_be_measured_by_our_chain(field):
    with pytest.raises(BadRequest, match=f"{next(iter(field))}: cannot be combined"):
        plan_sampler(completion(return_entropy=True, **field), None)


def test_chat_logprobs_and_token_limits():
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert ChatCompletionRequest(**base).num_top_logprobs() is None
    assert ChatCompletionRequest(**base, logprobs=True).num_top_logprobs() == 0
    assert ChatCompletionRequest(**base, logprobs=True, top_logprobs=3).num_top_logprobs() == 3
    with pytest.raises(ValidationError, match="top_logprobs"):
        ChatCompletionRequest(**base, top_logprobs=3)
    assert ChatCompletionRequest(**base, max_tokens=5, max_completion_tokens=9).requested_max_tokens() == 9
    assert ChatCompletionRequest(**base, max_tokens=5).requested_max_tokens() == 5


def test_chat_content_parts_are_joined():
    request = ChatCompletionRequest(
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
        ],
    )
    assert request.chat_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize(
    ("arguments", "for_template"),
    [('{"x": 1}', {"x": 1}), ('{"x": ' + "1" * 5000 + "}", None), ("[" * 5000 + "]" * 5000, None), ("{not json", None)],
)
def test_tool_call_arguments_go_to_the_template_parsed_else_as_written(arguments, for_template):
    """A history's arguments too long or deep for the parser stay the string they are, no 500."""
    message = {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}]}
    request = ChatCompletionRequest(model="m", messages=[message, {"role": "user", "content": "go on"}])
    (call,) = request.chat_messages()[0]["tool_calls"]
    assert call["function"]["arguments"] == (arguments if for_template is None else for_template)


def test_strategies_by_object_by_name_and_by_model_prefix():
    fork = completion(strategy={"name": "entropy_fork", "trees": 3, "forks": 1, "branches": 2})
    assert (fork.strategy.trees, fork.strategy.forks, fork.strategy.branches) == (3, 1, 2)
    assert fork.strategy.num_leaves == 3 * (1 + 1 * 2)
    by_name = completion(strategy="entropy_fork")
    assert (by_name.strategy.trees, by_name.strategy.forks, by_name.strategy.branches) == (12, 2, 2)  # ETTRL's
    prefixed = CompletionRequest(model="self_consistency:m", prompt="p")
    assert prefixed.model == "m" and prefixed.strategy.name == "self_consistency" and prefixed.strategy.n == 8
    agreeing = CompletionRequest(model="entropy_fork:m", prompt="p", strategy={"name": "entropy_fork", "trees": 2})
    assert agreeing.strategy.trees == 2
    assert CompletionRequest(model="llama3:8b", prompt="p").model == "llama3:8b"  # not a strategy: left alone
    with pytest.raises(ValidationError, match="model name asks for 'entropy_fork'"):
        CompletionRequest(model="entropy_fork:m", prompt="p", strategy="self_consistency")


@pytest.mark.parametrize(
    "strategy, field",
    [
        ({"name": "entropy_fork", "trees": 0}, "strategy.trees"),
        ({"name": "entropy_fork", "forks": 0}, "strategy.forks"),
        ({"name": "entropy_fork", "branches": 65}, "strategy.branches"),
        ({"name": "entropy_fork", "n": 4}, "strategy.n"),  # self_consistency's field
        ({"name": "entropy_fork", "vote": "loudest"}, "strategy.vote"),
        ("beam", "strategy"),
    ],
)
def test_bad_strategies_name_the_client_field(strategy, field):
    from fastapi.exceptions import RequestValidationError

    from entropy_serve.server.errors import validation_message

    with pytest.raises(ValidationError) as caught:
        completion(strategy=strategy)
    body_errors = [{**e, "loc": ("body", *e["loc"])} for e in RequestValidationError(caught.value.errors()).errors()]
    message, param = validation_message(body_errors)
    assert message.startswith(f"{field}:"), message
    assert param == "strategy"
