"""The in-process answering API's edge, without an engine: parsing, text checks, the
model name, and a 503 before the engine is up."""

from __future__ import annotations

import asyncio

import pytest

from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.service import Endpoint, Service, check_text, model_card, parse_request
from entropy_serve.server.errors import BadRequest, EngineUnavailable, ModelNotFound

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


@pytest.mark.parametrize(
    "change, endpoint, message",
    [
        ({"n": "7"}, Endpoint.COMPLETIONS, "n: Input should be a valid integer (got '7')"),
        ({"typical_p": "0.5"}, Endpoint.COMPLETIONS, "typical_p: Input should be a valid number"),
        ({"typical_p": True}, Endpoint.COMPLETIONS, "typical_p: Input should be a valid number"),
        ({"return_entropy": "yes"}, Endpoint.COMPLETIONS, "return_entropy: Input should be a valid boolean"),
        ({"return_entropy": 1}, Endpoint.COMPLETIONS, "return_entropy: Input should be a valid boolean"),
        (
            {"strategy": {"name": "entropy_fork", "trees": "4"}},
            Endpoint.COMPLETIONS,
            "strategy.trees: Input should be a valid integer",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            Endpoint.COMPLETIONS,
            "stream_options.include_usage",
        ),
        ({"logprobs": True}, Endpoint.COMPLETIONS, "logprobs: Input should be a valid integer"),
        ({"prompt": [True]}, Endpoint.COMPLETIONS, "prompt.list[int].0: Input should be a valid integer"),
        (
            {"logprobs": True, "top_logprobs": True},
            Endpoint.CHAT_COMPLETIONS,
            "top_logprobs: Input should be a valid integer",
        ),
        ({"messages": [{"role": "user"}]}, Endpoint.CHAT_COMPLETIONS, "content: a user message needs content"),
        (
            {"messages": [{"role": "user", "content": None}]},
            Endpoint.CHAT_COMPLETIONS,
            "content: a user message needs content",
        ),
    ],
)
def test_types_are_strict(change, endpoint, message):
    base = COMPLETION if endpoint is Endpoint.COMPLETIONS else CHAT
    with pytest.raises(BadRequest) as raised:
        parse_request({**base, **change}, endpoint)
    assert message in raised.value.message
    assert raised.value.status_code == 400


def test_an_assistant_message_may_have_no_content():
    request = parse_request(
        {**CHAT, "messages": [*CHAT["messages"], {"role": "assistant", "content": None}]}, Endpoint.CHAT_COMPLETIONS
    )
    assert request.chat_messages()[-1] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "\ud800"}, "prompt"),
        ({"prompt": ["fine", "x\udfff"]}, "prompt.1"),
        ({"stop": ["\ud800"]}, "stop.0"),
        ({"vllm_xargs": {"note": "\ud800"}}, "vllm_xargs.note"),
        ({"messages": [{"role": "system", "content": "\ud800"}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
            "messages.0.content.0.text",
        ),
    ],
)
def test_lone_surrogates_name_their_field(body, field):
    with pytest.raises(BadRequest) as raised:
        check_text(body)
    assert raised.value.message.startswith(f"{field}: holds a lone UTF-16 surrogate")
    assert raised.value.param == field.split(".")[0]


def test_text_with_real_non_ascii_passes():
    check_text({"prompt": "héllo 🐉", "stop": ["日本"]})


def test_a_body_that_is_not_an_object_is_400():
    with pytest.raises(BadRequest, match="must be a JSON object, got list"):
        parse_request([], Endpoint.COMPLETIONS)


def service() -> Service:
    return Service(ServerConfig(model="/nowhere/m", served_model_name="m"))


def test_unknown_model_is_404_before_anything_else():
    with pytest.raises(ModelNotFound, match="`gpt-4` does not exist; this server serves `m`"):
        asyncio.run(service().answer({**CHAT, "model": "gpt-4"}, "chat_completions"))


@pytest.mark.parametrize(
    "change, error",
    [
        ({"model": "gpt-4"}, ModelNotFound),
        ({"stream": True}, BadRequest),
        ({"strategy": {"name": "self_consistency"}}, BadRequest),
    ],
)
def test_generate_takes_ordinary_requests_for_this_model(change, error):
    with pytest.raises(error):
        asyncio.run(service().generate({**CHAT, **change}, "chat_completions"))


def test_answer_before_the_engine_is_up_is_503():
    with pytest.raises(EngineUnavailable, match="not ready"):
        asyncio.run(service().answer(COMPLETION, Endpoint.COMPLETIONS))


def test_models_card_names_files_not_paths():
    config = ServerConfig(
        model="/srv/models/m", served_model_name="m", entropy_profile="/srv/profiles/p.json", probe="/srv/probe"
    )
    listed = model_card(config, max_model_len=2048, created=1)
    assert (listed["root"], listed["entropy_profile"], listed["difficulty_probe"]) == ("m", "p.json", "probe")
    assert "/srv" not in str(listed)
