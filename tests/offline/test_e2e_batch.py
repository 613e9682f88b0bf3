"""`entropy-serve batch` on the embedded model: a mixed file (vLLM's run-batch example
included, unchanged), answers equal to the HTTP server's for the same seeded bodies, and
a run killed with SIGKILL then resumed.

Equal answers need equal scheduling: on CPU in bfloat16 the engine's logits depend on
which other sequences share a step (measured here: a seeded T=1 story diverged after 8
tokens between 2 in flight and 1), so the batches compared with the HTTP server, whose
requests the test sends one at a time, run with one line in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, MODEL
from helpers import cli_command, command_env, run_cli, wait_for, write_jsonl

pytestmark = pytest.mark.e2e  # starts real engines

DATA = Path(__file__).parent / "data"
ENGINE_FLAGS = ("--max-model-len", "8192", "--max-n", "8")  # the shared test server's
ONE_IN_FLIGHT = ("--max-in-flight", "1")  # scheduled as the test's HTTP requests are (module doc)
CHAT = [{"role": "user", "content": "What is 12 + 7? Answer with a number."}]


def line(custom_id: str, url: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": MODEL, **body}}


SEEDED = [
    line("chat", "/v1/chat/completions", messages=CHAT, max_tokens=12, temperature=0.8, seed=1),
    line("typical", "/v1/completions", prompt="Once upon a time", max_tokens=10, seed=2, typical_p=0.9, return_entropy=True),
    line("dynatemp", "/v1/completions", prompt="The ocean is", max_tokens=10, seed=3, adaptive_temperature={"method": "dynatemp"}),
    line("n2", "/v1/completions", prompt=["Red,", "One,"], max_tokens=6, n=2, seed=4, logprobs=1),
    line("vote", "/v1/chat/completions", messages=CHAT, max_tokens=16, seed=5, strategy={"name": "self_consistency", "n": 3}),
    line("echo", "/v1/completions", prompt="Paris is the capital of France", max_tokens=0, echo=True, logprobs=1),
]
REFUSED = {
    "too-hot": (line("too-hot", "/v1/completions", prompt="x", temperature=9), 400, "temperature"),
    "no-model": ({**line("no-model", "/v1/completions", prompt="x"), "body": {"model": "gpt-9", "prompt": "x"}}, 404, "gpt-9"),
    "embeddings": (line("embeddings", "/v1/embeddings", input="x"), 404, "/v1/embeddings"),
    "streamed": (line("streamed", "/v1/completions", prompt="x", stream=True), 400, "stream"),
}


def http_answer(server, record: dict) -> dict:
    response = httpx.post(
        f"{server.url}{record['url']}", json=record["body"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300
    )
    assert response.status_code == 200, response.text
    return response.json()


def comparable(body: dict) -> dict:
    """A reply without what differs between two answers of one seeded body (id, time)."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def read_records(path: Path) -> dict:
    records = [json.loads(text) for text in path.read_text().splitlines()]
    keys = [r["custom_id"] if r["custom_id"] is not None else r["line"] for r in records]
    assert len(keys) == len(set(keys)), "one record per line"
    return dict(zip(keys, records))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    example = (DATA / "openai_example_batch.jsonl").read_text()
    ours = "".join(json.dumps(r) + "\n" for r in [*SEEDED, *(r for r, _, _ in REFUSED.values())])
    (folder / "in.jsonl").write_text(example + ours + "this line is not JSON\n")
    run_cli("batch", "-i", folder / "in.jsonl", "-o", folder / "out.jsonl", *ENGINE_FLAGS, *ONE_IN_FLIGHT, "--output-order", "input")
    return folder


def test_every_line_has_one_record_in_input_order(mixed):
    records = read_records(mixed / "out.jsonl")
    expected = ["request-1", "request-2", *(r["custom_id"] for r in SEEDED), *REFUSED, 13]
    assert list(records) == expected
    assert all(r["id"].startswith("batch_req_") and r["error"] is None for r in records.values())


def test_vllm_run_batch_example_runs_unchanged(mixed):
    records = read_records(mixed / "out.jsonl")
    for key in ("request-1", "request-2"):
        response = records[key]["response"]
        assert response["status_code"] == 200
        assert response["body"]["object"] == "chat.completion"
        assert response["request_id"] == response["body"]["id"]
        assert response["body"]["choices"][0]["message"]["content"]


def test_seeded_lines_equal_the_http_servers_answers(mixed, server):
    records = read_records(mixed / "out.jsonl")
    for record in SEEDED:
        batch_body = records[record["custom_id"]]["response"]["body"]
        assert comparable(batch_body) == comparable(http_answer(server, record)), record["custom_id"]
    assert "entropy" in records["typical"]["response"]["body"]["choices"][0]
    assert records["vote"]["response"]["body"]["strategy"]["name"] == "self_consistency"


def test_refused_lines_get_the_servers_status_and_error(mixed):
    records = read_records(mixed / "out.jsonl")
    for key, (_, status, words) in REFUSED.items():
        response = records[key]["response"]
        assert response["status_code"] == status, key
        assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
        assert words in response["body"]["error"]["message"], key
    not_json = records[13]
    assert not_json["custom_id"] is None and not_json["line"] == 13
    assert not_json["response"]["status_code"] == 400 and "not JSON" in not_json["response"]["body"]["error"]["message"]


def test_a_killed_run_resumes_to_one_record_per_line_with_the_same_answers(tmp_path, server):
    lines = [
        line(f"story-{i}", "/v1/completions", prompt=f"Story {i}:", max_tokens=16, seed=100 + i, ignore_eos=True)
        for i in range(10)
    ]
    write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    command = cli_command("batch", "-i", tmp_path / "in.jsonl", "-o", out, *ENGINE_FLAGS, *ONE_IN_FLIGHT)
    killed = subprocess.Popen(command, env=command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, timeout_s=300), "no records before the kill"
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the command and its engine process, mid-batch
        killed.wait()
    time.sleep(1)
    num_before = out.read_text().count("\n")
    assert num_before < len(lines), "the run finished before it was killed; the test needs a longer batch"
    with out.open("a") as torn:  # what a write cut by the kill leaves: part of a line
        torn.write('{"id": "batch_req_torn", "custom_id": "story-9", "respo')

    run_cli("batch", "-i", tmp_path / "in.jsonl", "-o", out, *ENGINE_FLAGS, *ONE_IN_FLIGHT)

    text = out.read_text()
    assert text.endswith("\n") and "batch_req_torn" not in text
    records = read_records(out)
    assert sorted(records) == sorted(r["custom_id"] for r in lines)
    for record in lines:
        assert comparable(records[record["custom_id"]]["response"]["body"]) == comparable(http_answer(server, record))
