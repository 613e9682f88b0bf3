"""Flag types and flag groups shared by several commands, written once.

Settings resolve once, in this order: defaults, then environment (e.g.
ENTROPY_SERVE_API_KEY), then flags; `server_config` turns them into the frozen
ServerConfig that everything after reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from entropy_serve import calibration, model_store


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def cpu_cores(text: str) -> str:
    """argparse type: a CPU list ('0-3', '0,2'), or one per rank joined by '|'."""
    from entropy_serve.host import parse_bind

    try:
        parse_bind(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def existing_path(text: str) -> Path:
    """argparse type: a file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def table_path(text: str) -> str:
    """argparse type: a difficulty table's JSON file, or a named table."""
    from entropy_serve.probes.table import DIFFADAPT

    return text if text == DIFFADAPT else str(existing_path(text))


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and size the engine (vLLM's names where they mean the same)."""
    parser.add_argument("--model", help="local HF model folder or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--served-model-name", help="model name clients use (default: the folder name)")
    parser.add_argument("--max-model-len", type=positive_int, help="context length (default: the model's)")
    parser.add_argument(
        "--dtype", default="auto",
        help="auto: on CPU bfloat16 where the CPU has native bf16, else float32 (benchmarks/host.py); on GPU the model's",
    )
    parser.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip torch.compile and CUDA graphs (default: on for CPU, off for GPU)",
    )
    parser.add_argument("--gpu-memory-utilization", type=fraction, default=0.9)
    parser.add_argument("--max-num-seqs", type=positive_int, default=64, help="sequences the engine batches at once")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=positive_int,
        help="tokens one engine step holds; longer prompts are prefilled in chunks beside other requests "
        "(default: 512 on CPU, vLLM's on GPU)",
    )
    parser.add_argument("--num-gpu-blocks-override", type=positive_int, help="KV cache blocks, overriding the sizing (as in vLLM)")
    parser.add_argument(
        "--block-size", type=positive_int, help="KV cache block size in tokens (default: vLLM's); prefix caching reuses whole blocks"
    )
    parser.add_argument(
        "--cpu-cores", type=cpu_cores,
        help="CPU engines: the cores their workers bind to, e.g. 0-3, or one list per rank joined by '|' "
        "(default: every core no other entropy-serve engine on this host holds)",
    )
    parser.add_argument(
        "--kv-cache-gib", type=positive_float,
        help="CPU engines: KV-cache budget in GiB (default: VLLM_CPU_KVCACHE_SPACE, else what 4 whole contexts need)",
    )
    parallel = parser.add_argument_group("parallelism (vLLM's)")
    parallel.add_argument("--tensor-parallel-size", "-tp", type=positive_int, default=1, help="GPUs each layer is split over")
    parallel.add_argument("--pipeline-parallel-size", "-pp", type=positive_int, default=1, help="GPUs the layers are split over")
    parallel.add_argument("--data-parallel-size", "-dp", type=positive_int, default=1, help="engine copies, each serving its own requests")
    parallel.add_argument(
        "--distributed-executor-backend", choices=["mp", "ray", "uni", "external_launcher"],
        help="how the ranks run: processes on this node (mp) or a Ray cluster across nodes (ray); default: vLLM's",
    )


