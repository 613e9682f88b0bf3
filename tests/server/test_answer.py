"""A streamed answer whose client leaves: the generator beneath, whose cleanup aborts the
request in the engine, is closed before the response returns, not when the garbage
collector gets to it (in CI that had let a 4000-token request run on past 20 s)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from openai.types import Completion
from prometheus_client import REGISTRY
from starlette.requests import Request
from test_planning import FakeEngine

from entropy_serve.server.api.answer import answer
from entropy_serve.server.api.drain import Drain
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core import submission
from entropy_serve.server.core.answering import ChunkStream
from entropy_serve.server.core.planning import Planner
from entropy_serve.server.engine.adapters.channel import EntropyStore
from entropy_serve.server.engine.grammar_warmup import GrammarWarmup
from entropy_serve.server.protocol.requests import CompletionRequest
from entropy_serve.server.protocol.streaming import completion_chunks

SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},  # uvicorn's: a disconnect is a received message
    "http_version": "1.1",
    "method": "POST",
    "path": "/v1/completions",
    "headers": [(b"content-type", b"application/json")],
}


class Client:
    """The ASGI side of one request: sends its body, reads `num_events` events, then
    stops reading (its next send never returns) and leaves."""

    def __init__(self, num_events: int):
        self.num_events = num_events
        self.events: list[bytes] = []
        self.left = asyncio.Event()
        self._sent_body = False

    async def receive(self) -> dict:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": json.dumps({"prompt": "hi"}).encode(), "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        await asyncio.sleep(0)  # a real send yields to the loop
        if message["type"] != "http.response.body":
            return
        if len(self.events) == self.num_events:
            self.left.set()
            await asyncio.sleep(30)  # the socket's buffer is full: nobody reads
        self.events.append(message["body"])


def engine_chunks(closed: list[str]):
    async def chunks():
        try:
            for i in range(1000):
                await asyncio.sleep(0.01)
                yield Completion(id=f"c{i}", choices=[], created=0, model="m", object="text_completion")
        finally:
            closed.append("engine")

    return chunks()


def answered(client: Client, closed: list[str], *, leave_before_the_stream: bool = False) -> list[str]:
    """Serve one streamed request to `client`; what was closed when the response returned."""

    async def scenario():
        response = await answer(Drain(timeout_s=60), Request(SCOPE, client.receive), work)
        if leave_before_the_stream:  # the first chunk exists, no event has been sent
            client.left.set()

        async def respond():
            await response(SCOPE, client.receive, client.send)
            return list(closed)  # before anything else runs on the loop (the GC's finalizers)

        return await asyncio.wait_for(respond(), 5)

    async def work(body):
        assert body == {"prompt": "hi"}
        return await ChunkStream.start(engine_chunks(closed))

    return asyncio.run(scenario())


def test_a_client_that_stops_reading_and_leaves_closes_the_engines_generator_at_once():
    client = Client(num_events=3)
    assert answered(client, closed := []) == ["engine"]
    assert closed == ["engine"]  # once
    assert len(client.events) == 3 and all(event.startswith(b"data: {") for event in client.events)


def test_a_client_gone_before_the_first_event_closes_the_engines_generator():
    client = Client(num_events=0)
    assert answered(client, [], leave_before_the_stream=True) == ["engine"]
    assert client.events == []


class GeneratingEngine(FakeEngine):
    """An engine whose requests generate a token every 10 ms for ever; records which
    were aborted (their generators closed), as vLLM's AsyncLLM.generate aborts then."""

    grammars = GrammarWarmup()

    def __init__(self):
        self.aborted: list[str] = []

    async def generate(self, prompt, params, request_id, data_parallel_rank=None):
        try:
            for _ in range(1000):
                await asyncio.sleep(0.01)
                piece = SimpleNamespace(
                    index=0, text="a", token_ids=[1], logprobs=None, finish_reason=None, stop_reason=None
                )
                yield SimpleNamespace(
                    outputs=[piece],
                    prompt_token_ids=prompt["prompt_token_ids"],
                    num_cached_tokens=0,
                    prompt_logprobs=None,
                    finished=False,
                )
        finally:
            self.aborted.append(request_id)


def num_aborted() -> float:
    return REGISTRY.get_sample_value("entropy_serve_requests_aborted_total") or 0.0


def test_closing_a_stream_of_chunks_aborts_every_engine_request_beneath_at_once():
    async def scenario():
        engine, store = GeneratingEngine(), EntropyStore()
        plan = Planner(ServerConfig(model="m", served_model_name="m"), engine, None, False).plan(
            CompletionRequest(model="m", prompt=["one", "two"], max_tokens=50, stream=True)
        )
        aborted_before = num_aborted()
        chunks = completion_chunks(engine, store, plan)
        await anext(chunks)
        await chunks.aclose()
        assert sorted(engine.aborted) == sorted(job.key for job in plan.jobs) and len(plan.jobs) == 2
        assert num_aborted() == aborted_before + 1  # one request, counted once

    asyncio.run(scenario())


def test_a_watch_that_gives_up_aborts_the_engine_requests_at_once():
    async def scenario():
        engine = GeneratingEngine()
        plan = Planner(ServerConfig(model="m", served_model_name="m"), engine, None, False).plan(
            CompletionRequest(model="m", prompt="one", max_tokens=50)
        )

        async def give_up(step):
            raise RuntimeError("enough")

        with pytest.raises(RuntimeError, match="enough"):
            await submission.run(engine, EntropyStore(), plan, watch=give_up)
        assert engine.aborted == [job.key for job in plan.jobs]

    asyncio.run(scenario())
