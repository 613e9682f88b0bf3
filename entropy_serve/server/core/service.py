"""The in-process answering API: the HTTP API without HTTP.

`Service.answer(body, endpoint)` takes the JSON body a client sends to
/v1/completions or /v1/chat/completions and returns what the route serializes: a
`Completion` / `ChatCompletion` (the `openai` package's types, our extensions as extra
fields), or, for `stream: true`, a ChunkStream of chunks. Errors are the same typed
exceptions (errors.APIError) the routes turn into OpenAI's error shape. The batch CLI,
calibration and the trainers answer through it, so a body behaves the same in-process
as over HTTP.

Order of operations: text check (no lone surrogates) -> strict validation
(protocol/requests.py, protocol/extensions.py) -> model name -> strategy, if any
(strategies/), else planning.py's plan (sampler_plan.py decides the sampler) ->
submission.py runs it -> protocol/responses.py / protocol/streaming.py build the reply.

The service also composes the parts a server runs (each owns its own lifecycle): the
engine (engine/holder.py), the entropy channel (engine/adapters/channel.py), the entropy profile
(handed to the adapters once, at engine start) and the difficulty router.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.calibration import load_profile, model_fingerprint
from entropy_serve.probes.router import DifficultyRouter
from entropy_serve.server import metrics
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.answering import Reply, StrategyContext
from entropy_serve.server.core.planning import Planner
from entropy_serve.server.core.submission import Result
from entropy_serve.server.engine.adapters.channel import EntropyChannel
from entropy_serve.server.engine.adapters.spec import profile_to_env
from entropy_serve.server.engine.adapters.transport import channel_transport
from entropy_serve.server.engine.facts import EngineFacts
from entropy_serve.server.engine.feature_engines import start_feature_engine
from entropy_serve.server.engine.holder import EngineHolder
from entropy_serve.server.errors import BadRequest, ModelNotFound, validation_message
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest, SamplingRequest
from entropy_serve.server.strategies import ANSWERS, defaults

logger = logging.getLogger(__name__)


class Endpoint(enum.Enum):
    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat_completions"


REQUEST_TYPES: dict[Endpoint, type[SamplingRequest]] = {
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.CHAT_COMPLETIONS: ChatCompletionRequest,
}


Body = TypeVar("Body", bound=BaseModel)


def parse_request(body: object, endpoint: Endpoint) -> SamplingRequest:
    """The validated request of a JSON body, or a BadRequest naming the bad field."""
    return parse_body(body, REQUEST_TYPES[endpoint])


def parse_body(body: object, model: type[Body]) -> Body:
    """A JSON body as `model` (any route's request model), or a BadRequest naming the bad
    field: not an object, text UTF-8 cannot hold, or a field `model` refuses."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    check_text(body)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        message, param = validation_message(list(error.errors(include_url=False)))
        raise BadRequest(message, param=param) from error


def check_text(value: object, path: tuple[str, ...] = ()) -> None:
    """400 for any string that UTF-8 cannot hold: a lone UTF-16 surrogate ("\\ud800") is a
    legal JSON escape, but no tokenizer or engine can take it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            field = ".".join(path) or "body"
            raise BadRequest(
                f"{field}: holds a lone UTF-16 surrogate ({value[error.start]!r} at {error.start}), which is not text",
                param=path[0] if path else None,
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, path)
            check_text(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, (*path, str(index)))


class Service:
    def __init__(self, config: ServerConfig, on_dead: Callable[[], None] = lambda: None):
        self.config = config
        self.engine = EngineHolder(config, on_dead)
        self.channel = EntropyChannel()
        loaded = load_profile(config.entropy_profile, config.model) if config.entropy_profile else None
        self.profile = loaded.profile if loaded else None
        metrics.export_profile(loaded.data.get("summary") if loaded else None)
        self.router = DifficultyRouter.load(
            config.probe, config.model, config.difficulty_table, config.probe_min_confidence
        )
        self.planner = Planner(config, self.engine, self.profile)
        learned = (
            defaults.load(config.strategy_defaults, model_fingerprint(config.model))
            if config.strategy_defaults
            else None
        )
        self.context = StrategyContext(
            config=config,
            engine=self.engine,
            store=self.channel.store,
            planner=self.planner,
            router=self.router,
            defaults=learned,
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        transport = channel_transport(self.config.entropy_channel, self.config.distributed_executor_backend)
        env = {**self.channel.start(transport, self.config.entropy_channel_host), **profile_to_env(self.profile)}
        await self.engine.start(env, companion=self._start_router if self.router else None)

    async def _start_router(self, engine: AsyncLLM) -> AsyncLLM | None:
        """The router's pooling engine, in the dtype the generation engine resolved."""
        dtype = engine.vllm_config.model_config.dtype
        self.router.attach(
            await start_feature_engine(self.config, self.router.pooling, self.router.feature_suffix, dtype)
        )
        return self.router.engine

    def stop(self) -> None:
        self.engine.stop()
        if self.router is not None:
            self.router.stop()
        self.channel.close()

    # -- answering ---------------------------------------------------------------------

    async def answer(self, body: object, endpoint: Endpoint | str) -> Reply:
        """Answer one request body as the endpoint's route does (see the module doc)."""
        endpoint = Endpoint(endpoint)
        metrics.REQUESTS.labels(endpoint=endpoint.value).inc()
        request = self._parse(body, endpoint)
        if request.strategy is not None:
            with self.engine.strategy_engine() as rank:  # one engine holds its shared prefix
                context = dataclasses.replace(self.context, data_parallel_rank=rank)
                return await ANSWERS[type(request.strategy)](context, request)
        return await self.context.reply(self.planner.plan(request))

    async def generate(self, body: object, endpoint: Endpoint | str) -> Result:
        """The body's generation as our own records (token ids, vLLM's logprobs, entropies),
        for in-process callers that need tokens rather than text: the policy trainer's
        rollouts. The same validation and plan as `answer`; no strategy, no stream."""
        request = self._parse(body, Endpoint(endpoint))
        if request.strategy is not None or request.stream:
            raise BadRequest("generate: takes an ordinary request (no strategy, no stream)")
        return await self.context.run(self.planner.plan(request))

    def _parse(self, body: object, endpoint: Endpoint) -> SamplingRequest:
        request = parse_request(body, endpoint)
        check_model(self.config, request.model)
        return request

    def prompt_token_ids(self, body: object, endpoint: Endpoint | str) -> list[list[int]]:
        """The token ids the engine would see for the body's prompt(s) (chat template applied)."""
        return self.planner.render(parse_request(body, Endpoint(endpoint)))


def check_model(config: ServerConfig, name: str) -> None:
    """A 404 in OpenAI's words unless `name` is the served model's."""
    if name != config.served_model_name:
        raise ModelNotFound(
            f"The model `{name}` does not exist; this server serves `{config.served_model_name}`",
            param="model",
            code="model_not_found",
        )


def model_card(config: ServerConfig, max_model_len: int, created: int, engine: EngineFacts | None = None) -> dict:
    """The served model, as `/v1/models` lists it: files are named, paths are not shown;
    `engine` says what the engine got on this host (dtype, model runner, cores, KV cache)."""
    return {
        "id": config.served_model_name,
        "object": "model",
        "created": created,
        "owned_by": "entropy-serve",
        "root": config.served_model_name,
        "max_model_len": max_model_len or None,
        "entropy_profile": _file_name(config.entropy_profile),
        "difficulty_probe": _file_name(config.probe),
        "strategy_defaults": _file_name(config.strategy_defaults),
        "engine": engine.as_dict() if engine else None,
    }


def _file_name(path: str | None) -> str | None:
    return Path(path).name if path else None


@asynccontextmanager
async def running_service(config: ServerConfig) -> AsyncIterator[Service]:
    """A started service for offline work (calibrate, train-probe, batch), stopped on the way out."""
    service = Service(config)
    await service.start()
    try:
        if not service.engine.ready:
            raise RuntimeError(service.engine.failure or "the engine did not start")
        yield service
    finally:
        service.stop()
