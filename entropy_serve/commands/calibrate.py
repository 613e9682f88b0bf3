"""`entropy-serve calibrate`: sample the built-in prompts, write the model's entropy profile.

The prompts are answered through the in-process service (server/core/service.py), as chat
requests with `return_entropy`, so calibration sees the entropies a client would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from entropy_serve.calibration import profile_record, sample_entropies
from entropy_serve.commands.flags import add_server_flags, server_config
from entropy_serve.flag_types import positive_int
from entropy_serve.server.config import ServerConfig

HELP = "sample built-in prompts, write the model's entropy profile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser)
    parser.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    parser.add_argument("--samples", type=positive_int, default=4, help="samples per built-in prompt")
    parser.add_argument("--max-tokens", type=positive_int, default=128)
    parser.add_argument("--seed", type=int, default=0)


def engine_config(args: argparse.Namespace) -> ServerConfig:
    return server_config(args, max_n=args.samples)  # every prompt's samples in one request


def run(args: argparse.Namespace) -> int:
    config = engine_config(args)
    entropies = asyncio.run(collect_entropies(config, args.samples, args.max_tokens, args.seed))
    profile = profile_record(
        config.served_model_name,
        config.model,
        entropies,
        samples_per_prompt=args.samples,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(profile, indent=2) + "\n")
    print(
        json.dumps({k: profile[k] for k in ("model", "log_entropy_pivot", "log_entropy_spread", "summary")}, indent=2)
    )
    print(f"wrote {args.out}")
    return 0


async def collect_entropies(config, samples_per_prompt: int, max_tokens: int, seed: int) -> list[float]:
    from entropy_serve.server.core.service import running_service

    async with running_service(config) as service:
        return await sample_entropies(service, samples_per_prompt, max_tokens, seed)
