"""Server configuration: one frozen object, resolved once at start-up from flags and env.

Each field is defined once, here: its default, and, where a command takes it as a flag,
the flag's group, type and help (`Flag`, settings.py). The commands' flags are generated from these
fields (commands/flags.py), every flag also reads its environment variable
(`ENTROPY_SERVE_<FLAG>`, cli.py), and a default that depends on the platform is
resolved here too (`enforce_eager`), so every engine this project starts, from any
command, benchmark or trainer, gets the same resolved defaults. Requests never write
into the config; request handlers only read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from entropy_serve import flag_types
from entropy_serve.host import parse_bind
from entropy_serve.server.settings import ANSWERING, ENGINE, PARALLEL, SERVING, STATE, Flag, flag_of, setting

CHANNEL_TRANSPORTS = ("auto", "ipc", "tcp")  # the entropy channel's (server/engine/adapters/transport.py)


def platform_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


@dataclass(frozen=True)
class ServerConfig:
    # What to serve (vLLM's flag names where they mean the same thing).
    model: str = setting(
        None, Flag(ENGINE, "local HF model folder or hub id (default: the embedded SmolLM2-135M-Instruct)")
    )
    served_model_name: str = setting(None, Flag(ENGINE, "model name clients use (default: the folder name)"))
    max_model_len: int | None = setting(
        None, Flag(ENGINE, "context length (default: the model's)", flag_types.positive_int)
    )
    dtype: str = setting(
        "auto",
        Flag(
            ENGINE,
            "auto: on CPU bfloat16 where the CPU has native bf16, else float32 (benchmarks/host.py); "
            "on GPU the model's",
        ),
    )
    # None: resolved for the platform (on for CPU, off for GPU), in __post_init__.
    enforce_eager: bool | None = setting(
        None, Flag(ENGINE, "skip torch.compile and CUDA graphs (default: on for CPU, off for GPU)")
    )
    gpu_memory_utilization: float = setting(
        0.9, Flag(ENGINE, "share of GPU memory the engine takes", flag_types.fraction)
    )
    max_num_seqs: int = setting(64, Flag(ENGINE, "sequences the engine batches at once", flag_types.positive_int))
    # None: 512 on CPU (server/engine/holder.py), vLLM's on GPU.
    max_num_batched_tokens: int | None = setting(
        None,
        Flag(
            ENGINE,
            "tokens one engine step holds; longer prompts are prefilled in chunks beside other requests "
            "(default: 512 on CPU, vLLM's on GPU)",
            flag_types.positive_int,
        ),
    )
    num_gpu_blocks_override: int | None = setting(
        None,
        Flag(
            ENGINE,
            "KV cache blocks, overriding the sizing (as in vLLM)",
            flag_types.positive_int,
        ),
    )
    block_size: int | None = setting(
        None,
        Flag(
            ENGINE,
            "KV cache block size in tokens (default: vLLM's); prefix caching reuses whole blocks",
            flag_types.positive_int,
        ),
    )
    # CPU engines: None is every core no other engine on the host holds, and the KV budget
    # VLLM_CPU_KVCACHE_SPACE, else what the model and context need (server/engine/holder.py).
    cpu_cores: str | None = setting(
        None,
        Flag(
            ENGINE,
            "CPU engines: the cores their workers bind to, e.g. 0-3, or one list per rank joined by '|' "
            "(default: every core no other entropy-serve engine on this host holds)",
            flag_types.cpu_cores,
        ),
    )
    kv_cache_gib: float | None = setting(
        None,
        Flag(
            ENGINE,
            "CPU engines: KV-cache budget in GiB (default: VLLM_CPU_KVCACHE_SPACE, else what 4 whole contexts need)",
            flag_types.positive_float,
        ),
    )
    tensor_parallel_size: int = setting(
        1, Flag(PARALLEL, "GPUs each layer is split over", flag_types.positive_int, short="-tp")
    )
    pipeline_parallel_size: int = setting(
        1, Flag(PARALLEL, "GPUs the layers are split over", flag_types.positive_int, short="-pp")
    )
    data_parallel_size: int = setting(
        1, Flag(PARALLEL, "engine copies, each serving its own requests", flag_types.positive_int, short="-dp")
    )
    distributed_executor_backend: str | None = setting(
        None,
        Flag(
            PARALLEL,
            "how the ranks run: processes on this node (mp) or a Ray cluster across nodes (ray); default: vLLM's",
            choices=("mp", "ray", "uni", "external_launcher"),
        ),
    )
    entropy_channel: str = setting(
        "auto",
        Flag(
            PARALLEL,
            "how the engine's workers send per-token entropies to the server: ipc (a socket file: workers on this "
            "machine), tcp (workers on other nodes; encrypted, keys made per launch), auto (tcp with the Ray executor)",
            choices=CHANNEL_TRANSPORTS,
        ),
    )
    entropy_channel_host: str | None = setting(
        None,
        Flag(
            PARALLEL,
            "tcp entropy channel: this node's address the workers reach it at (default: VLLM_HOST_IP, else the "
            "address of the default route's interface, as vLLM picks for its own ranks)",
        ),
    )
    # What `logprobs` report (vLLM's flag): raw_logprobs (the model's, vLLM's default) or
    # processed_logprobs (the distribution the token was drawn from: the policy trainer's).
    logprobs_mode: str | None = setting(None)
    # Limits a request cannot exceed (None: the model's context length).
    max_n: int = setting(16, Flag(ANSWERING, "largest n a request may ask for", flag_types.positive_int))
    max_leaves: int = setting(
        64,
        Flag(
            ANSWERING,
            "most samples one strategy request may generate (self_consistency n; entropy_fork M*(1+N*B))",
            flag_types.positive_int,
        ),
    )
    max_tokens_limit: int | None = setting(
        None, Flag(ANSWERING, "largest max_tokens a request may ask for", flag_types.positive_int)
    )
    max_prompt_tokens: int | None = setting(
        None, Flag(ANSWERING, "longest prompt accepted, in tokens", flag_types.positive_int)
    )
    # The model's token-entropy profile (JSON from `entropy-serve calibrate`), for hapo.
    entropy_profile: str | None = setting(
        None,
        Flag(
            ANSWERING,
            "token-entropy profile for hapo (default: the model folder's profile, or the embedded model's)",
            flag_types.existing_path,
        ),
    )
    # DiffAdapt difficulty probe folder (train-probe) and per-class strategy table.
    probe: str | None = setting(
        None,
        Flag(
            ANSWERING,
            "difficulty probe folder (from train-probe): enables strategy 'difficulty'",
            flag_types.existing_path,
        ),
    )
    difficulty_table: str | None = setting(
        None,
        Flag(
            ANSWERING,
            "per-class strategies: a JSON file over the paper's table, or 'diffadapt' for the paper's own "
            "(default: the table train-probe learned beside the probe)",
            flag_types.table_path,
        ),
    )
    probe_min_confidence: float = setting(
        0.5,
        Flag(
            ANSWERING,
            "route as Normal when the probe's top class is less probable than this (its held-out calibration, "
            "in probe.json, shows what each threshold keeps)",
            flag_types.probability,
        ),
    )
    # The model's learned strategy settings (strategies/defaults.py).
    strategy_defaults: str | None = setting(
        None,
        Flag(
            ANSWERING,
            "learned strategy settings (train-probe's strategy_defaults.json; default: the probe folder's, "
            "else the entropy profile's)",
            flag_types.existing_path,
        ),
    )
    # tool_choice auto: vLLM's flags and parser names (required / named choices need neither).
    enable_auto_tool_choice: bool = setting(
        False,
        Flag(
            ANSWERING,
            "let the model decide whether to call tools (tool_choice auto); needs --tool-call-parser",
        ),
    )
    tool_call_parser: str | None = setting(
        None,
        Flag(
            ANSWERING,
            "vLLM's parser of the model's tool-call format (e.g. hermes, llama3_json, mistral, pythonic)",
            flag_types.tool_call_parser,
        ),
    )
    # Where to listen, who may call, how big a body may be.
    host: str = setting("127.0.0.1", Flag(SERVING, "address to listen on"))
    port: int = setting(8000, Flag(SERVING, "port to listen on", int))
    api_keys: tuple[str, ...] = setting(
        (),
        Flag(
            SERVING,
            "require this bearer key on /v1; repeat it for one key per user, each seeing only its own files, "
            "batches and stored responses (env ENTROPY_SERVE_API_KEY: keys separated by commas)",
            name="--api-key",
            repeated=True,
        ),
    )
    max_body_bytes: int = setting(
        4 * 1024 * 1024, Flag(SERVING, "larger request bodies get 413", flag_types.positive_int)
    )
    # Seconds SIGTERM's drain waits for in-flight requests (server/api/drain.py).
    drain_timeout_s: float = setting(
        30.0,
        Flag(
            SERVING,
            "on SIGTERM, seconds in-flight requests may finish before they are ended with an error",
            flag_types.non_negative_float,
        ),
    )
    # Files, batches and stored responses (server/core/store.py).
    database_url: str | None = setting(
        None,
        Flag(
            STATE,
            "where they live: an SQLAlchemy URL, e.g. postgresql://user@host/db (needs the `postgres` extra) "
            "or sqlite:///path (default: SQLite in the cache folder, ~/.cache/entropy-serve)",
        ),
    )
    max_file_bytes: int = setting(
        100 * 1024 * 1024, Flag(STATE, "largest upload to /v1/files", flag_types.positive_int)
    )
    max_batch_lines: int = setting(
        50_000, Flag(STATE, "most requests one batch may hold (OpenAI's limit)", flag_types.positive_int)
    )
    batch_max_in_flight: int = setting(
        8,
        Flag(
            STATE,
            "batch lines answered at once (the engine's other sequences stay free for interactive requests)",
            flag_types.positive_int,
        ),
    )

    def __post_init__(self) -> None:
        if self.model is None or self.served_model_name is None:
            raise ValueError("model and served_model_name are required")
        if self.enforce_eager is None:
            object.__setattr__(self, "enforce_eager", platform_is_cpu())
        for field in dataclasses.fields(self):
            flag, value = flag_of(field), getattr(self, field.name)
            if flag is not None and flag.type is flag_types.positive_int and value is not None and value < 1:
                raise ValueError(f"{field.name} must be at least 1, got {value}")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.cpu_cores is not None:
            parse_bind(self.cpu_cores)  # a ValueError naming the text
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