def add_answering_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of what requests may ask for and what answers them beyond the engine: limits,
    the entropy profile, the difficulty probe. `answering_settings` reads them back."""
    parser.add_argument("--max-n", type=positive_int, default=16, help="largest n a request may ask for")
    parser.add_argument(
        "--max-leaves", type=positive_int, default=64,
        help="most samples one strategy request may generate (self_consistency n; entropy_fork M*(1+N*B))",
    )
    parser.add_argument("--max-tokens-limit", type=positive_int, help="largest max_tokens a request may ask for")
    parser.add_argument("--max-prompt-tokens", type=positive_int, help="longest prompt accepted, in tokens")
    parser.add_argument(
        "--entropy-profile", type=existing_path,
        help=f"token-entropy profile for hapo (default: the model folder's {calibration.PROFILE_FILE}, or the embedded model's)",
    )
    parser.add_argument("--probe", type=existing_path, help="difficulty probe folder (from train-probe): enables strategy 'difficulty'")
    parser.add_argument(
        "--difficulty-table", type=table_path,
        help="per-class strategies: a JSON file over the paper's table, or 'diffadapt' for the paper's own "
        "(default: the table train-probe learned beside the probe)",
    )
    parser.add_argument(
        "--probe-min-confidence", type=probability, default=0.5,
        help="route as Normal when the probe's top class is less probable than this (its held-out calibration, "
        "in probe.json, shows what each threshold keeps)",
    )
    parser.add_argument(
        "--strategy-defaults", type=existing_path,
        help="learned strategy settings (train-probe's strategy_defaults.json; default: the probe folder's, "
        "else the entropy profile's)",
    )
    add_tool_flags(parser)


def strategy_defaults_path(args: argparse.Namespace, profile: Path | str | None) -> Path | str | None:
    """--strategy-defaults, else the probe folder's learned ones, else the profile's."""
    from entropy_serve.server.strategies import defaults

    if args.strategy_defaults:
        return args.strategy_defaults
    if args.probe and (Path(args.probe) / defaults.DEFAULTS_FILE).is_file():
        return Path(args.probe) / defaults.DEFAULTS_FILE
    return profile if profile and defaults.has_defaults(profile) else None


def tool_call_parser(name: str) -> str:
    """argparse type: one of vLLM's tool-call parser names."""
    from vllm.tool_parsers import ToolParserManager

    names = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
    if name not in names:
        raise argparse.ArgumentTypeError(f"unknown tool-call parser {name!r}; vLLM's are: {', '.join(names)}")
    return name


def add_tool_flags(parser: argparse.ArgumentParser) -> None:
    """vLLM's flags for `tool_choice: auto` (required and named choices need neither)."""
    parser.add_argument(
        "--enable-auto-tool-choice", action="store_true",
        help="let the model decide whether to call tools (tool_choice auto); needs --tool-call-parser",
    )
    parser.add_argument(
        "--tool-call-parser", type=tool_call_parser,
        help="vLLM's parser of the model's tool-call format (e.g. hermes, llama3_json, mistral, pythonic)",
    )


def answering_settings(args: argparse.Namespace) -> dict:
    """ServerConfig fields of `add_answering_flags`' flags."""
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise SystemExit("entropy-serve: --enable-auto-tool-choice needs --tool-call-parser (the model's tool-call format)")
    profile = args.entropy_profile or calibration.profile_for(args.model)
    return dict(
        max_n=args.max_n,
        max_leaves=args.max_leaves,
        max_tokens_limit=args.max_tokens_limit,
        max_prompt_tokens=args.max_prompt_tokens,
        entropy_profile=_str(profile),
        probe=_str(args.probe),
        difficulty_table=_str(args.difficulty_table),
        probe_min_confidence=args.probe_min_confidence,
        strategy_defaults=_str(strategy_defaults_path(args, profile)),
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
    )


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def server_config(args: argparse.Namespace, **extra):
    """The frozen ServerConfig of these flags (the embedded model prepared if needed)."""
    from vllm.platforms import current_platform

    from entropy_serve.server.config import ServerConfig

    model = args.model or str(model_store.prepare_default_model())
    if args.model is None:
        default_name = model_store.DEFAULT_MODEL_NAME
    else:
        default_name = Path(model).name if Path(model).exists() else model
    enforce_eager = current_platform.is_cpu() if args.enforce_eager is None else args.enforce_eager
    return ServerConfig(
        model=model,
        served_model_name=args.served_model_name or default_name,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        enforce_eager=enforce_eager,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        block_size=args.block_size,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        data_parallel_size=args.data_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        cpu_cores=args.cpu_cores,
        kv_cache_gib=args.kv_cache_gib,
        **extra,
    )
