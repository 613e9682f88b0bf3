"""Server configuration: one frozen object, resolved once at start-up from flags and env.

Requests never write into it; request handlers only read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_serve.host import parse_bind


@dataclass(frozen=True)
class ServerConfig:
    # What to serve (vLLM's flag names where they mean the same thing).
    model: str
    served_model_name: str
    max_model_len: int | None = None
    dtype: str = "auto"  # auto: per host (server/engine.py, host.resolve_dtype)
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    # Tokens one engine step holds (vLLM's flag): a longer prompt is prefilled in chunks,
    # beside the other requests' decoding. None: 512 on CPU (server/engine.py), vLLM's on GPU.
    max_num_batched_tokens: int | None = None
    num_gpu_blocks_override: int | None = None  # KV cache blocks (vLLM's flag; tests use it)
    # KV cache block size in tokens (None: vLLM's, 128 on CPU); prefix caching reuses whole blocks.
    block_size: int | None = None
    # vLLM's parallelism, its flag names: GPUs per model copy (tensor, pipeline) and copies (data).
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # mp, ray, uni, external_launcher (None: vLLM's choice)
    # CPU engines: the cores their workers bind to (a CPU list, or one per rank joined by
    # '|'; None: every core no other engine on the host holds) and the KV-cache budget
    # (None: VLLM_CPU_KVCACHE_SPACE, else what the model and context need: server/engine.py).
    cpu_cores: str | None = None
    kv_cache_gib: float | None = None
    # What `logprobs` report (vLLM's flag): raw_logprobs (the model's, vLLM's default) or
    # processed_logprobs (the distribution the token was drawn from: the policy trainer's).
    logprobs_mode: str | None = None
    # The model's token-entropy profile (JSON from `entropy-serve calibrate`), for hapo.
    entropy_profile: str | None = None
    # DiffAdapt difficulty probe folder (train-probe) and per-class strategy table (JSON).
    probe: str | None = None
    difficulty_table: str | None = None  # a JSON file, or "diffadapt" (None: the probe's learned table)
    probe_min_confidence: float = 0.5  # below this top-class probability, route as Normal
    # The model's learned strategy settings (strategies/defaults.py): a strategy_defaults.json
    # or a profile carrying them (None: the strategies' own field defaults).
    strategy_defaults: str | None = None
    # tool_choice auto: vLLM's flags and parser names (required / named choices need neither).
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    # Where to listen.
    host: str = "127.0.0.1"
    port: int = 8000
    # The bearer keys /v1 accepts (none: open); each key sees only its own files, batches
    # and stored responses.
    api_keys: tuple[str, ...] = ()
    # Limits a client cannot exceed (None: the model's context length).
    max_body_bytes: int = 4 * 1024 * 1024
    max_n: int = 16
    max_leaves: int = 64  # samples one strategy request may generate (entropy_fork: M * (1 + N * B))
    max_tokens_limit: int | None = None
    max_prompt_tokens: int | None = None
    # Seconds SIGTERM's drain waits for in-flight requests before ending them with an
    # error (server/drain.py).
    drain_timeout_s: float = 30.0
    # Files, batches and stored responses (server/store.py): SQLite in the cache folder
    # when None, else an SQLAlchemy URL (sqlite:///path, postgresql://...).
    database_url: str | None = None
    max_file_bytes: int = 100 * 1024 * 1024
    max_batch_lines: int = 50_000  # OpenAI's limit per batch
    batch_max_in_flight: int = 8  # batch lines answered at once: the rest of the engine is for interactive requests

    def __post_init__(self) -> None:
        positive = {
            "max_body_bytes": self.max_body_bytes,
            "max_file_bytes": self.max_file_bytes,
            "max_batch_lines": self.max_batch_lines,
            "batch_max_in_flight": self.batch_max_in_flight,
            "max_n": self.max_n,
            "max_leaves": self.max_leaves,
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_tokens_limit": self.max_tokens_limit,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "data_parallel_size": self.data_parallel_size,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.cpu_cores is not None:
            parse_bind(self.cpu_cores)  # a ValueError naming the text
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
