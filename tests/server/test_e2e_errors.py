"""Bad input gets OpenAI-shaped errors with the right status, and never hurts the engine."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL
from helpers import metric

pytestmark = pytest.mark.e2e  # drives a real server process

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(server, path: str, **kwargs) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=60, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, mentions: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert mentions.lower() in error["message"].lower()
    return error


BAD_COMPLETIONS = [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),  # the test server allows --max-n 8
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logprobs": 21}, "logprobs"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"stop": 5}, "stop"),
    ({"seed": 2**70}, "seed"),
    ({"top_k": -5}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"max_tokens": 0, "echo": False}, "only allowed with echo"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"max_tokens": 9000}, "max_tokens"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    # Wrong types are refused, never coerced (OpenAI's API is strict too).
    ({"n": "7"}, "n"),
    ({"n": 2.0}, "n"),
    ({"typical_p": "0.5"}, "typical_p"),
    ({"typical_p": True}, "typical_p"),
    ({"return_entropy": "yes"}, "return_entropy"),
    ({"return_entropy": 1}, "return_entropy"),
    ({"strategy": {"name": "self_consistency", "n": "4"}}, "strategy.n"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"logprobs": True}, "logprobs"),
    ({"prompt": [True]}, "prompt"),
    ({"strategy": "self_consistency", "presence_penalty": 0.5}, "presence_penalty"),
]


@pytest.mark.parametrize("change,field", BAD_COMPLETIONS)
def test_invalid_completion_values_are_400_naming_the_field(server, change, field):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4, **change}
    error = assert_openai_error(post(server, "/v1/completions", json=body), 400, field)
    assert error["type"] == "invalid_request_error"


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "content"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": [{"role": "user", "content": None}]}, "content"),
    ({"messages": [{"role": "system", "content": None}, {"role": "user", "content": "hi"}]}, "content"),
    ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
    ({"strategy": "self_consistency", "presence_penalty": 0.5, "temperature": 0.8}, "presence_penalty"),
]


@pytest.mark.parametrize("change,field", BAD_CHATS)
def test_invalid_chat_values_are_400(server, change, field):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    assert_openai_error(post(server, "/v1/chat/completions", json=body), 400, field)


LONE_SURROGATE = "\ud800"  # a legal JSON escape that no UTF-8 text can hold


@pytest.mark.parametrize(
    "path,change,field",
    [
        ("/v1/completions", {"prompt": LONE_SURROGATE}, "prompt"),
        ("/v1/completions", {"prompt": ["ok", f"a{LONE_SURROGATE}"]}, "prompt.1"),
        ("/v1/completions", {"stop": [LONE_SURROGATE]}, "stop.0"),
        ("/v1/completions", {"vllm_xargs": {"note": LONE_SURROGATE}}, "vllm_xargs.note"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE_SURROGATE}]}, "messages.0.content"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": LONE_SURROGATE}, {"role": "user", "content": "hi"}]},
            "messages.0.content",
        ),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(server, client, path, change, field):
    base = {"prompt": "Hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    body = json.dumps({"model": MODEL, "max_tokens": 2, **base, **change})  # ASCII: the surrogate stays escaped
    response = post(server, path, content=body.encode(), headers={"Content-Type": "application/json"})
    error = assert_openai_error(response, 400, f"{field}: holds a lone UTF-16 surrogate")
    assert error["param"] == field.split(".")[0]
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=1).usage.prompt_tokens == 1  # engine fine


def test_malformed_json_is_400(server):
    response = post(server, "/v1/completions", content=b'{"model": ', headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400, "json")


BASES = {
    "/v1/completions": f'"model": "{MODEL}", "prompt": "Hi", "max_tokens": 1',
    "/v1/chat/completions": f'"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 1',
}
DIGITS = "1" * 5000  # past Python's 4,300-digit int-string limit


@pytest.mark.parametrize("path", list(BASES))
@pytest.mark.parametrize(
    ("extra", "mentions", "param"),
    [
        (f'"n": {DIGITS}', "an integer of 5000 digits in 'n'", "n"),
        (f'"not_a_field": {{"x": -{DIGITS}}}', "an integer of 5000 digits in 'x'", "x"),
        ('"not_a_field": ' + "[" * 100_000 + "]" * 100_000, "nested deeper than 128 levels", None),
        ('"metadata": ' + '{"a": ' * 200 + "1" + "}" * 200, "nested deeper than 128 levels", None),
    ],
)
def test_json_past_the_parsers_bounds_is_400(server, client, path, extra, mentions, param):
    response = post(
        server, path, content=f"{{{BASES[path]}, {extra}}}".encode(), headers={"Content-Type": "application/json"}
    )
    error = assert_openai_error(response, 400, f"malformed JSON body: {mentions}")
    assert error["param"] == param
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=1).usage.prompt_tokens == 1  # server fine


def test_missing_required_field_is_400(server):
    assert_openai_error(post(server, "/v1/completions", json={"model": MODEL}), 400, "prompt")


def test_prompt_longer_than_context_is_400(server):
    body = {"model": MODEL, "prompt": "hello " * 9000, "max_tokens": 4}
    error = assert_openai_error(post(server, "/v1/completions", json=body), 400, "context length")
    assert error["code"] == "context_length_exceeded"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="gpt-4", prompt="Hi", max_tokens=2)
    assert raised.value.body["code"] == "model_not_found"


def test_unknown_fields_are_ignored(server):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "store": True, "metadata": {"a": "b"}}
    assert post(server, "/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}])
def test_v1_routes_need_the_api_key(server, headers):
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")]:
        response = httpx.request(method, f"{server.url}{path}", headers=headers, json={}, timeout=10)
        error = assert_openai_error(response, 401, "api key")
        assert error["code"] == "invalid_api_key"


def test_health_and_metrics_need_no_key(server, client):
    assert httpx.get(f"{server.url}/health").status_code == 200
    counter = 'entropy_serve_requests_total{endpoint="completions"}'  # a sample line, not its HELP line
    before = metric(server, counter, default=0.0)
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
    assert metric(server, counter) == before + 1


def test_wrong_key_through_the_sdk_is_authentication_error(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_oversized_body_is_413(server):
    body = b'{"model": "x", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    response = post(server, "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413, "larger than")


def test_oversized_chunked_body_is_413(server):
    def chunks():
        yield b'{"model": "x", "prompt": "'
        for _ in range(6):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    response = post(server, "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert_openai_error(response, 413, "larger than")


def test_unknown_route_is_404_in_openai_shape(server):
    assert_openai_error(httpx.get(f"{server.url}/v1/nothing-here", headers=AUTH), 404)


def test_errors_are_counted_by_status(server):
    counter = 'entropy_serve_errors_total{status="400"}'
    before = metric(server, counter, default=0.0)
    post(server, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": -1})
    post(server, "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user"}]})
    assert metric(server, counter) == before + 2


def test_server_still_healthy_after_bad_input(server, client):
    assert httpx.get(f"{server.url}/health").status_code == 200
    response = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 2
