"""Data-parallel engines (`--data-parallel-size N`): which engine a strategy request runs
on, and what each engine is doing.

vLLM runs N engine cores behind one AsyncLLM and sends each request it gets to the least
loaded one. The leaves of one strategy request share their prompt, and entropy_fork's
branches their tree, through the prefix cache of the engine that holds them; spread over
engines, each engine would prefill the prompt again and the sharing is lost. So a
strategy request picks one engine when it starts (`EngineLoads.strategy_engine`) and
names it in every job it submits (vLLM's `data_parallel_rank`). Requests with a grammar
are pinned too, so that the engine that compiled it (grammar_warmup.py) is the one that
runs them. Other requests are left to vLLM's balancer.

An engine's load is vLLM's own count for it, the larger of its coordinator's last
snapshot (waiting + running) and this client's requests in flight there (vLLM's balancer
scores engines the same way), plus the strategy requests running on it: one of those
has more jobs to come (the next wave, entropy_fork's branches) while it decides.

The counts are attributes of vLLM 0.32's DPLBAsyncMPClient (`lb_engines`,
`engine_inflight`, `core_engines`), which has no public accessor for them: `EngineLoads.of`
checks the client is that class and fails at start-up, not per request, when it is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLoad:
    engine: int  # vLLM's data-parallel rank, the `engine` label of its metrics
    waiting: int  # the coordinator's last snapshot
    running: int
    in_flight: int  # this server's requests in the engine now
    strategy_requests: int  # strategy requests pinned to it now

    @property
    def score(self) -> int:
        return max(self.in_flight, self.waiting + self.running) + self.strategy_requests

    def as_dict(self) -> dict:
        return {
            "engine": self.engine,
            "waiting": self.waiting,
            "running": self.running,
            "in_flight": self.in_flight,
            "strategy_requests": self.strategy_requests,
        }


def least_loaded(scores: list[int], start: int) -> int:
    """The index of the smallest score; ties go to the first from `start` on (rotating
    `start` spreads a burst over equally idle engines)."""
    order = [(start + i) % len(scores) for i in range(len(scores))]
    return min(order, key=lambda index: scores[index])


class EngineLoads:
    """The data-parallel engines of one AsyncLLM, read from its balancer's counts."""

    def __init__(self, client) -> None:
        self._client = client
        self.num_engines = len(client.core_engines)
        self._strategy_requests = [0] * self.num_engines
        self._next = 0

    @classmethod
    def of(cls, llm) -> EngineLoads | None:
        """The engines' loads, or None for one engine."""
        if llm.vllm_config.parallel_config.data_parallel_size == 1:
            return None
        from vllm.v1.engine.core_client import DPLBAsyncMPClient

        client = llm.engine_core
        if not isinstance(client, DPLBAsyncMPClient):  # see the module doc
            raise RuntimeError(
                f"data parallelism needs vLLM's internal load balancer (DPLBAsyncMPClient), got {type(client).__name__}"
            )
        return cls(client)

    def loads(self) -> list[EngineLoad]:
        snapshot = self._client.lb_engines  # per engine: [waiting, running, KV-cache usage]
        in_flight = self._client.engine_inflight
        return [
            EngineLoad(
                engine=rank,
                waiting=int(snapshot[rank][0]),
                running=int(snapshot[rank][1]),
                in_flight=in_flight[identity],
                strategy_requests=self._strategy_requests[rank],
            )
            for rank, identity in enumerate(self._client.core_engines)
        ]

    def least_loaded(self) -> int:
        rank = least_loaded([load.score for load in self.loads()], self._next)
        self._next = (self._next + 1) % self.num_engines
        return rank

    @contextmanager
    def strategy_engine(self) -> Iterator[int]:
        """The engine a strategy request runs on, counted as its load until it returns."""
        rank = self.least_loaded()
        self._strategy_requests[rank] += 1
        try:
            yield rank
        finally:
            self._strategy_requests[rank] -= 1
