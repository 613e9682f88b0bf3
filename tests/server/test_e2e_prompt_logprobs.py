"""Prompt log-probabilities: completions' `echo` (what evaluation harnesses use for
loglikelihood tasks) and vLLM's `prompt_logprobs` extra, through the `openai` client."""

from __future__ import annotations

import math

import pytest
from conftest import MODEL

pytestmark = pytest.mark.e2e  # drives a real server process

PROMPT = "The capital of France is Paris. The capital of Italy is"


def test_echo_without_generation_returns_the_prompt_scored(client, tokenizer):
    response = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    choice = response.choices[0]
    ids = tokenizer.encode(PROMPT)
    assert choice.text == PROMPT
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(ids) and response.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == PROMPT
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(ids)
    # Nothing precedes the first token: its logprob is null, as in OpenAI's legacy API.
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    for token, lp, top in zip(logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:]):
        assert len(top) == 2  # the 2 most likely tokens at that position
        assert max(top.values()) >= lp and top.get(token, lp) == lp
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(ids))]


def test_echoed_prompt_logprobs_equal_the_logprobs_of_the_same_tokens_generated(client):
    """Teacher-forced (prefill) and generated (decode) log-probabilities of one token agree."""
    generated = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0)
    text = generated.choices[0].text
    echoed = client.completions.create(model=MODEL, prompt=PROMPT + text, max_tokens=0, echo=True, logprobs=0)
    tail = echoed.choices[0].logprobs.token_logprobs[-len(generated.choices[0].logprobs.tokens) :]
    if echoed.choices[0].logprobs.tokens[-len(tail) :] != generated.choices[0].logprobs.tokens:
        pytest.fail("the generated text re-tokenized differently; pick another prompt")
    for scored, sampled in zip(tail, generated.choices[0].logprobs.token_logprobs):
        # bfloat16 logits (~20) carry ~0.06 of rounding, and prefill and decode round differently.
        assert math.isclose(scored, sampled, abs_tol=0.15)


def test_echo_with_generation_puts_the_prompt_first(client, tokenizer):
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=1)
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=1, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    num_prompt = len(tokenizer.encode(PROMPT))
    assert echoed.choices[0].logprobs.token_logprobs[num_prompt:] == plain.choices[0].logprobs.token_logprobs
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens


def test_echo_of_several_prompts_and_token_ids(client, tokenizer):
    ids = tokenizer.encode("One two three")
    response = client.completions.create(model=MODEL, prompt=[ids, ids[:2]], max_tokens=0, echo=True)
    assert [c.text for c in response.choices] == [tokenizer.decode(ids), tokenizer.decode(ids[:2])]
    assert all(c.logprobs is None for c in response.choices)


def test_streamed_echo_equals_the_whole_reply(client):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1, echo=True)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert text == whole.choices[0].text
    assert tokens == whole.choices[0].logprobs.tokens
    assert chunks[0].choices[0].text.startswith(PROMPT)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_vllm_prompt_logprobs_extra_on_both_endpoints(client, tokenizer):
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 1})
    field = completion.choices[0].model_extra["prompt_logprobs"]
    ids = tokenizer.encode(PROMPT)
    assert len(field) == len(ids) and field[0] is None
    for token_id, position in zip(ids[1:], field[1:]):
        assert str(token_id) in position
        assert all(set(entry) == {"logprob", "rank", "decoded_token"} for entry in position.values())
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    assert [position[str(t)]["logprob"] for t, position in zip(ids[1:], field[1:])] == echoed.choices[
        0
    ].logprobs.token_logprobs[1:]

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    assert chat.model_extra["prompt_logprobs"][0] is None
    assert len(chat.model_extra["prompt_logprobs"]) == chat.usage.prompt_tokens
