"""Shared by the accuracy benchmarks: answer chat problems through a server, concurrently."""

from __future__ import annotations

import asyncio
import sys
import time

from tqdm import tqdm


async def answer_all(
    client, model: str, problems, fields: dict, args, label: str
) -> list[tuple[object, object, float]]:
    """(problem, chat completion, latency in seconds) for every problem, `args.concurrency`
    in flight; problem i is seeded `args.seed * 100_000 + i` whatever the method, so
    methods compare on the same draws."""
    limit = asyncio.Semaphore(args.concurrency)

    async def one(index: int, problem):
        async with limit:
            started = time.perf_counter()
            response = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": problem.question}],
                max_tokens=args.max_tokens,
                seed=args.seed * 100_000 + index,
                **fields,
            )
        return problem, response, time.perf_counter() - started

    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(problems)]
    return [await t for t in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=label, file=sys.stderr)]
