"""The HTTP application: OpenAI-compatible routes, each a thin shell around the service.

Request path: body-size guard (413, middleware.py) -> API key (401, /v1 only; it names
the caller's owner, which scopes stored files, batches and responses) -> JSON body (400
when malformed) -> `Service.answer` (validation, planning, generation: service.py) ->
the reply as JSON, or as server-sent events for streams (http_answer.py). The client
going away cancels the work, which aborts it in the engine. `/health` and `/metrics`
stay open without a key. Beside completions and chat: the Responses API
(responses_api/), Files and Batches (batch_routes.py, run by batches.py's runner, which
lives as long as the app).

A stream starts only once its first chunk exists (`Service.answer` returns then), so
errors before it keep their HTTP status; an error after it becomes one final
`data: {"error": ...}` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from entropy_serve.server.api.answer import answer
from entropy_serve.server.api.batch_routes import batch_router
from entropy_serve.server.api.drain import Drain
from entropy_serve.server.api.middleware import BodySizeLimit, ErrorCounter
from entropy_serve.server.api.responses_api.routes import responses_router
from entropy_serve.server.core.batches import BatchRunner
from entropy_serve.server.core.service import Endpoint, Service, check_model, model_card
from entropy_serve.server.core.store import Store
from entropy_serve.server.errors import Unauthorized, error_body, install_error_handlers

logger = logging.getLogger(__name__)


def create_app(service: Service, drain: Drain | None = None) -> FastAPI:
    """The app; `drain` is SIGTERM's (commands/serve.py), a new one where not given."""
    config, engine = service.config, service.engine
    drain = drain or Drain(config.drain_timeout_s)
    store = Store(config.database_url)
    batches = BatchRunner(store, service, max_in_flight=config.batch_max_in_flight, max_lines=config.max_batch_lines)

    async def lifespan(_: FastAPI):
        tasks = [asyncio.create_task(service.start()), asyncio.create_task(engine.watch())]
        batch_task = asyncio.create_task(batches.run())
        yield
        for task in (*tasks, batch_task):
            task.cancel()
        await asyncio.gather(batch_task, return_exceptions=True)  # its leases released, for the next server
        service.stop()
        store.close()

    app = FastAPI(title="entropy-serve", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes, max_file_bytes=config.max_file_bytes)
    app.add_middleware(ErrorCounter)
    started_at = int(time.time())

    @app.get("/health")
    async def health() -> Response:
        if drain.draining:
            message = f"draining: shutting down, {drain.num_in_flight} request(s) in flight"
            return JSONResponse(error_body(503, message, "service_unavailable"), status_code=503)
        if engine.ready:
            return JSONResponse({"status": "ok", "engines": engine.engines()})
        message = engine.failure or f"the engine is {engine.state.value}"
        return JSONResponse(error_body(503, message, "service_unavailable"), status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    router = APIRouter(prefix="/v1", dependencies=[Depends(api_key_checker(config.api_keys))])

    def card() -> dict:
        return model_card(config, engine.max_model_len, started_at, engine.facts)

    @router.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [card()]}

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict:
        check_model(config, model_id)
        return card()

    @router.post("/completions")
    async def completions(raw: Request) -> Response:
        return await answer(drain, raw, lambda body: service.answer(body, Endpoint.COMPLETIONS))

    @router.post("/chat/completions")
    async def chat_completions(raw: Request) -> Response:
        return await answer(drain, raw, lambda body: service.answer(body, Endpoint.CHAT_COMPLETIONS))

    router.include_router(batch_router(store))
    router.include_router(responses_router(service, store, drain))
    app.include_router(router)
    return app


OPEN_OWNER = "open"  # the owner of everything stored when no keys are configured


def key_owner(api_key: str) -> str:
    """The owner of what a key stores: its digest (the key itself is never stored)."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:32]


def api_key_checker(api_keys: tuple[str, ...]) -> Callable[[Request], Awaitable[None]]:
    """Checks the bearer key (any configured key) and names the caller's owner in
    `request.state.owner`, which scopes files, batches and stored responses."""
    owners = {f"Bearer {key}": key_owner(key) for key in api_keys}

    async def check(request: Request) -> None:
        if not owners:
            request.state.owner = OPEN_OWNER
            return
        owner = owners.get(request.headers.get("authorization", ""))
        if owner is None:
            raise Unauthorized("Incorrect or missing API key", code="invalid_api_key")
        request.state.owner = owner

    return check
