"""`entropy-serve` command line: `serve`, `prepare-model`, `calibrate`, `train-probe`.

Flags reuse vLLM's names where they mean the same thing. Settings resolve once, in this
order: defaults, then environment (ENTROPY_SERVE_API_KEY), then flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from entropy_serve import calibration, model_store

API_KEY_ENV = "ENTROPY_SERVE_API_KEY"
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
DEFAULT_CPU_KV_CACHE_GIB = "4"
DEAD_EXIT_DELAY_S = 1.0


def engine_flags() -> argparse.ArgumentParser:
    """Flags that choose and size the engine, shared by `serve` and `calibrate`."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--model", help="local HF model folder or hub id (default: the embedded SmolLM2-135M-Instruct)")
    flags.add_argument("--served-model-name", help="model name clients use (default: the folder name)")
    flags.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    flags.add_argument("--dtype", default="auto")
    flags.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip torch.compile and CUDA graphs (default: on for CPU, off for GPU)",
    )
    flags.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    flags.add_argument("--max-num-seqs", type=int, default=64, help="sequences the engine batches at once")
    flags.add_argument("--num-gpu-blocks-override", type=int, help="KV cache blocks, overriding the sizing (as in vLLM)")
    flags.add_argument(
        "--block-size", type=int, help="KV cache block size in tokens (default: vLLM's); prefix caching reuses whole blocks"
    )
    flags.add_argument("--log-level", default="info")
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropy-serve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[engine_flags()], help="run the OpenAI-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"require this bearer key on /v1 (env {API_KEY_ENV})")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    serve.add_argument("--max-n", type=int, default=16, help="largest n a request may ask for")
    serve.add_argument(
        "--max-leaves", type=int, default=64, help="most samples one strategy request may generate (self_consistency n; entropy_fork M*(1+N*B))"
    )
    serve.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask for")
    serve.add_argument("--max-prompt-tokens", type=int, help="longest prompt accepted, in tokens")
    serve.add_argument(
        "--entropy-profile", help="token-entropy profile for hapo (default: the shipped one of the embedded model)"
    )

    prepare = commands.add_parser("prepare-model", help="dequantize the embedded model into the cache")
    prepare.add_argument("--out", type=Path, help=f"target folder (default: under ${model_store.CACHE_ENV})")
    prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")

    serve.add_argument("--probe", type=Path, help="difficulty probe folder (from train-probe): enables strategy 'difficulty'")
    serve.add_argument("--difficulty-table", type=Path, help="JSON overriding the per-class strategies (see README)")

    train = commands.add_parser(
        "train-probe", parents=[engine_flags()], help="sample a task, label difficulty, train the DiffAdapt probe"
    )
    train.add_argument("--task", default="arithmetic", help="'arithmetic' (built-in, seeded) or a question/answer JSONL file")
    train.add_argument("--problems", type=int, default=300, help="training problems (first N of a file)")
    train.add_argument("--samples", type=int, default=8, help="answers sampled per problem (k)")
    train.add_argument("--max-tokens", type=int, default=128, help="token budget of each sampled answer")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=True, help="folder for samples.jsonl and the probe (resumable)")
    train.add_argument("--hard-below-accuracy", type=float, default=0.5, help="label rule: accuracy below this is hard")
    train.add_argument(
        "--easy-entropy-quantile", type=float, default=0.5,
        help="label rule: solved problems above this quantile of mean entropy are easy",
    )
    train.add_argument("--easy-entropy-above", type=float, help="label rule: an absolute entropy threshold (nats) instead")
    train.add_argument("--feature-suffix", default="", help="text appended to each prompt before reading its hidden state")
    train.add_argument("--hidden-units", type=int, default=512)

    calibrate = commands.add_parser(
        "calibrate", parents=[engine_flags()], help="sample built-in prompts, write the model's entropy profile"
    )
    calibrate.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    calibrate.add_argument("--samples", type=int, default=4, help="samples per built-in prompt")
    calibrate.add_argument("--max-tokens", type=int, default=128)
    calibrate.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "prepare-model":
            print(model_store.prepare_default_model(args.out, force=args.force))
            return 0
        if args.command == "calibrate":
            return run_calibrate(args)
        if args.command == "train-probe":
            return run_train_probe(args)
        return serve(args)
    except (model_store.ModelPreparationError, ValueError) as error:
        print(f"entropy-serve: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "train-probe":
            print(f"entropy-serve: interrupted; finished samples are kept in {args.out}: run the same command to resume",
                  file=sys.stderr)
        return 130


def server_config(args: argparse.Namespace, **extra):
    """The frozen ServerConfig of these flags (the embedded model prepared if needed)."""
    # CPU engines size their KV cache from this variable; set a sane default before vLLM loads.
    os.environ.setdefault(CPU_KV_CACHE_ENV, DEFAULT_CPU_KV_CACHE_GIB)
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
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        block_size=args.block_size,
        **extra,
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from entropy_serve.server.app import create_app
    from entropy_serve.server.engine import EngineHolder

    profile = args.entropy_profile
    if profile is None and args.model is None:
        profile = calibration.default_profile_path(model_store.DEFAULT_MODEL_NAME)
    config = server_config(
        args,
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        max_body_bytes=args.max_body_bytes,
        max_n=args.max_n,
        max_leaves=args.max_leaves,
        max_tokens_limit=args.max_tokens_limit,
        max_prompt_tokens=args.max_prompt_tokens,
        entropy_profile=str(profile) if profile else None,
        probe=str(args.probe) if args.probe else None,
        difficulty_table=str(args.difficulty_table) if args.difficulty_table else None,
    )
    server: uvicorn.Server | None = None

    def stop_on_engine_death() -> None:
        # Linger briefly so health checks and in-flight requests see the 503 first.
        asyncio.get_running_loop().call_later(DEAD_EXIT_DELAY_S, setattr, server, "should_exit", True)

    holder = EngineHolder(config, on_dead=stop_on_engine_death)
    app = create_app(config, holder)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=int(config.shutdown_timeout_s),
        )
    )
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, restores the handlers it found,
    # then re-raises the signal. A drained shutdown is a clean exit: make those no-ops.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if holder.failure:
        print(f"entropy-serve: {holder.failure}", file=sys.stderr)
        return 1
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from entropy_serve.server.calibrate import calibrate

    for name in ("samples", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    config = server_config(args)
    profile = calibrate(config, args.out, args.samples, args.max_tokens, args.seed)
    print(json.dumps({k: profile[k] for k in ("model", "log_entropy_pivot", "log_entropy_spread", "summary")}, indent=2))
    print(f"wrote {args.out}")
    return 0


def run_train_probe(args: argparse.Namespace) -> int:
    from entropy_serve.probes.labels import LabelRule
    from entropy_serve.trainer.probe import TrainSettings, train_probe

    for name in ("problems", "samples", "max_tokens", "hidden_units"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    settings = TrainSettings(
        task=args.task,
        num_problems=args.problems,
        samples=args.samples,
        max_tokens=args.max_tokens,
        seed=args.seed,
        rule=LabelRule(args.hard_below_accuracy, args.easy_entropy_quantile, args.easy_entropy_above),
        feature_suffix=args.feature_suffix,
        hidden_units=args.hidden_units,
    )
    metadata = train_probe(server_config(args), settings, args.out)
    print(json.dumps({k: metadata[k] for k in ("class_balance", "entropy_threshold_nats", "probe", "num_train", "num_held_out")}))
    print(
        f"held-out accuracy {metadata['held_out_accuracy']:.3f} vs majority-class baseline "
        f"{metadata['majority_baseline_accuracy']:.3f} ({metadata['majority_class']})"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes: keep imports side-effect free
    sys.exit(main())
