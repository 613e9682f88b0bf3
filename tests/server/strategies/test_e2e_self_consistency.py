"""Self-consistency through the official client, on the real server."""

from __future__ import annotations

import httpx
import pytest
from conftest import API_KEY, MODEL

from entropy_serve.tasks.answers import equivalent, extract_answer

pytestmark = pytest.mark.e2e  # drives a real server process

QUESTION = [{"role": "user", "content": "What is 3 + 4? Answer with the number."}]


@pytest.mark.parametrize("vote", ["majority", "entropy_weighted"])
def test_self_consistency_votes_and_replies_with_a_winner(client, vote):
    response = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=24,
        temperature=0.9,
        seed=4,
        extra_body={"strategy": {"name": "self_consistency", "n": 6, "vote": vote}},
    )
    strategy = response.model_extra["strategy"]
    assert strategy["name"] == "self_consistency" and strategy["vote"] == vote
    assert strategy["num_leaves"] == len(strategy["answers"]) == 6
    assert len(response.choices) == 1
    answered = [a for a in strategy["answers"] if a is not None]
    total = sum(strategy["votes"].values())
    # majority: one vote per answer; entropy_weighted: exp(-mean entropy) in (0, 1] each.
    assert total == len(answered) if vote == "majority" else 0 < total <= len(answered)
    assert answered, strategy["answers"]  # seeded: these leaves do answer
    winner = strategy["winner"]
    assert winner in strategy["votes"]
    assert strategy["votes"][winner] == max(strategy["votes"].values())
    assert equivalent(extract_answer(response.choices[0].message.content), winner)
    assert equivalent(strategy["answers"][strategy["winner_leaf"]], winner)
    # Every leaf's tokens were really generated, and usage says so.
    assert response.usage.completion_tokens == strategy["generated_tokens"] >= 6
    assert 0.0 <= strategy["agreement"] <= 1.0


def test_self_consistency_on_completions_with_entropy(client):
    response = client.completions.create(
        model=MODEL,
        prompt="Question: what is 2 + 2?\nAnswer:",
        max_tokens=8,
        seed=1,
        extra_body={"strategy": {"name": "self_consistency", "n": 4}, "return_entropy": True},
    )
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.model_extra["entropy"]["summary"]["num_tokens"] == len(
        choice.model_extra["entropy"]["model_entropy_nats"]
    )
    assert response.model_extra["strategy"]["num_leaves"] == 4


@pytest.mark.parametrize(
    "change,field",
    [
        ({"stream": True}, "streaming"),
        ({"n": 2}, "strategy.n"),
        ({"strategy": {"name": "beam"}}, "strategy"),
        ({"strategy": {"name": "self_consistency", "n": 1}}, "strategy.n"),
        ({"strategy": {"name": "self_consistency", "n": 65}}, "--max-leaves"),  # the server allows 64 leaves
        ({"strategy": {"name": "self_consistency", "vote": "loudest"}}, "vote"),
    ],
)
def test_bad_strategy_requests_are_400(server, change, field):
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "max_tokens": 4,
        "strategy": {"name": "self_consistency", "n": 2},
        **change,
    }
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_strategy_needs_a_single_prompt(server):
    body = {
        "model": MODEL,
        "prompt": ["1 + 1 =", "2 + 2 ="],
        "max_tokens": 4,
        "strategy": {"name": "self_consistency", "n": 2},
    }
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 400, response.text
    assert "single prompt" in response.json()["error"]["message"]
