"""A route's answer over HTTP: the reply as JSON, or a stream as server-sent events, in
flight for the drain until its last byte, cancelled when the client leaves."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from entropy_serve.server.api.drain import Drain, Ticket
from entropy_serve.server.api.request_body import json_body
from entropy_serve.server.core.answering import ChunkStream
from entropy_serve.server.errors import APIError, ClientDisconnected, error_body

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"


async def answer(
    drain: Drain, raw: Request, work: Callable[[object], Awaitable], *, named_events: bool = False
) -> Response:
    """Parse the JSON body, `work` it (a reply, or a ChunkStream), serialize; in flight for
    the drain until answered (a stream: until its last event). `named_events`: the
    Responses API's stream form (sse_events)."""
    ticket = drain.enter()
    try:
        reply = await until_disconnected(raw, drain.until_cut(work(await json_body(raw))))
        if isinstance(reply, ChunkStream):
            events = sse_events(drain.cut_short(reply), ticket, named=named_events)
            ticket = None  # the stream releases it
            return ClosingStreamingResponse(
                events,
                media_type="text/event-stream",
                headers=extension_headers(reply.extensions),
                also_close=reply.aclose,  # even if the client left before the first event
            )
        body = reply.model_dump(exclude_unset=True)
        return JSONResponse(body, headers=extension_headers(body))
    finally:
        if ticket is not None:
            ticket.release()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body (and `also_close`) however it ends.
    Starlette drops the body iterator when the client leaves while a chunk is being sent,
    and a generator left to the garbage collector aborts its engine request only when a
    collection gets to it: in CI, more than 20 s of generating for nobody."""

    def __init__(self, content: AsyncGenerator, *, also_close: Callable[[], Awaitable] | None = None, **kwargs):
        super().__init__(content, **kwargs)  # an async generator: Starlette keeps it as body_iterator
        self._also_close = also_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled handler still aborts its requests
                await self.body_iterator.aclose()
                if self._also_close is not None:
                    await self._also_close()


def extension_headers(fields: dict) -> dict[str, str]:
    """Difficulty routing's class, also as headers (the only place a stream carries it)."""
    difficulty = fields.get("difficulty")
    if difficulty is None:
        return {}
    return {
        "x-entropy-serve-difficulty": difficulty["class"],
        "x-entropy-serve-difficulty-probabilities": json.dumps(difficulty["probabilities"]),
    }


async def sse_events(stream: AsyncIterable, ticket: Ticket | None = None, *, named: bool = False) -> AsyncIterator[str]:
    """Server-sent events of `stream`'s chunks, then [DONE]; an error ends it with an error
    event instead. `ticket`: released when the last event is out. `named`: the Responses
    API's form: each event named by its type, no [DONE], an error as its `error` event."""
    sequence = 0
    try:
        async with aclosing(aiter(stream)) as chunks:
            async for chunk in chunks:
                if named:
                    sequence = chunk.sequence_number + 1
                    yield f"event: {chunk.type}\ndata: {chunk.model_dump_json()}\n\n"
                else:
                    yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
        if not named:
            yield SSE_DONE
        return
    except APIError as error:
        logger.warning("stream ended with an error: %s", error.message)
        body = error_body(error.status_code, error.message, error.error_type, error.param, error.code)
    except Exception as error:
        logger.exception("stream ended with an unexpected error")
        body = error_body(500, f"internal error: {type(error).__name__}", "server_error")
    finally:
        if ticket is not None:
            ticket.release()
    if named:
        event = {
            "type": "error",
            "sequence_number": sequence,
            **body["error"],
            "code": body["error"]["code"] or body["error"]["type"],
        }
        yield f"event: error\ndata: {json.dumps(event)}\n\n"
    else:
        yield sse_error(body)


def sse_error(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


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
