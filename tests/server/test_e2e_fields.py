"""OpenAI's fields beyond sampling, through the `openai` client: logit_bias and vLLM's
token constraints honoured; fields not honoured refused with a 400 naming them, never
accepted and silently ignored."""

from __future__ import annotations

import openai
import pytest
from conftest import MODEL

pytestmark = pytest.mark.e2e  # drives a real server process


def test_logit_bias_forces_a_token_under_greedy_decoding(client, tokenizer):
    [token] = tokenizer.encode(" banana", add_special_tokens=False)
    plain = client.completions.create(model=MODEL, prompt="My favourite fruit is", max_tokens=3, temperature=0)
    biased = client.completions.create(
        model=MODEL, prompt="My favourite fruit is", max_tokens=3, temperature=0, logit_bias={str(token): 100}
    )
    assert plain.choices[0].text != tokenizer.decode([token] * 3)
    assert biased.choices[0].text == tokenizer.decode([token] * 3)
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        temperature=0,
        logit_bias={str(token): 100},
    )
    assert chat.choices[0].message.content == tokenizer.decode([token] * 2)


def test_allowed_token_ids_and_bad_words(client, tokenizer):
    allowed = tokenizer.encode(" yes no", add_special_tokens=False)
    reply = client.completions.create(
        model=MODEL, prompt="Is the sky blue?", max_tokens=4, temperature=0, extra_body={"allowed_token_ids": allowed}
    )
    assert set(tokenizer.encode(reply.choices[0].text, add_special_tokens=False)) <= set(allowed)
    plain = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=2, temperature=0)
    word = plain.choices[0].text.split()[0]
    banned = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=2, temperature=0, extra_body={"bad_words": [word]}
    )
    assert word not in banned.choices[0].text


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
    ],
)
def test_fields_not_honoured_are_400s_naming_them(client, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, **fields
        )
    assert raised.value.status_code == 400
    assert raised.value.body["param"] == param
    assert param in raised.value.body["message"]


def test_fields_that_cannot_change_the_output_are_accepted(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        temperature=0,
        user="u1",
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        tools=[],
        tool_choice="none",
    )
    assert reply.choices[0].message.content


def test_logit_bias_with_entropy_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="logit_bias: cannot be combined"):
        client.completions.create(
            model=MODEL, prompt="x", max_tokens=2, logit_bias={"5": 1}, extra_body={"return_entropy": True}
        )
