"""The trainer command end to end (interrupted, then resumed), and a server routing by
the probe it wrote: through the official client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from conftest import API_KEY, MODEL
from helpers import metric, wait_for

from entropy_serve.probes.labels import CLASSES
from entropy_serve.probes.table import CANDIDATES, TABLE_FILE, load_table
from entropy_serve.server.process import ServerProcess
from entropy_serve.server.strategies import defaults

pytestmark = pytest.mark.e2e  # drives a real server process

NUM_PROBLEMS = 36
TRAIN = [
    sys.executable,
    "-m",
    "entropy_serve",
    "train-probe",
    "--problems",
    str(NUM_PROBLEMS),
    "--samples",
    "4",
    "--max-tokens",
    "32",
    "--max-model-len",
    "1024",
    "--hard-below-accuracy",
    "0.25",
    "--hidden-units",
    "32",
    "--table-samples",
    "1",
    "--tune-problems",
    "6",
    "--tune-traces",
    "4",
    "--tune-temperatures",
    "0.7",
]
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


def sampled_lines(out) -> list[dict]:
    path = out / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    # Interrupted mid-sampling: what finished stays on disk.
    # Ctrl-C as a terminal's foreground job gets it: SIGINT at its default disposition in
    # the child, even when this run was started as a background job (which ignores it,
    # and a child inherits that: Python then installs no KeyboardInterrupt).
    first = subprocess.Popen(
        [*TRAIN, "--out", str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert wait_for(lambda: len(sampled_lines(out)) >= 4 or first.poll() is not None, timeout_s=600)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert first.returncode != 0
    kept = {line["index"] for line in sampled_lines(out)}
    assert 4 <= len(kept) < NUM_PROBLEMS
    # The same command resumes: it samples only what is missing, then trains.
    second = subprocess.run([*TRAIN, "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, kept, second.stdout


def test_trainer_resumes_labels_all_classes_and_reports_the_baseline(trained):
    out, kept, stdout = trained
    assert f"sampling {NUM_PROBLEMS - len(kept)} problems x 4 ({len(kept)} already in" in stdout
    lines = sampled_lines(out)
    assert sorted(line["index"] for line in lines) == list(range(NUM_PROBLEMS))
    metadata = json.loads((out / "probe.json").read_text())
    assert set(metadata["class_balance"]) == set(CLASSES) and min(metadata["class_balance"].values()) >= 2
    # The pooling cross-validation chose; the probe reads that pooling's width (SmolLM2-135M: 576).
    assert metadata["feature_pooling"] in ("last", "mean", "last+mean")
    assert metadata["hidden_size"] == 576 * (2 if metadata["feature_pooling"] == "last+mean" else 1)
    assert metadata["fingerprint"].startswith("sha256:")
    assert metadata["num_train"] + metadata["num_held_out"] == NUM_PROBLEMS
    assert f"held-out accuracy {metadata['held_out_accuracy']:.3f} vs majority-class baseline" in stdout
    calibration = metadata["held_out_calibration"]
    assert calibration["log_loss"] > 0 and 0 <= calibration["expected_calibration_error"] <= 1
    # The table search: every candidate but the labels' own answered every problem once.
    searched = [json.loads(line) for line in (out / "table_samples.jsonl").read_text().splitlines()]
    assert len(searched) == (len(CANDIDATES) - 1) * NUM_PROBLEMS
    table = metadata["difficulty_table"]
    assert set(table["chosen"]) == set(CLASSES) and set(table["chosen"].values()) <= set(CANDIDATES)
    learned = load_table(out / TABLE_FILE)
    for name, candidate in table["chosen"].items():
        assert learned.for_class(name) == CANDIDATES[candidate]
        scores = table["scores"][name]
        best = max(accuracy for accuracy, _ in scores.values())
        accuracy, tokens = scores[candidate]
        assert accuracy >= best - 0.02 - 1e-9
        assert tokens == min(t for a, t in scores.values() if a >= best - 0.02 - 1e-9)


def test_trainer_learns_strategy_defaults_beside_the_probe(trained):
    out, _, stdout = trained
    learned = defaults.load(out / defaults.DEFAULTS_FILE)
    (entry,) = learned.temperatures
    assert entry.temperature == 0.7 and set(entry.strategies) == {"escalate", "deepconf"}
    assert {"greedy", "self_consistency_1", "self_consistency_2", "self_consistency_4"} <= set(entry.training)
    traces = (out / "tuning_traces.jsonl").read_text().splitlines()
    assert len(traces) == 6 * 2  # per problem: the greedy answer, and the 4 traces at T 0.7
    assert "strategy defaults:\nT 0.7:" in stdout


@pytest.fixture(scope="module")
def probe_server(trained):
    out, _, _ = trained
    with ServerProcess("--api-key", API_KEY, "--max-model-len", "2048", "--probe", str(out), kv_cache_gib=1) as process:
        process.probe = out
        yield process


def probe_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def test_difficulty_routes_by_class_and_says_so(probe_server):
    client = probe_client(probe_server)
    messages = [{"role": "user", "content": "Compute 48 + 27. Reply with only the result."}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=40, extra_body={"strategy": "difficulty"}
    )
    response = raw.parse()
    difficulty = response.model_extra["difficulty"]
    name = difficulty["class"]
    assert name in CLASSES and raw.headers["x-entropy-serve-difficulty"] == name
    probabilities = difficulty["probabilities"]
    assert set(probabilities) == set(CLASSES) and abs(sum(probabilities.values()) - 1) < 1e-6
    if difficulty["fallback"]:  # unsure: routed as Normal
        assert name == "normal" and max(probabilities.values()) < 0.5
    else:
        assert probabilities[name] == max(probabilities.values()) >= 0.5
    chosen = load_table(probe_server.probe / TABLE_FILE).for_class(name)  # the table train-probe learned
    assert difficulty["strategy"]["temperature"] == chosen.temperature
    assert difficulty["strategy"]["max_tokens"] == chosen.max_tokens(40) >= response.usage.completion_tokens
    # The model saw the class's instruction as the system message.
    system = [{"role": "system", "content": chosen.instruction}] if chosen.instruction else []
    by_hand = client.chat.completions.create(model=MODEL, messages=[*system, *messages], max_tokens=1)
    assert response.usage.prompt_tokens == by_hand.usage.prompt_tokens
    # Features are deterministic: the same prompt gets the same probabilities.
    again = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1, extra_body={"strategy": "difficulty"}
    )
    assert again.model_extra["difficulty"]["probabilities"] == pytest.approx(probabilities, abs=1e-4)
    assert metric(probe_server, f'entropy_serve_difficulty_requests_total{{difficulty="{name}"}}') >= 2


def test_difficulty_by_model_prefix_and_streaming(probe_server):
    client = probe_client(probe_server)
    response = client.completions.create(model=f"difficulty:{MODEL}", prompt="Compute 2 + 5 =", max_tokens=12)
    assert response.model_extra["difficulty"]["class"] in CLASSES
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Compute 2 + 5."}],
        max_tokens=12,
        stream=True,
        extra_body={"strategy": "difficulty"},
    ) as stream:
        assert stream.headers["x-entropy-serve-difficulty"] in CLASSES
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream.parse() if chunk.choices)
    assert text
    models = client.models.list().data[0]
    assert models.model_extra["difficulty_probe"]
    assert models.model_extra["strategy_defaults"] == defaults.DEFAULTS_FILE


def test_auto_runs_with_the_defaults_learned_beside_the_probe(probe_server):
    (entry,) = defaults.load(probe_server.probe / defaults.DEFAULTS_FILE).temperatures
    response = probe_client(probe_server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Compute 2 + 5."}],
        max_tokens=12,
        seed=1,
        extra_body={"strategy": "auto"},
    )
    escalation = response.model_extra["strategy"]["escalation"]
    assert escalation["temperature"] == 0.7
    assert {field: escalation[field] for field in entry.strategies["escalate"]} == entry.strategies["escalate"]


def test_without_a_probe_difficulty_is_a_400_saying_how_to_get_one(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "strategy": "difficulty"}
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 400
    assert "train-probe" in response.json()["error"]["message"] and "--probe" in response.json()["error"]["message"]


def test_a_probe_that_cannot_be_read_stops_serve_with_a_message(tmp_path):
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "entropy_serve", "serve", "--probe", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert run.returncode == 2 and "cannot read probe" in run.stderr
    assert time.monotonic() - started < 120  # refused before any engine starts
