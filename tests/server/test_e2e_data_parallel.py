"""vLLM's data parallelism through `serve --data-parallel-size 2` (one core per engine,
bound explicitly): every feature answers as with one engine (the shared server, DP=1),
each engine publishes its own entropies, and a strategy request's leaves and branches
run on one engine, so they share its prefix cache as they do with one engine.

This server's entropy channel is the TCP one (`--entropy-channel tcp`, what workers on
other nodes use, with its per-launch CURVE keys) on the loopback interface: the shared
server covers the IPC one, so every answer compared here also shows the two carry the
same entropies.

Answers are compared where they are deterministic: greedy, and seeded (our adapter
draws seeded tokens on CPU, the same on every engine).
"""

from __future__ import annotations

import concurrent.futures
import uuid

import httpx
import openai
import pytest
from conftest import MODEL
from helpers import metric

from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # drives real server processes

QUESTION = "What is 12 + 9? Answer with the number."
# Longer than one 128-token KV block, so branches can be served whole blocks from the cache.
LONG_SYSTEM = "You are a careful assistant who checks every step. " * 24


@pytest.fixture(scope="module")
def data_parallel():
    flags = ("--max-model-len", "2048", "--max-n", "8", "--data-parallel-size", "2")
    flags += ("--entropy-channel", "tcp", "--entropy-channel-host", "127.0.0.1")
    with ServerProcess(*flags, kv_cache_gib=1, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) as server:
        yield server, openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300)


def chat(client, content: str, **fields):
    messages = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": content}]
    return client.chat.completions.create(model=MODEL, messages=messages, **fields)


def unique(text: str) -> str:
    """A prompt no earlier request cached (the shared server has served many)."""
    return f"[{uuid.uuid4().hex}] {text}"


def test_health_reports_both_engines_and_the_channel_is_tcp(data_parallel):
    server, _ = data_parallel
    assert "entropy channel: tcp://127.0.0.1:" in server.log()
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok"
    assert [engine["engine"] for engine in body["engines"]] == [0, 1]
    assert all(engine["strategy_requests"] == 0 for engine in body["engines"])  # idle


def test_plain_and_sampled_answers_and_entropies_equal_one_engines(data_parallel, client):
    _, dp_client = data_parallel
    requests = [
        {"max_tokens": 12, "temperature": 0, "extra_body": {"return_entropy": True}},
        {"max_tokens": 12, "temperature": 0.8, "seed": 5, "extra_body": {"return_entropy": True, "typical_p": 0.5}},
        {"max_tokens": 12, "temperature": 1.0, "seed": 7, "extra_body": {"adaptive_temperature": {"method": "edt"}}},
    ]
    for fields in requests:
        one = chat(client, QUESTION, **fields).choices[0]
        two = chat(dp_client, QUESTION, **fields).choices[0]
        assert two.message.content == one.message.content, fields
        if fields["extra_body"].get("return_entropy"):
            entropy_one = one.model_extra["entropy"]["model_entropy_nats"]
            entropy_two = two.model_extra["entropy"]["model_entropy_nats"]
            assert len(entropy_two) == len(entropy_one) > 0
            assert entropy_two == pytest.approx(entropy_one, rel=1e-3, abs=1e-4)


def test_both_engines_serve_and_publish_their_own_entropies(data_parallel):
    """Concurrent plain requests spread over the engines (vLLM's balancer); each engine's
    tokens come back on the channel under its own `engine` label."""
    server, dp_client = data_parallel
    before = [metric(server, f'entropy_serve_entropy_records_total{{engine="{rank}"}}', 0.0) for rank in (0, 1)]

    def ask(index: int):
        return chat(dp_client, f"Count to {index}.", max_tokens=8, temperature=0, extra_body={"return_entropy": True})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    after = [metric(server, f'entropy_serve_entropy_records_total{{engine="{rank}"}}', 0.0) for rank in (0, 1)]
    published = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(published) == sum(r.usage.completion_tokens for r in replies)  # one record per token
    assert all(count > 0 for count in published), published  # both engines worked and published


def strategy_reply(client, strategy: dict, question: str):
    reply = chat(client, question, max_tokens=24, temperature=1.0, seed=3, extra_body={"strategy": strategy})
    return reply.model_extra["strategy"]


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "self_consistency", "n": 6},
        {"name": "entropy_fork", "trees": 2, "forks": 2, "branches": 2},
    ],
)
def test_strategies_answer_and_share_the_prefix_as_one_engine_does(data_parallel, client, strategy):
    _, dp_client = data_parallel
    question = unique(QUESTION)  # the same fresh prompt on both servers: equal caches to begin with
    one = strategy_reply(client, strategy, question)
    two = strategy_reply(dp_client, strategy, question)
    assert two["answers"] == one["answers"] and two["winner"] == one["winner"]
    assert two["generated_tokens"] == one["generated_tokens"]
    if strategy["name"] == "entropy_fork":
        assert one["cached_prompt_tokens"] >= 128  # the branches found their prompt's blocks
        assert two["cached_prompt_tokens"] == one["cached_prompt_tokens"]  # on the engine that ran the trees
