"""Our samplers through the official client (`extra_body`), on the real server."""

from __future__ import annotations

import asyncio
import math

import httpx
import openai
import pytest
from conftest import MODEL
from helpers import metric

pytestmark = pytest.mark.e2e  # drives a real server process

VOCAB_LOG = math.log(49152)
STORY = "Write a story about a dragon."
COUNTING = "1, 2, 3, 4, 5,"


def entropy_of(choice) -> dict:
    return choice.model_extra["entropy"]


def test_entropy_fields_cover_every_token(client):
    response = client.completions.create(
        model=MODEL, prompt=STORY, max_tokens=12, seed=3, extra_body={"return_entropy": True}
    )
    field = entropy_of(response.choices[0])
    num_tokens = response.usage.completion_tokens
    assert (
        len(field["model_entropy_nats"])
        == len(field["sampled_entropy_nats"])
        == len(field["temperature"])
        == num_tokens
    )
    assert all(0.0 <= h <= VOCAB_LOG + 1e-3 for h in field["model_entropy_nats"])
    # Plain sampling at T=1 with no filter draws from the model's own distribution.
    assert field["sampled_entropy_nats"] == pytest.approx(field["model_entropy_nats"], abs=1e-4)
    summary = field["summary"]
    assert summary["num_tokens"] == num_tokens
    assert summary["mean_model_entropy_nats"] == pytest.approx(sum(field["model_entropy_nats"]) / num_tokens)
    assert summary["max_model_entropy_nats"] == pytest.approx(max(field["model_entropy_nats"]))


def test_samplers_are_compiled_while_the_engine_starts(server):
    log = server.log()
    assert "entropy-serve: samplers ready in" in log  # compiled at start-up, not in a client's steps
    assert "torch.compile failed" not in log


def test_plain_requests_carry_no_entropy_field(client):
    response = client.completions.create(model=MODEL, prompt=STORY, max_tokens=3)
    assert "entropy" not in (response.choices[0].model_extra or {})


def test_xargs_and_extra_body_spellings_are_the_same_request(client):
    common = dict(model=MODEL, prompt=STORY, max_tokens=10, seed=21)
    body = client.completions.create(**common, extra_body={"typical_p": 0.3, "adaptive_temperature": {"method": "edt"}})
    xargs = client.completions.create(
        **common, extra_body={"vllm_xargs": {"typical_p": 0.3, "adaptive_temperature": "edt"}}
    )
    assert body.choices[0].text == xargs.choices[0].text


def test_typical_sampling_lowers_the_entropy_of_what_is_sampled(client):
    def run(extra):
        response = client.completions.create(
            model=MODEL,
            prompt=STORY,
            max_tokens=24,
            n=4,
            seed=5,
            extra_body={"return_entropy": True, "ignore_eos": True, **extra},
        )
        texts = [c.text for c in response.choices]
        sampled = [entropy_of(c)["summary"]["mean_sampled_entropy_nats"] for c in response.choices]
        return texts, sum(sampled) / len(sampled)

    plain_texts, plain_entropy = run({})
    typical_texts, typical_entropy = run({"typical_p": 0.2})
    assert typical_texts != plain_texts
    assert typical_entropy < 0.7 * plain_entropy


def test_seed_reproduces_sampler_output(client):
    kwargs = dict(
        model=MODEL,
        prompt=STORY,
        max_tokens=10,
        seed=9,
        n=2,
        extra_body={"typical_p": 0.5, "return_entropy": True, "min_tokens": 10},  # never an empty text
    )
    first, second = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert first.choices[0].text != first.choices[1].text  # seeds 9 and 10: two samples


