"""Which data-parallel engine a strategy request runs on, from vLLM's balancer counts
(a stand-in client with the three attributes vLLM 0.32's DPLBAsyncMPClient has)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from entropy_serve.server.engine.data_parallel import EngineLoads, least_loaded


def test_least_loaded_breaks_ties_from_the_rotating_start():
    assert least_loaded([3, 1, 2], 0) == 1
    assert least_loaded([1, 1, 1], 0) == 0
    assert least_loaded([1, 1, 1], 2) == 2
    assert least_loaded([2, 1, 1], 2) == 2  # ties after the start, wrapping around
    assert least_loaded([0, 5], 1) == 0


def balancer(snapshot: list[list], in_flight: list[int]) -> SimpleNamespace:
    engines = [f"engine-{rank}".encode() for rank in range(len(snapshot))]
    return SimpleNamespace(
        core_engines=engines, lb_engines=snapshot, engine_inflight=Counter(dict(zip(engines, in_flight, strict=True)))
    )


def test_a_strategy_request_goes_where_vllm_counts_least_and_counts_there_until_it_returns():
    loads = EngineLoads(balancer([[0, 3, 0.1], [1, 0, 0.1]], [2, 1]))
    # Engine 0: max(2 in flight, 0 + 3) = 3; engine 1: max(1, 1 + 0) = 1.
    assert [load.score for load in loads.loads()] == [3, 1]
    with loads.strategy_engine() as first:
        assert first == 1
        with loads.strategy_engine() as second:  # 1 + 1 open strategy request = 2 < 3
            assert second == 1
            with loads.strategy_engine() as third:  # 3 vs 3: a tie, taken from the rotating start
                assert third in (0, 1)
                assert sum(load.strategy_requests for load in loads.loads()) == 3
    assert [load.strategy_requests for load in loads.loads()] == [0, 0]  # all returned


def test_equally_idle_engines_share_a_burst():
    loads = EngineLoads(balancer([[0, 0, 0.0], [0, 0, 0.0]], [0, 0]))
    ranks = [loads.least_loaded() for _ in range(4)]
    assert sorted(ranks) == [0, 0, 1, 1]


def test_one_engine_has_no_loads_and_another_balancer_fails_loudly():
    one = SimpleNamespace(vllm_config=SimpleNamespace(parallel_config=SimpleNamespace(data_parallel_size=1)))
    assert EngineLoads.of(one) is None
    two = SimpleNamespace(
        vllm_config=SimpleNamespace(parallel_config=SimpleNamespace(data_parallel_size=2)), engine_core=object()
    )
    with pytest.raises(RuntimeError, match="DPLBAsyncMPClient"):
        EngineLoads.of(two)
