"""vLLM's data parallelism through `serve --data-parallel-size 2` (one core per engine,
bound explicitly): every feature answers as one engine does, each engine publishes its
own entropies, and a strategy request's leaves and branches run on one engine, so they
share its prefix cache as they do with one engine.

The reference is a DP=1 server with the same flags on one core (so each engine computes
exactly as it does: the same dtype, one thread), run first and stopped before the DP=2
one starts: the same requests, on fresh prompts, give the same answers, entropies,
tokens and cached prompt tokens. Answers are deterministic here: greedy, or seeded (our
adapter draws seeded tokens on CPU), and entropy_fork's fork points come from entropies
computed the same way.

The DP=2 server's entropy channel is the TCP one (`--entropy-channel tcp`, what workers on
other nodes use, with its per-launch CURVE keys) on the loopback interface; the reference
uses the IPC one, so every comparison here also shows the two carry the same entropies.
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

FLAGS = ("--max-model-len", "2048", "--max-n", "8")
# Longer than one 128-token KV block, so branches can be served whole blocks from the cache.
LONG_SYSTEM = "You are a careful assistant who checks every step. " * 24
RUN = uuid.uuid4().hex  # fresh prompts: no cache holds them on either server
QUESTION = "What is 12 + 9? Answer with the number."
CASES = {
    "greedy": {"max_tokens": 12, "temperature": 0, "extra_body": {"return_entropy": True}},
    "typical": {
        "max_tokens": 12,
        "temperature": 0.8,
        "seed": 5,
        "extra_body": {"return_entropy": True, "typical_p": 0.5},
    },
    "edt": {"max_tokens": 12, "temperature": 1.0, "seed": 7, "extra_body": {"adaptive_temperature": {"method": "edt"}}},
    "self_consistency": {
        "max_tokens": 24,
        "temperature": 1.0,
        "seed": 3,
        "extra_body": {"strategy": {"name": "self_consistency", "n": 6}},
    },
    # One tree: its job runs on one engine, so only branches on that engine find the
    # prompt's blocks cached (with more trees, each engine could have run one).
    "entropy_fork": {
        "max_tokens": 24,
        "temperature": 1.0,
        "seed": 3,
        "extra_body": {"strategy": {"name": "entropy_fork", "trees": 1, "forks": 2, "branches": 2}},
    },
}


def openai_client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300)


def chat(client, content: str, nonce: str = RUN, **fields):
    """`nonce` opens the prompt: requests with different nonces share no cached block."""
    messages = [{"role": "system", "content": f"[{nonce}] {LONG_SYSTEM}"}, {"role": "user", "content": content}]
    return client.chat.completions.create(model=MODEL, messages=messages, **fields)


def answers(server: ServerProcess) -> dict[str, dict]:
    """Each case's reply: its text, entropies and strategy report."""
    client = openai_client(server)
    found = {}
    for name, fields in CASES.items():
        choice = (reply := chat(client, QUESTION, f"{RUN}-{name}", **fields)).choices[0]
        entropy = choice.model_extra.get("entropy")
        found[name] = {
            "text": choice.message.content,
            "entropies": entropy["model_entropy_nats"] if entropy else None,
            "strategy": reply.model_extra.get("strategy"),
        }
    return found


@pytest.fixture(scope="module")
def reference():
    with ServerProcess(*FLAGS, kv_cache_gib=1, env={"VLLM_CPU_OMP_THREADS_BIND": "0"}) as server:
        return answers(server)


@pytest.fixture(scope="module")
def data_parallel(reference):  # after the reference has stopped: one of these servers at a time
    flags = (*FLAGS, "--data-parallel-size", "2", "--entropy-channel", "tcp", "--entropy-channel-host", "127.0.0.1")
    with ServerProcess(*flags, kv_cache_gib=1, env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) as server:
        yield server, answers(server)


def test_health_reports_both_engines_and_the_channel_is_tcp(data_parallel):
    server, _ = data_parallel
    assert "entropy channel: tcp://127.0.0.1:" in server.log()
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok"
    assert [engine["engine"] for engine in body["engines"]] == [0, 1]
    assert all(engine["strategy_requests"] == 0 for engine in body["engines"])  # idle


@pytest.mark.parametrize("case", ["greedy", "typical", "edt"])
def test_answers_and_entropies_equal_one_engines(reference, data_parallel, case):
    _, found = data_parallel
    assert found[case]["text"] == reference[case]["text"]
    if reference[case]["entropies"] is not None:
        assert len(found[case]["entropies"]) > 0
        assert found[case]["entropies"] == pytest.approx(reference[case]["entropies"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case", ["self_consistency", "entropy_fork"])
def test_strategies_answer_and_share_the_prefix_as_one_engine_does(reference, data_parallel, case):
    _, found = data_parallel
    one, two = reference[case]["strategy"], found[case]["strategy"]
    assert two["answers"] == one["answers"] and two["winner"] == one["winner"]
    assert two["generated_tokens"] == one["generated_tokens"]
    if case == "entropy_fork":
        assert one["cached_prompt_tokens"] >= 128  # the branches found their prompt's blocks
        # ... on the engine that ran the tree: left to vLLM's balancer, some land on the
        # other engine and recompute the prompt (pinning switched off: 768 instead of 1024).
        assert two["cached_prompt_tokens"] == one["cached_prompt_tokens"]


def test_both_engines_serve_and_publish_their_own_entropies(data_parallel):
    """Concurrent plain requests spread over the engines (vLLM's balancer); each engine's
    tokens come back on the channel under its own `engine` label."""
    server, _ = data_parallel
    client = openai_client(server)
    before = [metric(server, f'entropy_serve_entropy_records_total{{engine="{rank}"}}', 0.0) for rank in (0, 1)]

    def ask(index: int):
        return chat(client, f"Count to {index}.", max_tokens=8, temperature=0, extra_body={"return_entropy": True})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    after = [metric(server, f'entropy_serve_entropy_records_total{{engine="{rank}"}}', 0.0) for rank in (0, 1)]
    published = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(published) == sum(r.usage.completion_tokens for r in replies)  # one record per token
    assert all(count > 0 for count in published), published  # both engines worked and published