def test_mixed_batch_of_samplers_runs_together(server, async_client):
    temperature = 0.9
    requests = {
        "plain": {},
        "greedy": {"temperature": 0.0, "extra_body": {"return_entropy": True}},
        "typical": {"extra_body": {"typical_p": 0.4, "return_entropy": True}},
        "edt": {"extra_body": {"adaptive_temperature": {"method": "edt", "theta": 0.5}, "return_entropy": True}},
        "dynatemp": {
            "extra_body": {"adaptive_temperature": {"method": "dynatemp", "range": 0.4}, "return_entropy": True}
        },
        "hapo": {"extra_body": {"adaptive_temperature": {"method": "hapo", "tau": 0.5}, "return_entropy": True}},
        "filters": {"top_p": 0.9, "extra_body": {"top_k": 30, "min_p": 0.05, "return_entropy": True}},
    }

    async def one(name, kwargs):
        kwargs = {"temperature": temperature, **kwargs}
        response = await async_client.completions.create(model=MODEL, prompt=STORY, max_tokens=16, seed=1, **kwargs)
        return name, response

    async def all_requests():
        return dict(await asyncio.gather(*(one(n, k) for n, k in requests.items())))

    results = asyncio.run(all_requests())
    assert "entropy" not in (results["plain"].choices[0].model_extra or {})
    temps = {name: entropy_of(r.choices[0])["temperature"] for name, r in results.items() if name != "plain"}
    assert temps["greedy"] == [0.0] * len(temps["greedy"])
    assert temps["typical"] == pytest.approx([temperature] * len(temps["typical"]))
    assert temps["filters"] == pytest.approx([temperature] * len(temps["filters"]))
    assert all(t <= temperature + 1e-5 for t in temps["edt"])
    assert all(temperature - 0.4 - 1e-5 <= t <= temperature + 0.4 + 1e-5 for t in temps["dynatemp"])
    assert all(temperature * 0.5 - 1e-5 <= t <= temperature * 1.5 + 1e-5 for t in temps["hapo"])
    assert len(set(temps["hapo"])) > 1  # it adapts, token by token
    for name in ("typical", "filters"):  # filters only ever narrow the distribution here
        field = entropy_of(results[name].choices[0])
        assert sum(field["sampled_entropy_nats"]) < sum(field["model_entropy_nats"])
    for name in ("typical", "hapo", "edt", "dynatemp"):
        counted = metric(server, f'entropy_serve_tokens_by_sampler_total{{sampler="{name}"}}')
        assert counted >= results[name].usage.completion_tokens > 0
    assert metric(server, "entropy_serve_token_entropy_nats_count") > 0
    assert metric(server, "entropy_serve_sampling_temperature_count") > 0


def test_streamed_entropy_adds_up_and_ends_with_a_summary(client):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        seed=2,
        extra_body={"return_entropy": True, "adaptive_temperature": {"method": "edt"}},
    )
    whole = client.chat.completions.create(**kwargs)
    chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    per_token = [h for c in chunks for h in entropy_of(c.choices[0])["model_entropy_nats"]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert per_token == pytest.approx(entropy_of(whole.choices[0])["model_entropy_nats"], abs=1e-4)
    assert entropy_of(chunks[-1].choices[0])["summary"]["num_tokens"] == whole.usage.completion_tokens


BAD = [
    ({"typical_p": 0}, "typical_p"),
    ({"typical_p": 1.5}, "typical_p"),
    ({"adaptive_temperature": {"method": "magic"}}, "adaptive_temperature"),
    ({"adaptive_temperature": {"method": "edt", "theta": -1}}, "theta"),
    ({"adaptive_temperature": {"method": "hapo", "bogus": 1}}, "bogus"),
    ({"adaptive_temperature": {"method": "edt"}, "temperature": 0}, "adaptive_temperature"),
    ({"typical_p": 0.5, "presence_penalty": 0.5}, "presence_penalty"),
    ({"return_entropy": "maybe"}, "return_entropy"),
    ({"vllm_xargs": {"adaptive_temperature": "{not json"}}, "json"),
]


@pytest.mark.parametrize("change,field", BAD)
def test_invalid_sampler_requests_are_400(server, change, field):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 2, **change}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": "Bearer test-key"})
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"].lower()


def test_models_reports_the_loaded_profile(client):
    assert client.models.list().data[0].entropy_profile.endswith("SmolLM2-135M-Instruct.json")


def test_bad_request_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError, match="typical_p"):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"typical_p": -1})
