"""Resumable sampling of problems through the in-process service, for the commands that
learn from sampled answers (`train-probe`, `tune-strategies`): every finished request is
appended to a JSONL store as it finishes, and a rerun reads the store back and samples
only what is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Hashable
from pathlib import Path

from tqdm import tqdm

from entropy_serve.server.core.service import Endpoint, Service
from entropy_serve.tasks.problems import TrainingProblem

logger = logging.getLogger(__name__)

PROBLEMS_IN_FLIGHT = 8


def read_records(path: Path, problems: list[TrainingProblem], *, key: Callable[[dict], Hashable], what: str) -> dict:
    """key(record) -> record for the requests an earlier run of the same command finished
    and appended to `path` (sample_to); `what` names them in the error when they answer
    other problems. A line cut by an interrupt is skipped: that request runs again."""
    if not path.exists():
        return {}
    finished = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: unreadable, sampling it again", path, number)
            continue
        index = record["index"]
        if index >= len(problems) or record["question"] != problems[index].question:
            raise ValueError(f"{path} holds {what} of other problems (line {number}); use a new --out")
        finished[key(record)] = record
    return finished


async def sample_to(service: Service, bodies: dict[tuple, dict], records, store: Path, desc: str) -> None:
    """Answer every body (key -> request), appending `records(key, reply, body)` to
    `store` as each finishes (`PROBLEMS_IN_FLIGHT` at once)."""
    limit = asyncio.Semaphore(PROBLEMS_IN_FLIGHT)

    async def one(key: tuple) -> dict:
        async with limit:
            reply = await service.answer(bodies[key], Endpoint.CHAT_COMPLETIONS)
        return records(key, reply, bodies[key])

    tasks = [asyncio.create_task(one(key)) for key in bodies]
    try:
        with store.open("a") as out:
            for finished in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=desc, unit="request"):
                out.write(json.dumps(await finished) + "\n")
                out.flush()
    finally:
        for task in tasks:
            task.cancel()
