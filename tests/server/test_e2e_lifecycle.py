"""Start-up, engine death, exactness, preemption and SIGTERM: the tests that need a
server of their own.

Two servers: one whose engine is killed (it must exit non-zero), and one small fp32
server shared, in this order, by the exactness test (fp32, so transformers' fp32
forward pass is a tight reference), the preemption test (its 12-block KV cache forces
preemption) and the SIGTERM test, which ends it and so comes last.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import openai
import psutil
import pytest
import torch
from conftest import MODEL

from entropy_serve.model_store import prepare_default_model
from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # drives a real server process

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}
COUNTING = "1, 2, 3, 4, 5,"


def test_health_is_503_while_loading_then_engine_death_exits_non_zero():
    server = ServerProcess("--max-model-len", "2048", kv_cache_gib=1)
    try:
        first = server.wait_until_listening()
        # uvicorn answers before the model has loaded (which takes tens of seconds).
        assert first.status_code == 503, first.text
        assert first.json()["error"]["type"] == "service_unavailable"
        for path, body in [("/v1/completions", {"prompt": "Hi"}), ("/v1/chat/completions", CHAT)]:
            early = httpx.post(f"{server.url}{path}", json={"model": MODEL, "max_tokens": 2, **body}, timeout=30)
            assert early.status_code == 503, early.text
            assert early.json()["error"]["type"] == "service_unavailable"
        assert server.health().status_code == 503  # the requests above were all made while loading
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


@pytest.fixture(scope="module")
def small_server():
    # 12 blocks (of 128 tokens) hold only a few of eight 300-token sequences at once.
    with ServerProcess(
        "--max-model-len", "512", "--num-gpu-blocks-override", "12", "--dtype", "float32", kv_cache_gib=1
    ) as server:
        yield server


def test_reported_entropy_is_exact_over_the_full_vocabulary(small_server, tokenizer):
    """Greedy tokens' model entropy equals a full-vocabulary fp32 forward pass in
    transformers, to within fp32 noise: the engine runs fp32 too (same weights, other
    kernels), so the two sets of logits differ by ~1e-5, not by bfloat16's ~1e-2."""
    from transformers import AutoModelForCausalLM

    client = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="x", max_retries=0, timeout=300)
    response = client.completions.create(
        model=MODEL, prompt=COUNTING, max_tokens=6, temperature=0, extra_body={"return_entropy": True}
    )
    field = response.choices[0].model_extra["entropy"]
    assert field["sampled_entropy_nats"] == [0.0] * 6 and field["temperature"] == [0.0] * 6
    generated = tokenizer.encode(response.choices[0].text, add_special_tokens=False)
    assert len(generated) == 6  # greedy text re-tokenizes to the same six tokens
    ids = tokenizer.encode(COUNTING) + generated
    model = AutoModelForCausalLM.from_pretrained(prepare_default_model(), dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # [seq, vocab]
    prompt_len = len(ids) - len(generated)
    logprobs = torch.log_softmax(logits[prompt_len - 1 : prompt_len - 1 + 6], dim=-1)
    expected = -(logprobs.exp() * logprobs).sum(-1)
    assert field["model_entropy_nats"] == pytest.approx(expected.tolist(), abs=2e-3)


def test_entropies_stay_right_under_preemption(small_server):
    """A KV cache too small for the batch forces vLLM to preempt and recompute requests;
    per-token entropies are keyed by output position, so they still line up."""
    client = openai.AsyncOpenAI(base_url=f"{small_server.url}/v1", api_key="x", max_retries=0, timeout=600)
    kwargs = dict(
        model=MODEL, max_tokens=300, temperature=0, logprobs=0, extra_body={"return_entropy": True, "ignore_eos": True}
    )
    prompts = [f"Tell me about the number {i}." for i in range(8)]

    async def batch_then_alone():
        together = await asyncio.gather(*(client.completions.create(prompt=p, **kwargs) for p in prompts))
        metrics_text = httpx.get(f"{small_server.url}/metrics").text
        alone = [await client.completions.create(prompt=prompts[i], **kwargs) for i in (0, 7)]
        return together, metrics_text, alone

    together, preemptions, alone = asyncio.run(batch_then_alone())
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
        # Numerics drift a little between a recomputed and an incremental pass; an
        # entropy filed at the wrong position would be off by whole nats.
        diffs = [abs(a - b) for a, b in zip(batched, solo)]
        assert sum(diffs) / len(diffs) < 0.05 and max(diffs) < 0.3, diffs


def test_sigterm_drains_in_flight_streams_and_exits_zero(small_server):
    """Ends the module's server: keep it last."""
    num_tokens = 48
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": num_tokens,
        "stream": True,
        "ignore_eos": True,
        "logprobs": 0,
        "stream_options": {"include_usage": True},
    }
    first_chunk = threading.Event()
    lines: list[str] = []

    def stream():
        with httpx.stream("POST", f"{small_server.url}/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                lines.append(line)
                first_chunk.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(60)
    small_server.process.send_signal(signal.SIGTERM)
    reader.join(120)
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]"
    assert f'"completion_tokens":{num_tokens}' in events[-2]
    assert small_server.process.wait(timeout=60) == 0
