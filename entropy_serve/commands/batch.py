"""`entropy-serve batch`: a file of OpenAI batch requests through the in-process engine.

    entropy-serve batch -i requests.jsonl -o results.jsonl

Rerunning the same command resumes: lines already answered in the output are skipped
(offline/records.py). The engine flags are `serve`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from entropy_serve.commands import UsageError
from entropy_serve.commands.flags import add_server_flags, server_config
from entropy_serve.flag_types import positive_int
from entropy_serve.offline.runner import OutputOrder
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.settings import ANSWERING

HELP = "answer a JSONL file of OpenAI batch requests (resumable), no server needed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input-file", type=Path, required=True, help="OpenAI batch input JSONL")
    parser.add_argument(
        "-o", "--output-file", type=Path, required=True, help="batch output JSONL (appended to; rerun to resume)"
    )
    add_in_flight_flags(parser)
    add_server_flags(parser, ANSWERING)


def add_in_flight_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=256,
        help="lines submitted at once (the engine batches up to --max-num-seqs of them)",
    )
    parser.add_argument(
        "--output-order",
        choices=[o.value for o in OutputOrder],
        default=OutputOrder.COMPLETED.value,
        help="write records as they complete, or in input order",
    )


def run(args: argparse.Namespace) -> int:
    return answer_pending(
        args, "batch", lambda todo, num_done, output: _answer(engine_config(args), todo, num_done, output, args)
    )


def engine_config(args: argparse.Namespace) -> ServerConfig:
    return server_config(args)


def answer_pending(args: argparse.Namespace, command: str, answer: Callable[..., Awaitable[int]]) -> int:
    """What `batch` and `score` share: read the input, open the output to resume it, and
    `answer(todo, num_done, output)` the lines not yet in it (nothing starts when none is left)."""
    from entropy_serve.offline.records import RecordsError, ResumableOutput, pending, read_input

    try:
        lines = read_input(args.input_file)
        output = ResumableOutput(args.output_file)
    except (RecordsError, OSError) as error:
        raise UsageError(str(error)) from None
    with output:
        todo = pending(lines, output.done)
        if not todo:
            print(f"entropy-serve {command}: all {len(lines)} lines are already in {args.output_file}", file=sys.stderr)
            return 0
        return asyncio.run(answer(todo, len(lines) - len(todo), output))


async def _answer(config, todo, num_done, output, args) -> int:
    from entropy_serve.offline.batch import answer_line
    from entropy_serve.offline.runner import answer_lines
    from entropy_serve.server.core.service import running_service
    from entropy_serve.server.errors import APIError

    async with running_service(config) as service:
        try:
            tally = await answer_lines(
                todo,
                num_done,
                lambda line: answer_line(service, line),
                output,
                max_in_flight=args.max_in_flight,
                order=OutputOrder(args.output_order),
                description="batch",
            )
        except APIError as error:  # the service failed (a line's own errors are records)
            print(f"entropy-serve batch: stopped: {error.message}; rerun the same command to resume", file=sys.stderr)
            return 1
    print(tally.summary("entropy-serve batch", "generated"), file=sys.stderr)
    return 0
