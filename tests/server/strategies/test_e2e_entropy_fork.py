"""Entropy-fork tree rollouts through the official client, on the real server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import API_KEY, MODEL
from helpers import metric, wait_for

from entropy_serve.tasks.answers import equivalent, extract_answer

pytestmark = pytest.mark.e2e  # drives a real server process

AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = [{"role": "user", "content": "What is 12 + 9? Answer with the number."}]
# Long enough (> one 128-token KV block) for the prefix cache to serve branches whole blocks.
LONG_SYSTEM = {"role": "system", "content": "You are a careful assistant who checks every step. " * 24}


def forked(client, **fields):
    response = client.chat.completions.create(model=MODEL, **fields)
    return response, response.model_extra["strategy"]


def test_greedy_branches_regrow_their_tree_so_accounting_is_exact(client):
    # With top_k 1 a branch re-samples its tree's tokens exactly: every leaf is the same
    # completion, and what the branches generate is known token for token.
    response, strategy = forked(
        client,
        messages=QUESTION,
        max_tokens=24,
        temperature=1.0,
        extra_body={"top_k": 1, "strategy": {"name": "entropy_fork", "trees": 2, "forks": 2, "branches": 2}},
    )
    forks = strategy["forks"]
    assert strategy["num_trees"] == 2 and len(forks) == 4
    assert strategy["num_leaves"] == 2 + 4 * 2 == len(strategy["answers"])
    assert len(set(strategy["answers"])) == 1 and strategy["agreement"] == 1.0
    # Every leaf is the tree's completion, so all have its length.
    tree_length = (strategy["generated_tokens"] + strategy["shared_prefix_tokens"]) / strategy["num_leaves"]
    assert strategy["shared_prefix_tokens"] == sum(2 * f["position"] for f in forks)
    assert strategy["generated_tokens"] == 2 * tree_length + sum(2 * (tree_length - f["position"]) for f in forks)
    assert response.usage.completion_tokens == strategy["generated_tokens"]
    for tree in (0, 1):
        positions = [f["position"] for f in forks if f["tree"] == tree]
        assert positions == sorted(set(positions)) and all(0 <= p < tree_length for p in positions)
    assert [f["leaves"] for f in forks] == [[2, 3], [4, 5], [6, 7], [8, 9]]


def test_sampled_forks_vote_and_hit_the_prefix_cache(server, client):
    forks_before = metric(server, "entropy_serve_strategy_forks_total")
    response, strategy = forked(
        client,
        messages=[LONG_SYSTEM, *QUESTION],
        max_tokens=32,
        temperature=1.0,
        seed=3,
        logprobs=True,
        extra_body={
            "strategy": {"name": "entropy_fork", "trees": 3, "forks": 2, "branches": 2, "vote": "entropy_weighted"},
            "return_entropy": True,
        },
    )
    forks = strategy["forks"]
    assert len(forks) == 6 and strategy["num_leaves"] == 3 + 6 * 2
    assert metric(server, "entropy_serve_strategy_forks_total") == forks_before + 6
    choice = response.choices[0]
    # The reply is a whole leaf: its tokens, logprobs and entropies line up.
    assert len(choice.logprobs.content) == choice.model_extra["entropy"]["summary"]["num_tokens"]
    answered = [a for a in strategy["answers"] if a is not None]
    assert answered, strategy["answers"]  # seeded: these leaves do answer
    assert strategy["winner"] in strategy["votes"]
    assert equivalent(extract_answer(choice.message.content), strategy["winner"])
    assert strategy["answers"][strategy["winner_leaf"]] is not None
    # Every branch prompt (prompt + prefix) starts with the prompt's whole blocks, computed by the trees.
    num_branches = 6 * 2
    whole_blocks = (response.usage.prompt_tokens - 1) // 128 * 128
    assert whole_blocks >= 128
    assert strategy["cached_prompt_tokens"] >= num_branches * whole_blocks
    assert response.usage.completion_tokens == strategy["generated_tokens"]


def test_model_name_prefix_runs_the_default_trees(client):
    # ETTRL's defaults: 12 trees, 2 forks, 2 branches -> 60 leaves, within the server's 64.
    response = client.completions.create(model=f"entropy_fork:{MODEL}", prompt="7 + 1 =", max_tokens=6, temperature=0.8)
    strategy = response.model_extra["strategy"]
    assert strategy["name"] == "entropy_fork" and strategy["num_trees"] == 12
    assert strategy["num_leaves"] == 12 + 2 * len(strategy["forks"])
    assert response.model == MODEL


@pytest.mark.parametrize(
    "change,field",
    [
        ({"strategy": {"name": "entropy_fork", "trees": 6, "forks": 5, "branches": 2}}, "--max-leaves"),  # 66 leaves
        ({"strategy": {"name": "entropy_fork", "branches": 0}}, "strategy.branches"),
        ({"strategy": "entropy_fork", "stream": True}, "streaming"),
        ({"strategy": "entropy_fork", "n": 3}, "strategy.trees"),
        ({"model": f"self_consistency:{MODEL}", "strategy": "entropy_fork"}, "model name asks for"),
        ({"strategy": "entropy_fork", "presence_penalty": 0.5}, "presence_penalty"),
        ({"strategy": "entropy_fork", "temperature": 0}, "greedy"),
    ],
)
def test_bad_fork_requests_are_400(server, change, field):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, **change}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_disconnect_aborts_every_running_branch(server):
    # One tree, so two or more running engine requests can only be its branches.
    body = {
        "model": MODEL,
        "prompt": "Tell me a story.",
        "max_tokens": 300,
        "ignore_eos": True,
        "strategy": {"name": "entropy_fork", "trees": 1, "forks": 2, "branches": 2},
    }
    aborted_before = metric(server, "entropy_serve_requests_aborted_total")

    async def leave_during_branches():
        async with httpx.AsyncClient(timeout=300) as http:
            request = asyncio.create_task(http.post(f"{server.url}/v1/completions", json=body, headers=AUTH))
            while metric(server, "vllm:num_requests_running") < 2:
                assert not request.done(), request.result().text
                await asyncio.sleep(0.1)
            request.cancel()

    asyncio.run(leave_during_branches())
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    assert wait_for(lambda: metric(server, "entropy_serve_requests_aborted_total") == aborted_before + 1)
