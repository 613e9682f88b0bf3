"""`entropy-serve` command line: a table of commands (entropy_serve/commands/), each
owning its flags and its run function.

Every flag also reads the environment: `--max-tokens-limit` from
ENTROPY_SERVE_MAX_TOKENS_LIMIT (an empty value is unset), checked as the flag is, and a
flag given on the command line wins. Containers are configured this way (compose.yaml).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from entropy_serve import flag_types, model_store
from entropy_serve.commands import (
    batch,
    calibrate,
    prepare_model,
    score,
    serve,
    serve_replicas,
    train_policy,
    train_probe,
    tune_strategies,
)

COMMANDS = {
    "serve": serve,
    "serve-replicas": serve_replicas,
    "batch": batch,
    "score": score,
    "prepare-model": prepare_model,
    "calibrate": calibrate,
    "train-probe": train_probe,
    "tune-strategies": tune_strategies,
    "train-policy": train_policy,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-serve", description="OpenAI-compatible, entropy-adaptive serving on vLLM"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.HELP, description=command.HELP)
        command.add_arguments(sub)
        sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        env_defaults(sub)
    return parser


ENV_PREFIX = "ENTROPY_SERVE_"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_name(action: argparse.Action) -> str:
    """ENTROPY_SERVE_ and the flag's long name (`--api-key`: ENTROPY_SERVE_API_KEY)."""
    long_name = max(action.option_strings, key=len, default=action.dest)
    return ENV_PREFIX + long_name.lstrip("-").replace("-", "_").upper()


def env_defaults(parser: argparse.ArgumentParser) -> None:
    """Each optional flag's default from its environment variable, where one is set."""
    for action in parser._actions:  # argparse lists a parser's flags nowhere public
        value = os.environ.get(env_name(action), "")
        if not action.option_strings or action.dest == "help" or value == "":
            continue
        if action.nargs == 0:  # a switch: --flag / --no-flag
            if value.lower() not in TRUE | FALSE:
                parser.error(f"{env_name(action)}: expected true or false, got {value!r}")
            value = value.lower() in TRUE
        elif isinstance(action, flag_types.Repeated):  # several values: comma-separated
            value = [item.strip() for item in value.split(",") if item.strip()]
        elif action.choices is not None and value not in action.choices:
            parser.error(
                f"{env_name(action)}: invalid choice {value!r} (choose from {', '.join(map(str, action.choices))})"
            )
        # A string default goes through the flag's type when parsed, with the flag's checks.
        parser.set_defaults(**{action.dest: value})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args)
    except (model_store.ModelPreparationError, ValueError) as error:  # UsageError included
        print(f"entropy-serve {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # vLLM spawns engine processes: keep imports side-effect free
    sys.exit(main())
