"""`entropy-serve score`: per-token log-probability and entropy of given text, offline.

    entropy-serve score -i data.jsonl -o scores.jsonl [--probe DIR]

Each input line is {"prompt" or "messages", optional "completion", optional
"custom_id"}; offline/score.py says what is scored and how. Progress, bad records and
resuming behave as in `entropy-serve batch`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from entropy_serve.commands.batch import add_in_flight_flags, answer_pending
from entropy_serve.commands.flags import add_server_flags, server_config
from entropy_serve.flag_types import existing_path, positive_int
from entropy_serve.server.config import ServerConfig

HELP = "score a JSONL file: per-token log-probabilities and exact entropies (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--input-file", type=Path, required=True, help="records: prompt or messages, optional completion"
    )
    parser.add_argument(
        "-o", "--output-file", type=Path, required=True, help="scores JSONL (appended to; rerun to resume)"
    )
    parser.add_argument("--window", type=positive_int, default=16, help="tokens in the reported highest-entropy window")
    parser.add_argument(
        "--probe", type=existing_path, help="difficulty probe folder (from train-probe): adds each prompt's class"
    )
    add_in_flight_flags(parser)
    add_server_flags(parser)


def run(args: argparse.Namespace) -> int:
    def answer(todo, num_done, output):
        return _score(engine_config(args), todo, num_done, output, args)

    return answer_pending(args, "score", answer)


def engine_config(args: argparse.Namespace) -> ServerConfig:
    return server_config(args, probe=str(args.probe) if args.probe else None)


async def _score(config, todo, num_done, output, args) -> int:
    from entropy_serve.offline.runner import OutputOrder, answer_lines
    from entropy_serve.offline.score import Scorer

    scorer = await Scorer.start(config, args.window)
    try:
        tally = await answer_lines(
            todo,
            num_done,
            scorer.answer,
            output,
            max_in_flight=args.max_in_flight,
            order=OutputOrder(args.output_order),
            description="score",
        )
    finally:
        scorer.stop()
    print(tally.summary("entropy-serve score", "scored"), file=sys.stderr)
    return 0
