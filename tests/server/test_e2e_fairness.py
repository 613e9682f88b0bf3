"""No single request stalls everyone: a long prompt is prefilled in chunks beside the
other requests (server/engine/holder.py), and a seeded one cannot kill the CPU engine doing so
(our adapter draws seeded tokens: samplers/draw.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import MODEL

pytestmark = pytest.mark.e2e  # drives a real server process

FAMILY = "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # a ZWJ sequence: many tokens per character
SHORT = "Write one sentence about the sea."


def long_prompt(tokenizer, num_tokens: int) -> str:
    unit = len(tokenizer.encode(FAMILY + " "))
    return (FAMILY + " ") * (num_tokens // unit)


async def first_token_s(async_client, prompt: str, **fields) -> float:
    """Seconds to the first streamed token of `prompt`."""
    started = time.perf_counter()
    stream = await async_client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, stream=True, **fields)
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - started
    return first


def test_a_short_request_is_answered_while_a_seeded_long_prompt_is_prefilled(server, async_client, client, tokenizer):
    """The long prompt (about 7,000 tokens, seeded, so prefilled in chunks with a seed) has
    its first token only after the short request, which arrived later, has its whole
    answer: the short one was not queued behind the long prefill. Then the engine is alive."""
    prompt = long_prompt(tokenizer, 7000)
    assert 6500 < len(tokenizer.encode(prompt)) < 7100

    async def race() -> tuple[float, float]:
        started = time.perf_counter()
        long_task = asyncio.create_task(first_token_s(async_client, prompt, seed=11, temperature=1.0))
        await asyncio.sleep(1.0)  # the long prompt is in the engine
        reply = await async_client.completions.create(model=MODEL, prompt=SHORT, max_tokens=16, seed=2)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens > 0
        short_done_s = time.perf_counter() - started
        long_first_s = await long_task
        return short_done_s, long_first_s

    short_done_s, long_first_s = asyncio.run(race())
    print(f"short request answered at {short_done_s:.2f} s, the long prompt's first token at {long_first_s:.2f} s")
    assert short_done_s < long_first_s, (short_done_s, long_first_s)
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1


def test_seeded_samples_repeat_and_differ_by_seed(client):
    """Seeds drawn by our adapter: the same seed repeats (n > 1 samples seeded seed + i,
    with penalties, which our adapter applies for them), another seed gives other text."""
    common = dict(model=MODEL, prompt=SHORT, max_tokens=24, n=2, temperature=1.0, frequency_penalty=0.5, top_p=0.95)
    first = [c.text for c in client.completions.create(seed=5, **common).choices]
    again = [c.text for c in client.completions.create(seed=5, **common).choices]
    other = [c.text for c in client.completions.create(seed=6, **common).choices]
    assert first == again
    assert first[0] != first[1] and first != other


def heavy_schema(tag: str) -> dict:
    """40 strings, each with a pattern of its own: about 2 s for xgrammar to compile on a
    2-core AMD EPYC (the tag makes it new to every cache)."""
    properties = {
        f"{tag}_{i}": {"type": "string", "pattern": f"{tag}{i}[A-Z][a-z]{{3,12}}( [A-Z][a-z]{{3,12}}){{0,4}}"}
        for i in range(40)
    }
    return {"type": "object", "properties": properties, "required": list(properties)}


def test_a_heavy_schema_does_not_stall_a_stream_beside_it(async_client):
    """The schema's grammar compiles off the engine step (server/engine/grammar_warmup.py): while
    its request is answered (compiling most of that time), the stream beside it never
    waits between two tokens for a third of it. Compiled in the step, the stream's
    longest wait was the compile itself: two thirds of the request's time and more.
    A small constrained request goes first: the first one after start-up pays one-time
    costs (a few tenths of a second) that are not the compile's."""
    import uuid

    schema = heavy_schema(f"f{uuid.uuid4().hex[:8]}")
    small = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

    async def race() -> tuple[list[float], float, float]:
        arrivals: list[float] = []
        await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A number."}],
            max_tokens=4,
            temperature=0.0,
            response_format={"type": "json_schema", "json_schema": {"name": "small", "schema": small}},
            extra_body={"return_entropy": True},
        )
        stream = await async_client.completions.create(
            model=MODEL, prompt=SHORT, max_tokens=1000, stream=True, temperature=0.0, extra_body={"ignore_eos": True}
        )

        async def read() -> None:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text:
                    arrivals.append(time.perf_counter())

        reading = asyncio.create_task(read())
        while len(arrivals) < 5:
            await asyncio.sleep(0.01)
        submitted = time.perf_counter()
        reply = await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Fill in the form."}],
            max_tokens=8,
            temperature=0.0,
            response_format={"type": "json_schema", "json_schema": {"name": "form", "schema": schema}},
            extra_body={"return_entropy": True},  # our adapter constrains it: its grammar, its compile
        )
        answered = time.perf_counter()
        assert reply.choices[0].message.content.startswith("{")
        assert not reading.done()  # the stream ran all the while the schema's request did
        await stream.close()
        reading.cancel()
        return arrivals, submitted, answered

    arrivals, submitted, answered = asyncio.run(race())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:]) if b > submitted and a < answered]
    print(f"longest wait {max(gaps):.3f} s while the schema's request took {answered - submitted:.3f} s")
    assert max(gaps) < (answered - submitted) / 3, (max(gaps), answered - submitted)
