"""Prompt and max_tokens bounds, checked without an engine."""

from __future__ import annotations

import pytest

from entropy_serve.server.config import ServerConfig
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.generation import Generator


class FakeHolder:
    max_model_len = 100


def generator(**limits) -> Generator:
    return Generator(FakeHolder(), ServerConfig(model="m", served_model_name="m", **limits))


def test_default_max_tokens_is_what_is_left_of_the_context():
    assert generator()._resolve_max_tokens(None, 30) == 70


def test_configured_limit_caps_the_default():
    assert generator(max_tokens_limit=20)._resolve_max_tokens(None, 30) == 20


def test_requested_max_tokens_within_bounds_is_kept():
    assert generator()._resolve_max_tokens(70, 30) == 70


def test_requested_max_tokens_beyond_the_context_is_400():
    with pytest.raises(BadRequest, match="max_tokens: 71"):
        generator()._resolve_max_tokens(71, 30)


def test_prompt_filling_the_context_is_400():
    with pytest.raises(BadRequest, match="100 tokens is longer than the 99 allowed") as raised:
        generator()._resolve_max_tokens(None, 100)
    assert raised.value.code == "context_length_exceeded"


def test_configured_prompt_limit():
    with pytest.raises(BadRequest, match="longer than the 10 allowed"):
        generator(max_prompt_tokens=10)._resolve_max_tokens(None, 11)


def test_config_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="max_n"):
        ServerConfig(model="m", served_model_name="m", max_n=0)
