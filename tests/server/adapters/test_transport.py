"""The entropy channel's transports: IPC on one machine, TCP with CURVE keys across nodes
(a real socket on the loopback interface), and how `auto` chooses between them."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from entropy_serve.server.engine.adapters.channel import EntropyChannel, EntropyPublisher
from entropy_serve.server.engine.adapters.transport import (
    CHANNEL_ENV,
    ENV_PREFIX,
    KEYS_ENV,
    RAY_PREFIXES_ENV,
    CurveKeys,
    channel_transport,
)


def test_auto_is_tcp_exactly_when_ranks_may_run_on_other_nodes():
    assert channel_transport("auto", "ray") == "tcp"
    for backend in (None, "mp", "uni", "external_launcher"):
        assert channel_transport("auto", backend) == "ipc"
    assert channel_transport("ipc", "ray") == "ipc"  # asked for: kept
    assert channel_transport("tcp", None) == "tcp"
    with pytest.raises(ValueError, match="'udp'"):
        channel_transport("udp", None)


def engine_records(engine: str) -> float:
    return REGISTRY.get_sample_value("entropy_serve_entropy_records_total", {"engine": engine}) or 0.0


def test_tcp_channel_carries_records_of_the_launchs_key_only(monkeypatch):
    """A publisher with this launch's keys is heard; one with keys of its own, or none, is
    refused by the server's handshake: none of its records reach the store."""

    async def scenario():
        channel = EntropyChannel()
        env = channel.start("tcp", "127.0.0.1")
        assert env[CHANNEL_ENV].startswith("tcp://127.0.0.1:")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        channel.store.open("job")
        intruders = []
        for keys in (CurveKeys.generate().client_env(), None):  # another launch's keys; no keys at all
            if keys is None:
                monkeypatch.delenv(KEYS_ENV)
            else:
                monkeypatch.setenv(KEYS_ENV, keys)
            intruder = EntropyPublisher(engine=7)
            intruder.publish([("job", 1, 9.0, 9.0, 9.0, 9.0)])
            intruders.append(intruder)
        monkeypatch.setenv(KEYS_ENV, env[KEYS_ENV])
        before = engine_records("1")
        EntropyPublisher(engine=1).publish([("job", 0, 0.5, 0.25, 0.7, 0.5)])
        (record,) = await channel.store.take("job", range(0, 1))
        await asyncio.sleep(0.3)  # time for the intruders' records, were they let in
        with pytest.raises(TimeoutError):
            await channel.store.take("job", range(1, 2), timeout_s=0.1)
        counted = engine_records("1") - before
        channel.close()
        for intruder in intruders:
            intruder._socket.close(linger=0)
        return record, counted, env

    record, counted, env = asyncio.run(scenario())
    assert (record.model_entropy_nats, record.temperature) == (0.5, 0.7)
    assert counted == 1 and engine_records("7") == 0  # counted under the publisher's engine
    # The workers get the client's keys and the server's public key, not the server's secret.
    server_public, client_public, client_secret = env[KEYS_ENV].split(",")
    assert len(server_public) == len(client_public) == len(client_secret) == 40  # Z85 of 32 bytes
    assert ENV_PREFIX in env[RAY_PREFIXES_ENV].split(",")


def test_vllms_ray_executor_copies_the_channel_to_its_workers(monkeypatch):
    """vLLM copies variables with the prefixes RAY_PREFIXES_ENV names to its Ray workers:
    the channel's address and keys go with them."""
    from vllm.ray.ray_env import get_env_vars_to_copy

    async def scenario():
        channel = EntropyChannel()
        env = channel.start("tcp", "127.0.0.1")
        channel.close()
        return env

    env = asyncio.run(scenario())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY", env[RAY_PREFIXES_ENV])
    copied = get_env_vars_to_copy(destination="test")
    assert {CHANNEL_ENV, KEYS_ENV} <= copied
