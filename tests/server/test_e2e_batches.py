"""Online Files and Batches through the openai SDK: a batch created, polled to completion
and its files read; keys that see only their own; cancel, bad input, limits; and a
server restarted in the middle of a batch, which the next server finishes without
answering any line twice.

One server (two keys, small limits, float32 so a greedy batch line says what the same
body says interactively, whatever else shares the engine step), restarted by the last
test on the same database.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time

import httpx
import openai
import pytest
from conftest import MODEL

from entropy_serve.server.process import ServerProcess

pytestmark = pytest.mark.e2e  # starts a real engine

ALICE, BOB = "alice-key", "bob-key"
MAX_FILE_BYTES, MAX_LINES = 200_000, 40
FINAL = ("completed", "failed", "cancelled", "expired")


class Deployment:
    """The test server, restartable on its database."""

    def __init__(self, database: str):
        self.database = database
        self.server = self.start()

    def start(self) -> ServerProcess:
        return ServerProcess(
            "--api-key",
            ALICE,
            "--api-key",
            BOB,
            "--database-url",
            f"sqlite:///{self.database}",
            "--max-file-bytes",
            str(MAX_FILE_BYTES),
            "--max-batch-lines",
            str(MAX_LINES),
            "--batch-max-in-flight",
            "2",
            "--max-model-len",
            "2048",
            "--dtype",
            "float32",
        ).__enter__()

    def client(self, key: str = ALICE) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=key, max_retries=0, timeout=120)

    def restart(self) -> None:
        assert self.server.terminate() == 0
        self.server = self.start()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    deployment = Deployment(str(tmp_path_factory.mktemp("batches") / "state.sqlite3"))
    yield deployment
    deployment.server.terminate()


def chat_line(custom_id: str, question: str, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 8,
            "temperature": 0,
            **body,
        },
    }


def upload(client: openai.OpenAI, lines: list) -> str:
    content = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()
    return client.files.create(file=("input.jsonl", io.BytesIO(content)), purpose="batch").id


def create(client: openai.OpenAI, lines: list) -> openai.types.Batch:
    return client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/chat/completions", completion_window="24h"
    )


def wait(client: openai.OpenAI, batch_id: str, until=lambda batch: batch.status in FINAL, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id}: {batch.status}, {batch.request_counts}")


def records(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(text) for text in client.files.content(file_id).text.splitlines()]


def test_a_batch_runs_to_completion_and_its_files_are_read(deployment):
    client = deployment.client()
    lines = [chat_line(f"q{i}", f"What is {i} + 1?") for i in range(4)]
    lines.append({**chat_line("elsewhere", "hi"), "url": "/v1/completions"})  # not the batch's endpoint
    lines.append({**chat_line("bad", "hi"), "body": {"model": MODEL, "messages": []}})
    batch = create(client, lines)
    assert batch.status == "validating" and batch.expires_at == batch.created_at + 24 * 3600
    batch = wait(client, batch.id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 4, "failed": 2}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    answered = records(client, batch.output_file_id)
    bodies = [record["response"]["body"] for record in answered]
    assert batch.usage.input_tokens == sum(body["usage"]["prompt_tokens"] for body in bodies)
    assert batch.usage.output_tokens == sum(body["usage"]["completion_tokens"] for body in bodies) > 0
    assert [r["custom_id"] for r in answered] == ["q0", "q1", "q2", "q3"]  # input order
    interactive = client.chat.completions.create(**lines[0]["body"])
    assert answered[0]["response"]["status_code"] == 200
    assert answered[0]["response"]["body"]["choices"][0]["message"]["content"] == interactive.choices[0].message.content
    failed = {r["custom_id"]: r["response"] for r in records(client, batch.error_file_id)}
    assert failed["elsewhere"]["status_code"] == 404 and failed["bad"]["status_code"] == 400
    assert batch.id in [b.id for b in client.batches.list().data]
    output = client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output" and output.bytes == len(client.files.content(output.id).content)
    assert client.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch.input_file_id)


def test_a_key_sees_only_its_own_files_and_batches(deployment):
    alice, bob = deployment.client(ALICE), deployment.client(BOB)
    batch = create(alice, [chat_line("only", "hi")])
    for call in (
        lambda: bob.batches.retrieve(batch.id),
        lambda: bob.batches.cancel(batch.id),
        lambda: bob.files.retrieve(batch.input_file_id),
        lambda: bob.files.content(batch.input_file_id),
        lambda: bob.files.delete(batch.input_file_id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in bob.batches.list().data]
    assert batch.input_file_id not in [f.id for f in bob.files.list().data]
    with pytest.raises(openai.BadRequestError):  # bob cannot run alice's file either
        bob.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.AuthenticationError):
        deployment.client("wrong-key").batches.list()
    wait(alice, batch.id)


def test_a_cancelled_batch_keeps_what_was_answered(deployment):
    client = deployment.client()
    lines = [chat_line(f"long{i}", "Tell me a story.", max_tokens=64, ignore_eos=True) for i in range(12)]
    batch = create(client, lines)
    wait(client, batch.id, until=lambda b: b.status == "in_progress")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = wait(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert batch.request_counts.completed < 12
    assert len(records(client, batch.output_file_id)) == batch.request_counts.completed
    with pytest.raises(openai.BadRequestError):  # nothing left to cancel
        client.batches.cancel(batch.id)


def test_bad_files_and_batches_are_refused_clearly(deployment):
    client = deployment.client()
    with pytest.raises(openai.BadRequestError) as raised:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    assert raised.value.body["param"] == "purpose"
    response = httpx.post(
        f"{deployment.server.url}/v1/files",
        headers={"Authorization": f"Bearer {ALICE}"},
        files={"file": ("big.jsonl", b"x" * (MAX_FILE_BYTES + 1))},
        data={"purpose": "batch"},
    )
    assert response.status_code == 413 and response.json()["error"]["type"] == "invalid_request_error"
    file_id = upload(client, [chat_line("a", "hi")])
    for fields, param in (
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "file-nothing"}, "input_file_id"),
    ):
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
        with pytest.raises(openai.BadRequestError) as raised:
            client.batches.create(**body)
        assert raised.value.body["param"] == param
    # A file that is not a batch fails validation, with OpenAI's errors list.
    for lines, code in (
        ([chat_line("same", "a"), chat_line("same", "b")], "duplicate_custom_id"),
        ([chat_line(f"n{i}", "a") for i in range(MAX_LINES + 1)], "too_many_requests"),
    ):
        batch = wait(client, create(client, lines).id)
        assert batch.status == "failed" and batch.failed_at
        assert batch.errors.data[0].code == code


def test_a_restart_mid_batch_resumes_without_answering_a_line_twice(deployment):
    client = deployment.client()
    lines = [chat_line(f"r{i}", f"Count from {i}.", max_tokens=32, ignore_eos=True) for i in range(14)]
    batch = create(client, lines)
    wait(client, batch.id, until=lambda b: b.request_counts is not None and b.request_counts.completed >= 3)
    deployment.restart()
    with sqlite3.connect(deployment.database) as db:
        before = dict(
            db.execute("SELECT line_number, record FROM batch_lines WHERE batch_id = ?", (batch.id,)).fetchall()
        )
    assert 3 <= len(before) < 14  # stopped in the middle
    client = deployment.client()
    batch = wait(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 14
    answered = records(client, batch.output_file_id)
    assert [r["custom_id"] for r in answered] == [f"r{i}" for i in range(14)]  # each once, in order
    for line_number, record in before.items():  # what the first server wrote is kept as it was
        assert answered[line_number - 1] == json.loads(record)
