"""Per-token entropies from the engine's worker process to the HTTP server.

vLLM's logits processors cannot return data, so the adapters publish what they measure
on a ZeroMQ PUSH socket; the server PULLs it into an EntropyStore. Where the socket
lives (an IPC path on one machine, TCP with CURVE keys when workers run on other nodes)
is transport.py's; its address reaches the engine's processes through their environment
(CHANNEL_ENV, and KEYS_ENV for TCP).

A record is (engine request key, output position, model entropy, sampled entropy,
temperature, model self-certainty). Keying by output position makes it safe under preemption and discarded
samples: a recomputed position simply overwrites the earlier record. The store keeps
records only of keys the server has opened (a request's jobs, from submission to end),
so records that arrive after their request ended, or that nobody asked for, are
dropped instead of piling up. The same channel carries the workers' grammar-readiness
records (server/engine/grammar_warmup.py), under keys of their own.

A message is (engine index, records): the data-parallel rank of the engine whose worker
measured them, the `engine` label vLLM's own metrics use. Under tensor parallelism every
TP rank's worker runs the logits processors on the same full logits (vLLM gathers them
before sampling), so every rank measures the same entropies; only TP rank 0 publishes
them, one record per token. Pipeline stages other than the last compute no logits;
data-parallel engines each publish their own requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import zmq
import zmq.asyncio

from entropy_serve.server import metrics
from entropy_serve.server.engine.adapters.transport import CHANNEL_ENV, KEYS_ENV, Endpoint, secure_publisher

logger = logging.getLogger(__name__)

Record = tuple[str, int, float, float, float, float]


@dataclass(frozen=True)
class TokenEntropy:
    model_entropy_nats: float
    sampled_entropy_nats: float
    temperature: float
    self_certainty_nats: float = 0.0  # KL(uniform || the model's distribution) (samplers/entropy.py)


def tensor_parallel_rank() -> int:
    """This worker's TP rank (0 where vLLM's parallel state is not set up: unit tests)."""
    from vllm.distributed import get_tensor_model_parallel_rank, model_parallel_is_initialized

    return get_tensor_model_parallel_rank() if model_parallel_is_initialized() else 0


def engine_index(vllm_config) -> int:
    """The data-parallel rank of the engine a worker belongs to (0 in unit tests, no config).
    vLLM 0.32 runs the engines of a dense model as independent DP=1 engines, resetting
    `data_parallel_rank` to 0 in each; `data_parallel_index` keeps the rank."""
    return 0 if vllm_config is None else vllm_config.parallel_config.data_parallel_index


class EntropyPublisher:
    """Engine side: connects lazily on first publish, never blocks the engine step; on
    TP ranks other than 0 it publishes nothing (see the module doc)."""

    def __init__(self, engine: int = 0, rank: Callable[[], int] = tensor_parallel_rank) -> None:
        self.address = os.environ.get(CHANNEL_ENV)
        self._keys = os.environ.get(KEYS_ENV)
        self.engine = engine
        self._rank = rank
        self._publishes: bool | None = None  # decided on the first publish, once ranks exist
        self._socket: zmq.Socket | None = None
        self._encoder = msgspec.msgpack.Encoder()

    def publish(self, records: list[Record]) -> None:
        if not records or not self.address:
            return
        if self._publishes is None:
            self._publishes = self._rank() == 0
        if not self._publishes:
            return
        if self._socket is None:
            self._socket = zmq.Context.instance().socket(zmq.PUSH)
            self._socket.setsockopt(zmq.SNDHWM, 0)  # never drop: the server is always reading
            if self._keys:
                secure_publisher(self._socket, self._keys)
            self._socket.connect(self.address)
        self._socket.send(self._encoder.encode((self.engine, records)), copy=False)


class EntropyStore:
    """Server side: records by engine request key, with waiting for ones not yet arrived."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[int, TokenEntropy]] = {}
        self._arrived = asyncio.Event()

    def __len__(self) -> int:
        return len(self._by_key)

    def open(self, key: str) -> None:
        """Keep `key`'s records from now until `forget(key)`."""
        self._by_key.setdefault(key, {})
        metrics.ENTROPY_STORE_KEYS.set(len(self._by_key))

    def add(self, records: list[Record], engine: int = 0) -> None:
        metrics.ENTROPY_RECORDS.labels(engine=str(engine)).inc(len(records))
        for key, position, *values in records:
            kept = self._by_key.get(key)
            if kept is not None:
                kept[position] = TokenEntropy(*values)
        self._arrived.set()

    async def take(self, key: str, positions: range, timeout_s: float = 5.0) -> list[TokenEntropy]:
        """The records of `positions`, waiting (bounded) for any still in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if key not in self._by_key:
            self.open(key)
        records = self._by_key[key]
        while any(p not in records for p in positions):
            remaining = deadline - loop.time()
            if remaining <= 0:
                missing = [p for p in positions if p not in records]
                raise TimeoutError(f"entropy for {key} positions {missing[:5]} never arrived")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass
        return [records[p] for p in positions]

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)
        metrics.ENTROPY_STORE_KEYS.set(len(self._by_key))


class EntropySubscriber:
    """Server side: reads an endpoint's socket (transport.py) into an EntropyStore until cancelled."""

    def __init__(self, socket: zmq.asyncio.Socket, store: EntropyStore) -> None:
        self.socket = socket
        self.store = store
        self._decoder = msgspec.msgpack.Decoder()

    async def run(self) -> None:
        while True:
            message = await self.socket.recv(copy=False)
            engine, records = self._decoder.decode(message.buffer)
            self.store.add(records, engine)


class EntropyChannel:
    """The server's end of the channel: the endpoint of the chosen transport, the
    subscriber reading it, and the store it fills. `start` binds it and returns the
    environment the engine's processes need to publish to it."""

    def __init__(self) -> None:
        self.store = EntropyStore()
        self._endpoint: Endpoint | None = None
        self._task: asyncio.Task | None = None

    def start(self, transport: str = "ipc", host: str | None = None) -> dict[str, str]:
        self._endpoint = Endpoint(transport, host)
        self._task = asyncio.create_task(EntropySubscriber(self._endpoint.socket, self.store).run())
        logger.info("entropy channel: %s", self._endpoint.address)
        return dict(self._endpoint.env)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._endpoint is not None:
            self._endpoint.close()
