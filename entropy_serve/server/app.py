"""The HTTP application: OpenAI-compatible routes, each a thin shell around the service.

Request path: body-size guard (413, middleware.py) -> API key (401, /v1 only) -> JSON
body (400 when malformed) -> `Service.answer` (validation, planning, generation:
service.py) -> the reply as JSON, or as server-sent events for streams. The client
going away cancels the work, which aborts it in the engine. `/health` and `/metrics`
stay open without a key.

A stream starts only once its first chunk exists (`Service.answer` returns then), so
errors before it keep their HTTP status; an error after it becomes one final
`data: {"error": ...}` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from entropy_serve.json_input import MalformedJSON, parse_json
from entropy_serve.server.drain import Drain, Ticket
from entropy_serve.server.errors import APIError, BadRequest, ClientDisconnected, Unauthorized, error_body, install_error_handlers
from entropy_serve.server.middleware import BodySizeLimit, ErrorCounter
from entropy_serve.server.service import Endpoint, Service, model_card
from entropy_serve.server.strategies.context import ChunkStream

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"


def create_app(service: Service, drain: Drain | None = None) -> FastAPI:
    """The app; `drain` is SIGTERM's (commands/serve.py), a new one where not given."""
    config, engine = service.config, service.engine
    drain = drain or Drain(config.drain_timeout_s)

    async def lifespan(_: FastAPI):
        tasks = [asyncio.create_task(service.start()), asyncio.create_task(engine.watch())]
        yield
        for task in tasks:
            task.cancel()
        service.stop()

    app = FastAPI(title="entropy-serve", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)
    app.add_middleware(ErrorCounter)
    started_at = int(time.time())

    @app.get("/health")
    async def health() -> Response:
        if drain.draining:
            message = f"draining: shutting down, {drain.num_in_flight} request(s) in flight"
            return JSONResponse(error_body(503, message, "service_unavailable"), status_code=503)
        if engine.ready:
            return JSONResponse({"status": "ok"})
        message = engine.failure or f"the engine is {engine.state.value}"
        return JSONResponse(error_body(503, message, "service_unavailable"), status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    router = APIRouter(prefix="/v1", dependencies=[Depends(api_key_checker(config.api_key))])

    @router.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card(config, engine.max_model_len, started_at, engine.facts)]}

    @router.post("/completions")
    async def completions(raw: Request) -> Response:
        return await answer(service, drain, raw, Endpoint.COMPLETIONS)

    @router.post("/chat/completions")
    async def chat_completions(raw: Request) -> Response:
        return await answer(service, drain, raw, Endpoint.CHAT_COMPLETIONS)

    app.include_router(router)
    return app


async def answer(service: Service, drain: Drain, raw: Request, endpoint: Endpoint) -> Response:
    """Parse, call, serialize; in flight for the drain until answered (a stream: until its
    last event)."""
    ticket = drain.enter()
    try:
        reply = await until_disconnected(raw, drain.until_cut(service.answer(await json_body(raw), endpoint)))
        if isinstance(reply, ChunkStream):
            events = sse_events(drain.cut_short(reply), ticket)
            ticket = None  # the stream releases it
            return StreamingResponse(events, media_type="text/event-stream", headers=extension_headers(reply.extensions))
        body = reply.model_dump(exclude_unset=True)
        return JSONResponse(body, headers=extension_headers(body))
    finally:
        if ticket is not None:
            ticket.release()


async def json_body(raw: Request) -> object:
    try:
        return parse_json(await raw.body())
    except MalformedJSON as error:
        raise BadRequest(f"malformed JSON body: {error}", param=error.field) from None


def extension_headers(fields: dict) -> dict[str, str]:
    """Difficulty routing's class, also as headers (the only place a stream carries it)."""
    difficulty = fields.get("difficulty")
    if difficulty is None:
        return {}
    return {
        "x-entropy-serve-difficulty": difficulty["class"],
        "x-entropy-serve-difficulty-probabilities": json.dumps(difficulty["probabilities"]),
    }


async def sse_events(stream: AsyncIterable, ticket: Ticket | None = None) -> AsyncIterator[str]:
    """Server-sent events of `stream`'s chunks, then [DONE]; an error ends it with an error
    event instead. `ticket`: released when the last event is out."""
    try:
        async for chunk in stream:
            yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
        yield SSE_DONE
    except APIError as error:
        logger.warning("stream ended with an error: %s", error.message)
        yield sse_error(error_body(error.status_code, error.message, error.error_type, error.param, error.code))
    except Exception as error:
        logger.exception("stream ended with an unexpected error")
        yield sse_error(error_body(500, f"internal error: {type(error).__name__}", "server_error"))
    finally:
        if ticket is not None:
            ticket.release()


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


def api_key_checker(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise Unauthorized("Incorrect or missing API key", code="invalid_api_key")

    return check
