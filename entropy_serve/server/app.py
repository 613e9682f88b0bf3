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
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from entropy_serve.server import metrics, responses, submission
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine import EngineHolder
from entropy_serve.server.errors import ModelNotFound, Unauthorized, error_body, install_error_handlers
from entropy_serve.server.generation import Generator, PreparedRequest
from entropy_serve.server.middleware import BodySizeLimit, ErrorCounter
from entropy_serve.server.protocol import VOTING_STRATEGIES, ChatCompletionRequest, CompletionRequest, SamplingRequest
from entropy_serve.server.strategies import run_strategy
from entropy_serve.server.strategies.difficulty import prepare_difficulty
from entropy_serve.server.streaming import sse_response, stream_chat, stream_completion, until_disconnected

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
                    "entropy_profile": config.entropy_profile,
                    "difficulty_probe": config.probe,
                }
            ],
        }

    async def strategy_reply(body: SamplingRequest, raw: Request, chat: bool) -> Response:
        outcome = await until_disconnected(raw, run_strategy(holder, generator, body))
        winner = outcome.winner
        entropy = {0: responses.entropy_field(winner.entropies, summary=True)} if body.return_entropy else None
        usage = responses.usage(outcome.num_prompt_tokens, outcome.num_generated_tokens)
        prepared = outcome.prepared
        winner.output.index = 0
        if chat:
            reply = responses.chat_completion_response(
                prepared.request_id, prepared.model, prepared.created, [winner.output], prepared.num_top_logprobs,
                usage, entropy=entropy,
            )
        else:
            reply = responses.completion(
                prepared.request_id, prepared.model, prepared.created, [(0, winner.output)],
                prepared.num_top_logprobs, usage, entropy=entropy,
            )
        return JSONResponse({**reply.model_dump(exclude_unset=True), "strategy": outcome.extension()})

    async def generate(
        prepared: PreparedRequest, raw: Request, chat: bool, extension: dict | None = None, headers: dict | None = None
    ) -> Response:
        """One ordinary generation, streamed or whole; `extension` fields join the whole reply."""
        if prepared.stream:
            events = stream_chat(holder, prepared) if chat else stream_completion(holder, prepared)
            return await sse_response(raw, events, headers)
        results = await until_disconnected(raw, submission.run(holder, prepared))
        usage = responses.usage(*submission.count_usage(results))
        entropy = None
        if prepared.return_entropy:
            entropy = {
                p * prepared.n + index: responses.entropy_field(tokens, summary=True)
                for p, r in enumerate(results)
                for index, tokens in r.entropies.items()
            }
        if chat:
            (result,) = results
            reply = responses.chat_completion_response(
                prepared.request_id, prepared.model, prepared.created, result.output.outputs,
                prepared.num_top_logprobs, usage, entropy=entropy,
            )
        else:
            choices = [(p * prepared.n + c.index, c) for p, r in enumerate(results) for c in r.output.outputs]
            reply = responses.completion(
                prepared.request_id, prepared.model, prepared.created, choices, prepared.num_top_logprobs, usage,
                entropy=entropy,
            )
        return JSONResponse({**reply.model_dump(exclude_unset=True), **(extension or {})}, headers=headers)

    async def answer(body: SamplingRequest, raw: Request, chat: bool) -> Response:
        check_model(body, config)
        strategy = body.strategy
        if strategy is None:
            return await generate(generator.prepare(body), raw, chat)
        if strategy.name in VOTING_STRATEGIES:
            return await strategy_reply(body, raw, chat)
        prepared, difficulty = await until_disconnected(raw, prepare_difficulty(holder, generator, body))
        headers = {
            "x-entropy-serve-difficulty": difficulty.name,
            "x-entropy-serve-difficulty-probabilities": json.dumps(difficulty.probabilities),
        }
        return await generate(prepared, raw, chat, {"difficulty": difficulty.extension()}, headers)

    @router.post("/completions")
    async def completions(body: CompletionRequest, raw: Request) -> Response:
        metrics.REQUESTS.labels(endpoint="completions").inc()
        return await answer(body, raw, chat=False)

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Response:
        metrics.REQUESTS.labels(endpoint="chat_completions").inc()
        return await answer(body, raw, chat=True)

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
