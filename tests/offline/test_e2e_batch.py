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
from helpers import cli_command, command_env, run_cli, wait_for

pytestmark = pytest.mark.e2e  # starts real engines

DATA = Path(__file__).parent / "data"
ENGINE_FLAGS = ("--max-model-len", "8192", "--max-n", "8")  # the shared test server's
ONE_IN_FLIGHT = ("--max-in-flight", "1")  # scheduled as the test's HTTP requests are (module doc)
CHAT = [{"role": "user", "content": "What is 12 + 7? Answer with a number."}]


def line(custom_id: str, url: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": MODEL, **body}}


SEEDED = [
    line("chat", "/v1/chat/completions", messages=CHAT, max_tokens=12, temperature=0.8, seed=1),
    line(
        "typical",
        "/v1/completions",
        prompt="Once upon a time",
        max_tokens=10,
        seed=2,
        typical_p=0.9,
        return_entropy=True,
    ),
    line(
        "dynatemp",
        "/v1/completions",
        prompt="The ocean is",
        max_tokens=10,
        seed=3,
        adaptive_temperature={"method": "dynatemp"},
    ),
    line("n2", "/v1/completions", prompt=["Red,", "One,"], max_tokens=6, n=2, seed=4, logprobs=1),
    line("echo", "/v1/completions", prompt="Paris is the capital of France", max_tokens=0, echo=True, logprobs=1),
]
# Several engine requests per line (a strategy's leaves): which steps they share depends
# on when each reaches the engine, so their text is not compared with HTTP's (module doc).
VOTE = line(
    "vote", "/v1/chat/completions", messages=CHAT, max_tokens=16, seed=5, strategy={"name": "self_consistency", "n": 3}
)
REFUSED = {
    "too-hot": (line("too-hot", "/v1/completions", prompt="x", temperature=9), 400, "temperature"),
    "no-model": (
        {**line("no-model", "/v1/completions", prompt="x"), "body": {"model": "gpt-9", "prompt": "x"}},
        404,
        "gpt-9",
    ),
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


STORIES = [
    line(f"story-{i}", "/v1/completions", prompt=f"Story {i}:", max_tokens=16, seed=100 + i, ignore_eos=True)
    for i in range(10)
]
NOT_JSON_LINE = len(STORIES) + 2 + len(SEEDED) + 1 + len(REFUSED) + 1


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A mixed file whose run is killed (SIGKILL, engine included) after a few records,
    left with a torn last line, and resumed: the output and how many records the killed
    run had written."""
    folder = tmp_path_factory.mktemp("batch")
    example = (DATA / "openai_example_batch.jsonl").read_text()  # as vLLM ships it, byte for byte
    after = [*SEEDED, VOTE, *(r for r, _, _ in REFUSED.values())]
    (folder / "in.jsonl").write_text(jsonl(STORIES) + example + jsonl(after) + "this line is not JSON\n")
    out = folder / "out.jsonl"
    flags = ("-i", folder / "in.jsonl", "-o", out, *ENGINE_FLAGS, *ONE_IN_FLIGHT, "--output-order", "input")
    killed = subprocess.Popen(
        cli_command("batch", *flags),
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, timeout_s=300), (
            "no records before the kill"
        )
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the command and its engine process, mid-batch
        killed.wait()
    time.sleep(1)
    num_before = out.read_text().count("\n")
    with out.open("a") as torn:  # what a write cut by the kill leaves: part of a line
        torn.write('{"id": "batch_req_torn", "custom_id": "story-9", "respo')
    run_cli("batch", *flags)
    return out, num_before


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_a_killed_run_resumes_to_one_record_per_line_in_input_order(resumed):
    out, num_before = resumed
    assert 3 <= num_before < NOT_JSON_LINE, "the kill must come mid-batch"
    text = out.read_text()
    assert text.endswith("\n") and "batch_req_torn" not in text  # the torn line was cut, not merged
    records = read_records(out)
    expected = [
        *(r["custom_id"] for r in STORIES),
        "request-1",
        "request-2",
        *(r["custom_id"] for r in SEEDED),
        "vote",
        *REFUSED,
        NOT_JSON_LINE,
    ]
    assert list(records) == expected
    assert all(r["id"].startswith("batch_req_") and r["error"] is None for r in records.values())


def test_vllm_run_batch_example_runs_unchanged(resumed):
    records = read_records(resumed[0])
    for key in ("request-1", "request-2"):
        response = records[key]["response"]
        assert response["status_code"] == 200
        assert response["body"]["object"] == "chat.completion"
        assert response["request_id"] == response["body"]["id"]
        assert response["body"]["choices"][0]["message"]["content"]


def test_seeded_lines_equal_the_http_servers_answers(resumed, server):
    """Those answered before the kill and those answered after it: as an uninterrupted run's."""
    records = read_records(resumed[0])
    for record in [*STORIES, *SEEDED]:
        batch_body = records[record["custom_id"]]["response"]["body"]
        assert comparable(batch_body) == comparable(http_answer(server, record)), record["custom_id"]
    assert "entropy" in records["typical"]["response"]["body"]["choices"][0]


def test_a_strategy_line_is_answered_by_the_strategy(resumed):
    body = read_records(resumed[0])["vote"]["response"]["body"]
    assert body["strategy"]["name"] == "self_consistency"
    assert body["strategy"]["num_leaves"] == 3
    assert 0 < body["usage"]["completion_tokens"] <= 3 * 16
    assert body["choices"][0]["message"]["content"]


def test_refused_lines_get_the_servers_status_and_error(resumed):
    records = read_records(resumed[0])
    for key, (_, status, words) in REFUSED.items():
        response = records[key]["response"]
        assert response["status_code"] == status, key
        assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
        assert words in response["body"]["error"]["message"], key
    not_json = records[NOT_JSON_LINE]
    assert not_json["custom_id"] is None and not_json["line"] == NOT_JSON_LINE
    assert not_json["response"]["status_code"] == 400 and "not JSON" in not_json["response"]["body"]["error"]["message"]
