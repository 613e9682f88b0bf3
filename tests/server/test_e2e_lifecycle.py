"""Start-up, engine death and SIGTERM, each on a server of its own."""

from __future__ import annotations

import pytest

import signal
import threading
import time

import httpx
import psutil
from conftest import MODEL
from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # drives a real server process

SMALL = ("--max-model-len", "2048")
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


def test_health_is_503_while_loading_then_engine_death_exits_non_zero():
    server = ServerProcess(*SMALL, kv_cache_gib=1)
    try:
        first = server.wait_until_listening()
        # uvicorn answers before the model has loaded.
        assert first.status_code == 503, first.text
        assert first.json()["error"]["type"] == "service_unavailable"
        for path, body in [("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", CHAT)]:
            early = httpx.post(f"{server.url}{path}", json={"model": MODEL, "max_tokens": 2, **body}, timeout=30)
            if server.health().status_code == 503:  # still loading after the request
                assert early.status_code == 503, early.text
        server.wait_until_ready()

        for child in psutil.Process(server.process.pid).children(recursive=True):
            child.kill()
        statuses = []
        deadline = time.monotonic() + 60
        while server.process.poll() is None and time.monotonic() < deadline:
            response = server.health()
            if response is not None:
                statuses.append(response.status_code)
            time.sleep(0.05)
        assert server.process.wait(timeout=30) == 1
        assert 503 in statuses
        assert "the engine died" in server.log()
    finally:
        server.terminate()


def test_sigterm_drains_in_flight_streams_and_exits_zero():
    server = ServerProcess(*SMALL, kv_cache_gib=1)
    try:
        server.wait_until_ready()
        num_tokens = 48
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": num_tokens, "stream": True,
                "ignore_eos": True, "logprobs": 0, "stream_options": {"include_usage": True}}
        first_chunk = threading.Event()
        lines: list[str] = []

        def stream():
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(60)
        server.process.send_signal(signal.SIGTERM)
        reader.join(120)
        events = [line for line in lines if line]
        assert events[-1] == "data: [DONE]"
        assert f'"completion_tokens":{num_tokens}' in events[-2]
        assert server.process.wait(timeout=60) == 0
    finally:
        server.terminate()


def test_entropies_stay_right_under_preemption():
    """A KV cache too small for the batch forces vLLM to preempt and recompute requests;
    per-token entropies are keyed by output position, so they still line up."""
    import asyncio

    import openai

    # 12 blocks hold only a few of the eight 300-token sequences at once.
    server = ServerProcess("--max-model-len", "512", "--num-gpu-blocks-override", "12", kv_cache_gib=1)
    try:
        server.wait_until_ready()
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=600)
        kwargs = dict(model=MODEL, max_tokens=300, temperature=0, logprobs=0,
                      extra_body={"return_entropy": True, "ignore_eos": True})
        prompts = [f"Tell me about the number {i}." for i in range(8)]

        async def batch_then_alone():
            together = await asyncio.gather(*(client.completions.create(prompt=p, **kwargs) for p in prompts))
            metrics_text = httpx.get(f"{server.url}/metrics").text
            alone = [await client.completions.create(prompt=prompts[i], **kwargs) for i in (0, 7)]
            return together, metrics_text, alone

        together, preemptions, alone = asyncio.run(batch_then_alone())
    finally:
        server.terminate()
    assert any(
        line.startswith("vllm:num_preemptions_total") and float(line.split()[-1]) > 0
        for line in preemptions.splitlines()
    ), "the test did not cause a preemption"
    for response in together:
        field = response.choices[0].model_extra["entropy"]
        assert len(field["model_entropy_nats"]) == response.usage.completion_tokens == 300
    # The same greedy request alone (no preemption) gives the same tokens and entropies,
    # up to where batch numerics flip a near-tie and the two greedy paths part.
    for i, single in zip((0, 7), alone):
        batched_choice, solo_choice = together[i].choices[0], single.choices[0]
        agree = 0
        for a, b in zip(batched_choice.logprobs.tokens, solo_choice.logprobs.tokens):
            if a != b:
                break
            agree += 1
        assert agree >= 8
        batched = batched_choice.model_extra["entropy"]["model_entropy_nats"][:agree]
        solo = solo_choice.model_extra["entropy"]["model_entropy_nats"][:agree]
        # bf16 numerics drift a little between a recomputed and an incremental pass; an
        # entropy filed at the wrong position would be off by whole nats.
        diffs = [abs(a - b) for a, b in zip(batched, solo)]
        assert sum(diffs) / len(diffs) < 0.05 and max(diffs) < 0.3, diffs
