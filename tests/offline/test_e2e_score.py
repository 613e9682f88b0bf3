"""`entropy-serve score` on the embedded model against a transformers forward pass of the
same weights in the same dtype (float32), and its difficulty class against the probe
applied to transformers' hidden state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli, write_jsonl

from entropy_serve.calibration import model_fingerprint
from entropy_serve.model_store import prepare_default_model
from entropy_serve.probes.labels import CLASSES
from entropy_serve.probes.probe import Probe

pytestmark = pytest.mark.e2e  # starts real engines

CHAT = [{"role": "user", "content": "Name a color."}]
RECORDS = [
    {"custom_id": "sum", "prompt": "What is 2+3?", "completion": " The answer is 5."},
    {"prompt": "The quick brown fox jumps over the lazy dog."},
    {"custom_id": "chat", "messages": CHAT, "completion": "Blue is a color."},
    {"custom_id": "bad", "prompt": 5},
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("score")
    model = prepare_default_model()
    # A probe of the last and the mean hidden state side by side (576 each): its engine
    # returns every token's state, and the router pools them.
    probe = Probe(
        mean=np.zeros(1152),
        scale=np.ones(1152),
        weights=[np.random.default_rng(0).normal(size=(1152, 3)) / 10],
        biases=[np.zeros(3)],
        classes=list(CLASSES),
        metadata={"fingerprint": model_fingerprint(str(model)), "feature_pooling": "last+mean"},
    )
    probe.save(folder / "probe")
    write_jsonl(folder / "in.jsonl", RECORDS)
    run_cli(
        "score",
        "-i",
        folder / "in.jsonl",
        "-o",
        folder / "out.jsonl",
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--window",
        "3",
        "--probe",
        folder / "probe",
    )
    records = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    return {r["custom_id"] or r["line"]: r for r in records}, probe


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(prepare_default_model(), dtype=torch.float32).eval()


def full_sequence(tokenizer, record: dict) -> tuple[list[int], int]:
    """(token ids, index of the first scored token), rendered independently of the scorer."""
    if "messages" in record:
        text = tokenizer.apply_chat_template(record["messages"], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(text, add_special_tokens=False)
    else:
        prompt = tokenizer.encode(record["prompt"])
    if "completion" not in record:
        return prompt, 1
    return prompt + tokenizer.encode(record["completion"], add_special_tokens=False), len(prompt)


def test_entropies_and_logprobs_equal_a_transformers_forward_pass(scored, reference, tokenizer):
    records, _ = scored
    for key, record in zip(["sum", 2, "chat"], RECORDS[:3]):
        ids, first = full_sequence(tokenizer, record)
        out = records[key]
        assert out["error"] is None
        assert out["token_ids"] == ids[first:]
        assert out["scored"] == ("completion" if "completion" in record else "prompt")
        with torch.no_grad():
            log_p = torch.log_softmax(reference(torch.tensor([ids])).logits[0].double(), dim=-1)
        positions = torch.arange(first - 1, len(ids) - 1)
        expected_logprobs = log_p[positions, torch.tensor(ids[first:])]
        expected_entropy = -(log_p[positions].exp() * log_p[positions]).sum(-1)
        assert torch.allclose(torch.tensor(out["logprobs"], dtype=torch.float64), expected_logprobs, atol=2e-3)
        assert torch.allclose(torch.tensor(out["entropy_nats"], dtype=torch.float64), expected_entropy, atol=2e-3)
        summary = out["summary"]
        assert summary["num_tokens"] == len(ids) - first
        assert summary["max_entropy_nats"] == max(out["entropy_nats"])
        window = out["highest_entropy_window"]
        assert window["end"] - window["start"] == min(3, len(ids) - first)


def test_difficulty_is_the_probe_on_the_prompts_pooled_hidden_states(scored, reference, tokenizer):
    records, probe = scored
    ids, first = full_sequence(tokenizer, RECORDS[0])
    with torch.no_grad():
        hidden = reference(torch.tensor([ids[:first]]), output_hidden_states=True).hidden_states[-1][0]  # [tokens, 576]
    features = torch.cat([hidden[-1], hidden.mean(dim=0)])  # last+mean
    expected = probe.probabilities(features.numpy()[None])[0]
    difficulty = records["sum"]["difficulty"]
    assert np.allclose([difficulty["probabilities"][c] for c in probe.classes], expected, atol=1e-3)
    assert difficulty["class"] == probe.classes[int(np.argmax(expected))]


def test_a_bad_record_is_an_error_record(scored):
    records, _ = scored
    assert records["bad"]["error"]["message"] == "line 4: prompt: Input should be a valid string (got 5)"
    assert len(records) == len(RECORDS)
