"""Grammar warm-ups without an engine: one warm-up per new grammar, shared by the
requests that wait for it; a warm-up that never hears back lets its request go ahead."""

from __future__ import annotations

import asyncio

from entropy_serve.server.engine import grammar_warmup
from entropy_serve.server.engine.adapters.channel import EntropyStore
from entropy_serve.server.engine.adapters.spec import RowSpec, grammar_ready_key
from entropy_serve.server.engine.grammar_warmup import GrammarWarmup


class FakeEngine:
    """Answers a warm-up after `delay_s`, publishing readiness as the workers would (unless mute)."""

    def __init__(self, store: EntropyStore, delay_s: float = 0.05, mute: bool = False):
        self.store = store
        self.delay_s = delay_s
        self.mute = mute
        self.warmed: list[str] = []

    async def generate(self, prompt, params, request_id, data_parallel_rank=None):
        spec = RowSpec.from_extra_args(params.extra_args)
        assert not spec.shape and spec.key == request_id and params.max_tokens == 1
        engine = data_parallel_rank or 0  # the engine the request was sent to compiles it
        self.warmed.append(spec.compile_grammar if data_parallel_rank is None else (engine, spec.compile_grammar))
        await asyncio.sleep(self.delay_s)
        if not self.mute:
            self.store.add([(grammar_ready_key(spec.compile_grammar, engine), 0, 0.0, 0.0, 0.0, 0.0)], engine)
        yield "output"


def test_one_warm_up_per_new_grammar_shared_by_concurrent_requests():
    async def scenario():
        store = EntropyStore()
        engine, warmup = FakeEngine(store), GrammarWarmup()
        await asyncio.gather(*(warmup.compiled(engine, store, {"root ::= [0-9]", "root ::= [a-z]"}) for _ in range(3)))
        assert sorted(engine.warmed) == ["root ::= [0-9]", "root ::= [a-z]"]
        await warmup.compiled(engine, store, {"root ::= [0-9]"})  # known: no second warm-up
        await warmup.compiled(engine, store, set())
        assert len(engine.warmed) == 2 and len(store) == 0  # the readiness keys are closed again

    asyncio.run(scenario())


def test_each_data_parallel_engine_compiles_its_own():
    """A grammar compiled in engine 0 is not ready in engine 1: a request pinned there warms it up there."""

    async def scenario():
        store = EntropyStore()
        engine, warmup = FakeEngine(store), GrammarWarmup()
        await warmup.compiled(engine, store, {"root ::= [0-9]"}, 0)
        await warmup.compiled(engine, store, {"root ::= [0-9]"}, 1)
        await warmup.compiled(engine, store, {"root ::= [0-9]"}, 1)  # known there now
        assert engine.warmed == [(0, "root ::= [0-9]"), (1, "root ::= [0-9]")]

    asyncio.run(scenario())


def test_a_warm_up_that_never_hears_back_lets_the_request_go_and_is_tried_again(monkeypatch):
    monkeypatch.setattr(grammar_warmup, "WARMUP_TIMEOUT_S", 0.1)

    async def scenario():
        store = EntropyStore()
        engine, warmup = FakeEngine(store, mute=True), GrammarWarmup()
        await asyncio.wait_for(warmup.compiled(engine, store, {"root ::= [0-9]"}), 5)
        engine.mute = False
        await warmup.compiled(engine, store, {"root ::= [0-9]"})
        assert engine.warmed == ["root ::= [0-9]"] * 2

    asyncio.run(scenario())


def test_records_of_keys_nobody_opened_are_dropped():
    store = EntropyStore()
    store.add([("finished-request", 3, 1.0, 1.0, 1.0, 0.0)])
    assert len(store) == 0
    store.open("live")
    store.add([("live", 0, 1.0, 0.5, 0.7, 0.1)])
    assert asyncio.run(store.take("live", range(1)))[0].sampled_entropy_nats == 0.5
    store.forget("live")
    assert len(store) == 0
