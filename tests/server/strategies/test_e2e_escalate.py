"""Entropy-gated escalation on the real server, through the official client: a sure
greedy answer is returned as is, an unsure one escalates, the reply says which and
why and what each part spent, and `auto` runs with the model's learned settings."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL
from helpers import metric

from entropy_serve import calibration
from entropy_serve.server.strategies import defaults

pytestmark = pytest.mark.e2e  # drives a real server process

EASY = [{"role": "user", "content": "What is 2 + 2? Reply with only the result."}]
HARD = [{"role": "user", "content": "Compute 487 + 356. Reply with only the result."}]
ESCALATED = 'entropy_serve_escalations_total{outcome="escalated"}'
GREEDY = 'entropy_serve_escalations_total{outcome="answered_greedily"}'


def escalate(client, messages, **fields):
    return client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        temperature=0.7,
        seed=5,
        extra_body={"strategy": {"name": "escalate", **fields}},
    )


def test_a_sure_greedy_answer_is_the_reply(server, client):
    before = metric(server, GREEDY, 0.0)
    response = escalate(client, EASY, threshold_nats=100.0)
    plain = client.chat.completions.create(model=MODEL, messages=EASY, max_tokens=16, temperature=0.0)
    report = response.model_extra["strategy"]
    escalation = report["escalation"]
    assert not escalation["escalated"] and escalation["traces_sampled"] == 0 and escalation["stop_reason"] is None
    assert escalation["why"] == f"the greedy answer's {escalation['signal']} entropy is at or under 100.0 nats"
    assert 0.0 <= escalation["greedy_entropy_nats"] <= 100.0
    assert response.choices[0].message.content == plain.choices[0].message.content
    assert response.usage.completion_tokens == escalation["greedy_tokens"] == plain.usage.completion_tokens
    assert report["num_leaves"] == 1 and report["requested"] == "escalate"
    assert metric(server, GREEDY) == before + 1


def test_an_unsure_greedy_answer_escalates_and_says_what_it_spent(server, client):
    before = metric(server, ESCALATED, 0.0)
    response = escalate(client, HARD, signal="mean", threshold_nats=0.0, n=8, wave=4, min_agreement=0.0)
    report = response.model_extra["strategy"]
    escalation = report["escalation"]
    assert escalation["escalated"] and escalation["why"].startswith("the greedy answer's mean entropy")
    assert escalation["traces_sampled"] in (4, 8) and report["num_leaves"] == 1 + escalation["traces_sampled"]
    assert (escalation["n"], escalation["wave"], escalation["min_agreement"]) == (8, 4, 0.0)  # as sent
    assert escalation["stop_reason"].split(":")[0] in ("decided", "futility", "the trace budget was spent")
    assert response.usage.completion_tokens == escalation["greedy_tokens"] + escalation["sampled_tokens"]
    assert report["generated_tokens"] == response.usage.completion_tokens
    assert report["winner"] == report["answers"][report["winner_leaf"]] or report["winner"] is None
    assert metric(server, ESCALATED) == before + 1


def test_auto_uses_the_model_s_learned_settings(client):
    learned = defaults.load(calibration.profile_for(None))
    entry = learned.at(None)
    response = client.chat.completions.create(
        model=MODEL,
        messages=EASY,
        max_tokens=16,
        seed=5,
        extra_body={"strategy": "auto"},
    )
    report = response.model_extra["strategy"]
    escalation = report["escalation"]
    assert report["requested"] == "auto" and report["name"] == "escalate"
    assert escalation["temperature"] == entry.temperature  # the request set none
    for field, value in entry.strategies["escalate"].items():
        assert escalation[field] == value, field
    # A field the client sends wins over the learned one.
    response = client.chat.completions.create(
        model=MODEL,
        messages=EASY,
        max_tokens=16,
        temperature=0.3,
        seed=5,
        extra_body={"strategy": {"name": "escalate", "window": 3}},
    )
    escalation = response.model_extra["strategy"]["escalation"]
    assert escalation["window"] == 3 and escalation["temperature"] == 0.3
    assert escalation["threshold_nats"] == learned.at(0.3).strategies["escalate"]["threshold_nats"]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"temperature": 0.0, "strategy": "escalate"}, "temperature"),
        ({"strategy": {"name": "escalate", "threshold_nats": -1}}, None),
        ({"strategy": {"name": "auto", "n": 4}}, None),
        ({"stream": True, "strategy": "auto"}, None),
        ({"strategy": {"name": "escalate", "n": 1024}}, "strategy"),
    ],
)
def test_bad_escalation_requests_are_400s(server, body, param):
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL, "messages": EASY, "max_tokens": 8, **body},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_the_openai_client_sees_a_400_for_greedy_escalation(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=EASY, temperature=0.0, extra_body={"strategy": "escalate"})
