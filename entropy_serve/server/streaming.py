"""Server-sent event streams, and the client's connection while we generate.

A stream starts only once its first event exists, so errors before it keep their HTTP
status; an error after it becomes one final `data: {"error": ...}` event. A client
that goes away cancels the generation, which aborts it in the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import StreamingResponse

from entropy_serve.server import responses, submission
from entropy_serve.server.adapters.channel import TokenEntropy
from entropy_serve.server.engine import EngineHolder
from entropy_serve.server.errors import APIError, ClientDisconnected, error_body
from entropy_serve.server.generation import PreparedRequest

logger = logging.getLogger(__name__)


async def until_disconnected(request: Request, work: Awaitable):
    """Await `work`, cancelling it (and so aborting it in the engine) if the client leaves."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.create_task(_wait_for_disconnect(request))
    done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    if work_task in done:
        watch_task.cancel()
        return work_task.result()
    work_task.cancel()  # submission.stream counts the abort, once, if jobs were running
    raise ClientDisconnected("client disconnected")


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass

async def sse_response(request: Request, events: AsyncIterator[str], headers: dict | None = None) -> StreamingResponse:
    """Stream server-sent events, once the first one exists.

    Waiting for the first event means an error before it (bad parameters, engine not
    ready) is still an ordinary HTTP error with its status; after it, the status line is
    gone, so an error becomes one final `data: {"error": ...}` event.
    """
    first = await until_disconnected(request, anext(events))

    async def all_events() -> AsyncIterator[str]:
        yield first
        try:
            async for event in events:
                yield event
        except APIError as error:
            logger.warning("stream ended with an error: %s", error.message)
            yield sse_error(error_body(error.status_code, error.message, error.error_type, error.param, error.code))
        except Exception as error:
            logger.exception("stream ended with an unexpected error")
            yield sse_error(error_body(500, f"internal error: {type(error).__name__}", "server_error"))

    return StreamingResponse(all_events(), media_type="text/event-stream", headers=headers)


def sse_error(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def stream_completion(holder: EngineHolder, prepared: PreparedRequest) -> AsyncIterator[str]:
    n = prepared.n
    num_completion = 0
    num_prompt_by_index: dict[int, int] = {}
    text_offsets: dict[int, int] = {}  # choice index -> characters streamed so far
    entropy = EntropyAccumulator(prepared.return_entropy)
    async for delta in submission.stream(holder, prepared):
        output = delta.output
        num_prompt_by_index.setdefault(delta.prompt_index, len(output.prompt_token_ids or ()))
        num_completion += sum(len(c.token_ids) for c in output.outputs)
        choices = [(delta.prompt_index * n + c.index, c) for c in output.outputs]
        entropies = {delta.prompt_index * n + i: tokens for i, tokens in delta.entropies.items()}
        yield responses.sse(
            responses.completion(
                prepared.request_id, prepared.model, prepared.created, choices,
                prepared.num_top_logprobs, None, text_offsets, entropy.fields(choices, entropies),
            )
        )
        for index, c in choices:
            text_offsets[index] = text_offsets.get(index, 0) + len(c.text)
    if prepared.include_usage:
        yield responses.sse(
            responses.completion(
                prepared.request_id, prepared.model, prepared.created, [], None,
                responses.usage(sum(num_prompt_by_index.values()), num_completion),
            )
        )
    yield responses.SSE_DONE


async def stream_chat(holder: EngineHolder, prepared: PreparedRequest) -> AsyncIterator[str]:
    started: set[int] = set()
    num_completion, num_prompt = 0, 0
    entropy = EntropyAccumulator(prepared.return_entropy)
    async for delta in submission.stream(holder, prepared):
        output = delta.output
        num_prompt = num_prompt or len(output.prompt_token_ids or ())
        fields = entropy.fields([(c.index, c) for c in output.outputs], delta.entropies)
        choices = []
        for c in output.outputs:
            num_completion += len(c.token_ids)
            first = c.index not in started
            choices.append(responses.chat_delta_choice(c, prepared.num_top_logprobs, first, fields.get(c.index)))
            started.add(c.index)
        yield responses.sse(responses.chat_chunk(prepared.request_id, prepared.model, prepared.created, choices))
    if prepared.include_usage:
        yield responses.sse(
            responses.chat_chunk(
                prepared.request_id, prepared.model, prepared.created, [],
                responses.usage(num_prompt, num_completion),
            )
        )
    yield responses.SSE_DONE


class EntropyAccumulator:
    """Per-chunk entropy fields; the chunk that finishes a choice also gets its summary."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.so_far: dict[int, list[TokenEntropy]] = {}

    def fields(self, choices, entropies: dict[int, list[TokenEntropy]]) -> dict[int, dict]:
        if not self.enabled:
            return {}
        result = {}
        for index, output in choices:
            tokens = entropies.get(index, [])
            self.so_far.setdefault(index, []).extend(tokens)
            result[index] = responses.entropy_field(tokens, summary=False)
            if output.finish_reason is not None:
                result[index]["summary"] = responses.entropy_field(self.so_far[index], summary=True)["summary"]
        return result
