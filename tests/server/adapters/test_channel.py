"""The entropy channel: engine-side publisher to server-side store over a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from entropy_serve.server.engine.adapters.channel import (
    EntropyChannel,
    EntropyPublisher,
    EntropyStore,
    EntropySubscriber,
)
from entropy_serve.server.engine.adapters.transport import CHANNEL_ENV, Endpoint


def test_records_travel_and_wait_for_late_ones(monkeypatch):
    async def scenario():
        store = EntropyStore()
        endpoint = Endpoint("ipc")
        monkeypatch.setenv(CHANNEL_ENV, endpoint.address)
        reader = asyncio.create_task(EntropySubscriber(endpoint.socket, store).run())
        publisher = EntropyPublisher()
        for key in ("req-a", "req-b"):  # submission opens its jobs' keys before submitting them
            store.open(key)
        publisher.publish([("req-a", 0, 1.5, 1.0, 0.8, 0.5), ("req-b", 0, 0.2, 0.0, 0.0, 0.5)])
        first = await store.take("req-a", range(0, 1))
        # Position 1 is published only after we start waiting for it.
        asyncio.get_running_loop().call_later(0.05, publisher.publish, [("req-a", 1, 2.5, 2.0, 0.9, 0.5)])
        both = await store.take("req-a", range(0, 2))
        # A recomputed position (preemption) overwrites the earlier record.
        publisher.publish([("req-a", 1, 3.0, 2.5, 1.0, 4.25)])
        await asyncio.sleep(0.05)
        again = await store.take("req-a", range(1, 2))
        with pytest.raises(TimeoutError, match="req-b positions \\[1\\]"):
            await store.take("req-b", range(0, 2), timeout_s=0.1)
        store.forget("req-a")
        reader.cancel()
        endpoint.close()
        return first, both, again, store

    first, both, again, store = asyncio.run(scenario())
    assert [t.model_entropy_nats for t in first] == [1.5]
    assert [(t.model_entropy_nats, t.sampled_entropy_nats, t.temperature) for t in both] == [
        (1.5, 1.0, 0.8),
        (2.5, 2.0, 0.9),
    ]
    assert (again[0].model_entropy_nats, again[0].self_certainty_nats) == (3.0, 4.25)
    assert "req-a" not in store._by_key


def test_publisher_without_a_channel_is_silent(monkeypatch):
    monkeypatch.delenv(CHANNEL_ENV, raising=False)
    publisher = EntropyPublisher()
    publisher.publish([("k", 0, 1.0, 1.0, 1.0, 0.5)])  # no server: nothing to send to
    assert publisher.address is None and publisher._socket is None  # no socket was ever opened


def test_channel_hands_its_address_to_the_engine_and_cleans_up(monkeypatch):
    async def scenario():
        channel = EntropyChannel()
        env = channel.start()
        monkeypatch.setenv(CHANNEL_ENV, env[CHANNEL_ENV])
        EntropyPublisher().publish([("job", 0, 0.5, 0.25, 0.7, 0.5)])
        (record,) = await channel.store.take("job", range(0, 1))
        folder = Path(env[CHANNEL_ENV].removeprefix("ipc://")).parent
        assert folder.stat().st_mode & 0o777 == 0o700  # private to this user
        channel.close()
        return record, folder

    record, folder = asyncio.run(scenario())
    assert (record.model_entropy_nats, record.sampled_entropy_nats, record.temperature) == (0.5, 0.25, 0.7)
    assert not folder.exists()


def test_only_tensor_parallel_rank_0_publishes(monkeypatch):
    """Every TP rank runs the processors on the same logits; one record per token."""

    async def scenario():
        store = EntropyStore()
        endpoint = Endpoint("ipc")
        monkeypatch.setenv(CHANNEL_ENV, endpoint.address)
        reader = asyncio.create_task(EntropySubscriber(endpoint.socket, store).run())
        ranks = [EntropyPublisher(rank=lambda r=r: r) for r in (0, 1)]
        for rank, publisher in enumerate(ranks):
            publisher.publish([("req", 0, 1.0 + rank, 0.5, 1.0)])
        (record,) = await store.take("req", range(0, 1))
        await asyncio.sleep(0.05)
        reader.cancel()
        endpoint.close()
        return record, ranks

    record, (rank0, rank1) = asyncio.run(scenario())
    assert record.model_entropy_nats == 1.0  # rank 0's; rank 1's would overwrite it
    assert rank0._socket is not None and rank1._socket is None  # rank 1 never even connected
