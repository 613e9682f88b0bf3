"""`entropy-serve prepare-model`: dequantize the embedded model into the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from entropy_serve import model_store

HELP = "dequantize the embedded model into the cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help=f"target folder (default: under ${model_store.CACHE_ENV})")
    parser.add_argument("--force", action="store_true", help="rebuild even if already prepared")


def run(args: argparse.Namespace) -> int:
    print(model_store.prepare_default_model(args.out, force=args.force))
    return 0
