"""`entropy-serve` command line: a table of commands (entropy_serve/commands/), each
owning its flags and its run function."""

from __future__ import annotations

import argparse
import logging
import sys

from entropy_serve import model_store
from entropy_serve.commands import batch, calibrate, prepare_model, score, serve, train_probe

COMMANDS = {
    "serve": serve,
    "batch": batch,
    "score": score,
    "prepare-model": prepare_model,
    "calibrate": calibrate,
    "train-probe": train_probe,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropy-serve", description="OpenAI-compatible, entropy-adaptive serving on vLLM")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.HELP, description=command.HELP)
        command.add_arguments(sub)
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args)
    except (model_store.ModelPreparationError, ValueError) as error:
        print(f"entropy-serve: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # vLLM spawns engine processes: keep imports side-effect free
    sys.exit(main())
