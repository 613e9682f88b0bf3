"""The answering core: what answers a request, plainly or through a strategy, with one
typed context.

Service.answer replies to a plain request here (`reply`); a strategy (strategies/, which
sit beside this module and import it) plans engine work (`planner`), runs it whole (`run`) or replies with an
ordinary generation (`reply`: whole, or streamed as a ChunkStream), and reads the
server's limits (`config`), the tokenizer (`engine`), the difficulty router and the
model's learned strategy settings (`resolved`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core import submission
from entropy_serve.server.core.planning import Planner, RequestPlan
from entropy_serve.server.engine.adapters.channel import EntropyStore
from entropy_serve.server.engine.holder import EngineHolder
from entropy_serve.server.protocol import responses, streaming
from entropy_serve.server.protocol.requests import SamplingRequest

if TYPE_CHECKING:
    from entropy_serve.probes.router import DifficultyRouter
    from entropy_serve.server.strategies import defaults

Chunk = Completion | ChatCompletionChunk


class ChunkStream:
    """A streamed reply: an async iterator of chunks (Completion or ChatCompletionChunk)
    whose first chunk already exists (so errors before it were raised by `answer`), and
    the reply's extension fields that a stream carries in HTTP headers instead."""

    def __init__(self, first: Chunk, rest: AsyncGenerator[Chunk, None], extensions: dict | None = None):
        self._first = first
        self._rest = rest
        self.extensions = extensions or {}

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        try:
            yield self._first
            async for chunk in self._rest:
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the chunks beneath, which aborts what they still generate in the engine.
        A stream that ends early is closed here, iterated or not, not whenever the garbage
        collector gets to it."""
        await self._rest.aclose()

    @classmethod
    async def start(cls, chunks: AsyncGenerator[Chunk, None], extensions: dict | None = None) -> ChunkStream:
        return cls(await anext(chunks), chunks, extensions)


Reply = Completion | ChatCompletion | ChunkStream


@dataclass(frozen=True)
class StrategyContext:
    config: ServerConfig
    engine: EngineHolder
    store: EntropyStore
    planner: Planner
    router: DifficultyRouter | None  # when serving with --probe
    defaults: defaults.StrategyDefaults | None = None  # the model's learned strategy settings
    # The data-parallel engine of the strategy request being answered: every plan it runs
    # goes there (engine/data_parallel.py). None: one engine, or not in a strategy request.
    data_parallel_rank: int | None = None

    def resolved(self, request: SamplingRequest) -> SamplingRequest:
        """The request with its strategy as it runs: fields the client left out learned
        for this model (defaults.resolve); `auto` as escalate, at the learned temperature
        when the request sets none."""
        from entropy_serve.server.strategies import defaults  # strategies import this module

        strategy, temperature = defaults.resolve(request.strategy, request.temperature, self.defaults)
        return request.model_copy(update={"strategy": strategy, "temperature": temperature})

    async def run(
        self, plan: RequestPlan, watch: Callable[[submission.Step], Awaitable[None]] | None = None
    ) -> submission.Result:
        return await submission.run(self.engine, self.store, self._pinned(plan), watch)

    async def stop(self, job_key: str) -> None:
        """Abort one engine job now: vLLM frees its slot and generates nothing more for it;
        its stream ends with finish_reason "abort"."""
        await self.engine.require_engine().abort(job_key)

    async def reply(self, plan: RequestPlan, extensions: dict | None = None) -> Reply:
        """An ordinary generation of `plan`, streamed or whole; `extensions` join the reply."""
        plan = self._pinned(plan)
        if plan.stream:
            chunks = streaming.chat_chunks if plan.chat else streaming.completion_chunks
            return await ChunkStream.start(chunks(self.engine, self.store, plan), extensions)
        return responses.generation_reply(plan, await self.run(plan), extensions)

    def _pinned(self, plan: RequestPlan) -> RequestPlan:
        if self.data_parallel_rank is None:
            return plan
        return dataclasses.replace(plan, data_parallel_rank=self.data_parallel_rank)
