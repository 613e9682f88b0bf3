"""The batch runner on a fake service: it never has more lines in flight than its cap,
even when lines take longer than its poll, and answers every line once."""

from __future__ import annotations

import asyncio
import json

from openai.types.chat import ChatCompletion

from entropy_serve.server.core import batches
from entropy_serve.server.core.batches import BatchRunner, new_batch
from entropy_serve.server.core.store import Store

NUM_LINES, MAX_IN_FLIGHT = 7, 2


class SlowService:
    """Answers each chat body after `seconds`, counting how many it holds at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.in_flight = self.most_in_flight = 0

    async def answer(self, body, endpoint) -> ChatCompletion:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.in_flight -= 1
        return ChatCompletion.model_validate({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })  # fmt: skip


def test_lines_in_flight_never_exceed_the_cap_and_each_is_answered_once(tmp_path, monkeypatch):
    monkeypatch.setattr(batches, "POLL_S", 0.01)  # lines take 5 polls each
    store = Store(f"sqlite:///{tmp_path}/state.sqlite3")
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
        for i in range(NUM_LINES)
    ]
    content = "\n".join(map(json.dumps, lines)).encode()
    upload = store.add_file("o", filename="in.jsonl", purpose="batch", content=content)
    fields = new_batch(
        input_file_id=upload["id"], endpoint="/v1/chat/completions", completion_window="24h", metadata=None
    )
    store.add_batch("o", fields)
    service = SlowService(seconds=0.05)
    runner = BatchRunner(store, service, max_in_flight=MAX_IN_FLIGHT, max_lines=100)
    asyncio.run(runner._run(fields["id"]))
    finished = store.batch(fields["id"], "o")
    assert finished["status"] == "completed"
    assert finished["request_counts"] == {"total": NUM_LINES, "completed": NUM_LINES, "failed": 0}
    assert service.most_in_flight == MAX_IN_FLIGHT
    assert finished["usage"]["input_tokens"] == 3 * NUM_LINES


def test_a_running_batch_whose_input_file_was_deleted_fails_instead_of_spinning(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/state.sqlite3")
    upload = store.add_file("o", filename="in.jsonl", purpose="batch", content=b"{}")
    fields = new_batch(
        input_file_id=upload["id"], endpoint="/v1/chat/completions", completion_window="24h", metadata=None
    )
    store.add_batch("o", {**fields, "status": "in_progress"})
    store.delete_file("o", upload["id"])
    runner = BatchRunner(store, SlowService(seconds=0.0), max_in_flight=1, max_lines=100)
    asyncio.run(runner._run(fields["id"]))
    failed = store.batch(fields["id"], "o")
    assert failed["status"] == "failed" and failed["errors"]["data"][0]["code"] == "invalid_file"
