"""The HTTP application: OpenAI-compatible routes around the engine.

Request path: body-size guard (413) -> API key (401, /v1 only) -> pydantic validation
(400) -> model name (404) -> Generator (render, bound, engine) -> openai response types.
`/health` and `/metrics` stay open without a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from entropy_serve.server import metrics, responses
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine import EngineHolder
from entropy_serve.server.errors import (
    APIError,
    ClientDisconnected,
    ModelNotFound,
    Unauthorized,
    error_body,
    install_error_handlers,
)
from entropy_serve.server.middleware import BodySizeLimit, ErrorCounter
from entropy_serve.server.generation import Generator, PreparedRequest, count_usage
from entropy_serve.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest

logger = logging.getLogger(__name__)


def create_app(config: ServerConfig, holder: EngineHolder) -> FastAPI:
    generator = Generator(holder, config)

    async def lifespan(_: FastAPI):
        tasks = [asyncio.create_task(holder.start()), asyncio.create_task(holder.watch())]
        yield
        for task in tasks:
            task.cancel()
        holder.stop()

    app = FastAPI(title="entropy-serve", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)
    app.add_middleware(ErrorCounter)

    @app.get("/health")
    async def health() -> Response:
        if holder.ready:
            return JSONResponse({"status": "ok"})
        message = holder.failure or f"the engine is {holder.state.value}"
        return JSONResponse(error_body(503, message, "service_unavailable"), status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    router = APIRouter(prefix="/v1", dependencies=[Depends(api_key_checker(config.api_key))])

    @router.get("/models")
    async def list_models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": config.served_model_name,
                    "object": "model",
                    "created": int(app_started_at),
                    "owned_by": "entropy-serve",
                    "root": config.model,
                    "max_model_len": holder.max_model_len or None,
                }
            ],
        }

    @router.post("/completions")
    async def completions(body: CompletionRequest, raw: Request) -> Response:
        metrics.REQUESTS.labels(endpoint="completions").inc()
        check_model(body, config)
        prepared = generator.prepare_completion(body)
        if prepared.stream:
            return await sse_response(raw, stream_completion(generator, prepared))
        outputs = await until_disconnected(raw, generator.run(prepared))
        n = prepared.params.n
        choices = [(p * n + c.index, c) for p, out in enumerate(outputs) for c in out.outputs]
        return JSONResponse(
            responses.completion(
                prepared.request_id, prepared.model, prepared.created, choices,
                prepared.num_top_logprobs, responses.usage(*count_usage(outputs)),
            ).model_dump(exclude_unset=True)
        )

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Response:
        metrics.REQUESTS.labels(endpoint="chat_completions").inc()
        check_model(body, config)
        prepared = generator.prepare_chat(body)
        if prepared.stream:
            return await sse_response(raw, stream_chat(generator, prepared))
        (output,) = await until_disconnected(raw, generator.run(prepared))
        return JSONResponse(
            responses.chat_completion_response(
                prepared.request_id, prepared.model, prepared.created, output.outputs,
                prepared.num_top_logprobs, responses.usage(*count_usage([output])),
            ).model_dump(exclude_unset=True)
        )

    app_started_at = time.time()
    app.include_router(router)
    return app


def check_model(request: SamplingRequest, config: ServerConfig) -> None:
    if request.model != config.served_model_name:
        raise ModelNotFound(
            f"The model `{request.model}` does not exist; this server serves "
            f"`{config.served_model_name}`",
            param="model",
            code="model_not_found",
        )


def api_key_checker(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise Unauthorized("Incorrect or missing API key", code="invalid_api_key")

    return check


async def until_disconnected(request: Request, work: Awaitable):
    """Await `work`, cancelling it (and so aborting it in the engine) if the client leaves."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.create_task(_wait_for_disconnect(request))
    done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    if work_task in done:
        watch_task.cancel()
        return work_task.result()
    work_task.cancel()
    metrics.ABORTED.inc()
    raise ClientDisconnected("client disconnected")


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def sse_response(request: Request, events: AsyncIterator[str]) -> StreamingResponse:
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

    return StreamingResponse(all_events(), media_type="text/event-stream")


def sse_error(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def stream_completion(generator: Generator, prepared: PreparedRequest) -> AsyncIterator[str]:
    n = prepared.params.n
    num_completion = 0
    num_prompt_by_index: dict[int, int] = {}
    text_offsets: dict[int, int] = {}  # choice index -> characters streamed so far
    async for prompt_index, output in generator.stream(prepared):
        num_prompt_by_index.setdefault(prompt_index, len(output.prompt_token_ids or ()))
        num_completion += sum(len(c.token_ids) for c in output.outputs)
        choices = [(prompt_index * n + c.index, c) for c in output.outputs]
        yield responses.sse(
            responses.completion(
                prepared.request_id, prepared.model, prepared.created, choices,
                prepared.num_top_logprobs, None, text_offsets,
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


async def stream_chat(generator: Generator, prepared: PreparedRequest) -> AsyncIterator[str]:
    started: set[int] = set()
    num_completion, num_prompt = 0, 0
    async for _, output in generator.stream(prepared):
        num_prompt = num_prompt or len(output.prompt_token_ids or ())
        choices = []
        for c in output.outputs:
            num_completion += len(c.token_ids)
            choices.append(responses.chat_delta_choice(c, prepared.num_top_logprobs, c.index not in started))
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
