"""argparse types: each checks one flag's text and gives a clear usage error.

Shared by the server's settings (server/config.py, whose fields name their flag's type)
and the commands' own flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path


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


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


class Repeated(argparse.Action):
    """A flag that may be given several times, one value each (`--api-key A --api-key B`).
    The first use replaces the default (its environment variable's values), so flags
    given on the command line win over the environment, as every other flag's do."""

    def __call__(self, parser, namespace, value, option_string=None):
        current = getattr(namespace, self.dest)
        values = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, [*values, value])


def tool_call_parser(name: str) -> str:
    """argparse type: one of vLLM's tool-call parser names."""
    from vllm.tool_parsers import ToolParserManager

    names = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
    if name not in names:
        raise argparse.ArgumentTypeError(f"unknown tool-call parser {name!r}; vLLM's are: {', '.join(names)}")
    return name
