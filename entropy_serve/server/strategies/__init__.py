"""Request strategies that answer from several generations: each samples leaves, votes
over their answers (leaves.py, voting.py) and replies with a winning leaf."""

from __future__ import annotations

from entropy_serve.server.strategies.entropy_fork import run_entropy_fork
from entropy_serve.server.strategies.leaves import StrategyOutcome
from entropy_serve.server.strategies.self_consistency import run_self_consistency

RUNNERS = {"self_consistency": run_self_consistency, "entropy_fork": run_entropy_fork}


async def run_strategy(holder, generator, request) -> StrategyOutcome:
    return await RUNNERS[request.strategy.name](holder, generator, request)
