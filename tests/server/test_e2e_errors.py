"""Bad input gets OpenAI-shaped errors with the right status, and never hurts the engine."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL

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
    ({"echo": True}, "echo"),
    ({"max_tokens": 9000}, "max_tokens"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
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
]


@pytest.mark.parametrize("change,field", BAD_CHATS)
def test_invalid_chat_values_are_400(server, change, field):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    assert_openai_error(post(server, "/v1/chat/completions", json=body), 400, field)


def test_malformed_json_is_400(server):
    response = post(server, "/v1/completions", content=b'{"model": ', headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400, "json")


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


def test_health_and_metrics_need_no_key(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "entropy_serve_requests_total" in httpx.get(f"{server.url}/metrics").text


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
    post(server, "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": -1})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'entropy_serve_errors_total{status="400"}' in text


def test_server_still_healthy_after_bad_input(server, client):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens > 0
