"""Answer input lines concurrently, write each record as it is ready, show progress.

All lines are in flight up to a bound, so the engine batches them; each finished line's
record is written at once (`as completed`), or held until every line before it is
written (`input` order). A line's own failure (a 4xx the server would give) is its
record; anything else (the engine died) stops the run: lines in flight are cancelled,
nothing is written for them, and a rerun answers them.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tqdm import tqdm

from entropy_serve.offline.records import InputLine, ResumableOutput


class OutputOrder(enum.Enum):
    COMPLETED = "completed"
    INPUT = "input"


@dataclass(frozen=True)
class Answered:
    record: dict
    ok: bool  # False: the record is an error record
    num_tokens: int  # generated (batch) or scored (score) tokens


@dataclass
class Tally:
    num_lines: int
    num_already_done: int  # found in the output, skipped
    num_answered: int = 0
    num_errors: int = 0
    num_tokens: int = 0
    elapsed_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, command: str, token_kind: str) -> str:
        return (
            f"{command}: {self.num_lines} lines: {self.num_answered} answered in this run "
            f"({self.num_errors} error records), {self.num_already_done} already in the output; "
            f"{self.num_tokens} {token_kind} tokens in {self.elapsed_s:.1f} s ({self.tokens_per_s:.1f} tokens/s)"
        )


async def answer_lines(
    lines: list[InputLine],
    num_already_done: int,
    answer: Callable[[InputLine], Awaitable[Answered]],
    output: ResumableOutput,
    *,
    max_in_flight: int,
    order: OutputOrder,
    description: str,
) -> Tally:
    """Answer `lines` (those not yet in `output`) into `output`."""
    tally = Tally(num_lines=len(lines) + num_already_done, num_already_done=num_already_done)
    started = time.perf_counter()
    held: dict[int, Answered] = {}  # input order: finished, waiting for an earlier line
    next_to_write = 0
    progress = tqdm(total=len(lines), desc=description, unit="line", file=sys.stderr, dynamic_ncols=True)

    def finish(position: int, answered: Answered) -> None:
        nonlocal next_to_write
        tally.num_answered += 1
        tally.num_errors += not answered.ok
        tally.num_tokens += answered.num_tokens
        if order is OutputOrder.COMPLETED:
            output.write(answered.record)
        else:
            held[position] = answered
            while next_to_write in held:
                output.write(held.pop(next_to_write).record)
                next_to_write += 1
        tally.elapsed_s = time.perf_counter() - started
        progress.update(1)
        progress.set_postfix(tokens_per_s=f"{tally.tokens_per_s:.1f}", errors=tally.num_errors, refresh=False)

    async def numbered(position: int, line: InputLine) -> tuple[int, Answered]:
        return position, await answer(line)

    in_flight: set[asyncio.Task] = set()
    try:
        for position, line in enumerate(lines):
            while len(in_flight) >= max_in_flight:
                in_flight = await _drain(in_flight, finish)
            in_flight.add(asyncio.create_task(numbered(position, line)))
        while in_flight:
            in_flight = await _drain(in_flight, finish)
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        progress.close()
    tally.elapsed_s = time.perf_counter() - started
    return tally


async def _drain(in_flight: set[asyncio.Task], finish: Callable[[int, Answered], None]) -> set[asyncio.Task]:
    """Wait for at least one task; record every finished one (a failure is raised)."""
    done, still = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        finish(*task.result())
    return still
