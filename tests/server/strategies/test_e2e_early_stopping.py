"""Early stopping on the real server: vote-level rules stop sampling leaves, deepconf
aborts traces in the engine, and usage counts only what was really generated."""

from __future__ import annotations

import httpx
import pytest
from conftest import API_KEY, MODEL
from helpers import metric, wait_for

pytestmark = pytest.mark.e2e  # drives a real server process

AUTH = {"Authorization": f"Bearer {API_KEY}"}
EASY = [{"role": "user", "content": "What is 2 + 2? Reply with only the result."}]


@pytest.mark.parametrize(
    "strategy,rule",
    [
        ({"name": "self_consistency", "n": 16, "early_stop": "beta"}, "beta"),
        ({"name": "self_consistency", "n": 16, "early_stop": {"rule": "esc", "window": 3}}, "esc"),
        ({"name": "entropy_fork", "trees": 4, "forks": 1, "branches": 3, "early_stop": "beta"}, "beta"),
    ],
)
def test_a_decided_vote_stops_sampling(server, client, strategy, rule):
    saved_metric = f'entropy_serve_strategy_leaves_saved_total{{strategy="{strategy["name"]}"}}'
    leaves_saved_before = metric(server, saved_metric, 0.0)
    response = client.chat.completions.create(
        model=MODEL,
        messages=EASY,
        max_tokens=8,
        temperature=0.2,
        seed=7,
        extra_body={"strategy": strategy},
    )
    report = response.model_extra["strategy"]
    early = report["early_stop"]
    assert early["rule"] == rule and early["stopped_early"], early
    assert early["reason"].startswith(rule)
    assert report["num_leaves"] == len(report["answers"]) == early["leaf_budget"] - early["leaves_saved"] < 16
    assert report["winner"] == "4"
    # Only the sampled leaves were generated, and usage says so.
    assert response.usage.completion_tokens == report["generated_tokens"]
    assert metric(server, saved_metric) == leaves_saved_before + early["leaves_saved"]


def test_an_undecided_vote_spends_the_budget(client):
    response = client.completions.create(
        model=MODEL,
        prompt="Name a random animal:",
        max_tokens=6,
        temperature=1.0,
        seed=3,
        extra_body={"strategy": {"name": "self_consistency", "n": 8, "early_stop": "beta"}},
    )
    early = response.model_extra["strategy"]["early_stop"]
    assert not early["stopped_early"] and early["leaves_saved"] == 0 and early["waves"] == 2
    assert early["reason"] == "the leaf budget was spent"
    assert response.model_extra["strategy"]["num_leaves"] == 8


def test_deepconf_aborts_low_confidence_traces_in_the_engine(server):
    # Long traces (no EOS) and a threshold near the best warm-up trace's: later traces
    # fall below it early, and each must stop generating there, in the engine.
    max_tokens = 64
    body = {
        "model": MODEL,
        "prompt": "Tell me a story about a dragon.",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 1.0,
        "seed": 11,
        "strategy": {"name": "deepconf", "n": 8, "warmup": 3, "window": 4, "keep": 0.01, "wave": 5},
    }
    generated_before = metric(server, "vllm:generation_tokens_total")
    stopped_before = metric(server, "entropy_serve_strategy_traces_stopped_total")
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=300)
    assert response.status_code == 200, response.text
    reply = response.json()
    report = reply["strategy"]["deepconf"]
    stopped = report["stopped_traces"]
    assert stopped and report["traces_stopped"] == len(stopped)
    assert all(trace >= 3 for trace in stopped)  # warm-up traces run whole
    tokens = report["trace_tokens"]
    # A trace may fall below the threshold at its very last token: stopped (no vote) with
    # every token; the others that were stopped stopped early, and the rest ran whole.
    assert any(tokens[t] < max_tokens for t in stopped) and all(
        n == max_tokens for t, n in enumerate(tokens) if t not in stopped
    )
    assert all(reply["strategy"]["answers"][t] is None for t in stopped)  # stopped traces cast no vote
    # usage counts exactly the tokens each trace produced...
    assert reply["usage"]["completion_tokens"] == sum(tokens) == reply["strategy"]["generated_tokens"]
    # ...and the engine generated no more than that, but for the few tokens already under
    # way when each abort arrived: the stopped traces really stopped.
    assert wait_for(lambda: metric(server, "vllm:num_requests_running") == 0)
    generated = metric(server, "vllm:generation_tokens_total") - generated_before
    assert sum(tokens) <= generated <= sum(tokens) + 4 * len(stopped)
    assert generated < len(tokens) * max_tokens
    assert metric(server, "entropy_serve_strategy_traces_stopped_total") == stopped_before + len(stopped)


@pytest.mark.parametrize("confidence", ["topk", "entropy"])
def test_deepconf_votes_by_confidence(client, confidence):
    response = client.chat.completions.create(
        model=MODEL,
        messages=EASY,
        max_tokens=8,
        temperature=0.7,
        seed=5,
        extra_body={"strategy": {"name": "deepconf", "n": 8, "warmup": 4, "confidence": confidence, "window": 2}},
    )
    report = response.model_extra["strategy"]
    assert report["vote"] == "confidence_weighted" and report["deepconf"]["confidence"] == confidence
    assert report["winner"] == "4"
    assert all(weight > 0 for weight in report["votes"].values())
    assert response.choices[0].logprobs is None  # the top-k log-probabilities were ours, not asked for
    assert response.usage.completion_tokens == report["generated_tokens"] == sum(report["deepconf"]["trace_tokens"])
