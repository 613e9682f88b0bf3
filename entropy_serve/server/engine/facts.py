"""What the engine got, as the startup log and `/v1/models` report it: its dtype, model
runner, cores and KV budget, read back from the started engine's vLLM config."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from vllm.platforms import current_platform

from entropy_serve import host
from entropy_serve.server.config import ServerConfig

GIB = 1 << 30


@dataclass(frozen=True)
class EngineFacts:
    """What the engine got, as the startup log and `/v1/models` report it."""

    dtype: str  # the dtype it computes in
    dtype_requested: str  # as asked (`auto` resolves per host: see holder.py)
    model_runner: str  # "v1" (vLLM's CPU runner) or "v2" (model-runner-v2, CUDA's default)
    cpu_cores: str | None  # VLLM_CPU_OMP_THREADS_BIND: one CPU list per worker rank ('|' between)
    threads_per_worker: int | None
    kv_cache_gib: float | None  # CPU: the explicit budget; GPU: vLLM's sizing (None)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        cores = f"cores {self.cpu_cores} ({self.threads_per_worker} threads per worker)" if self.cpu_cores else "GPU"
        kv = f", KV cache {self.kv_cache_gib:.2f} GiB" if self.kv_cache_gib else ""
        return f"dtype {self.dtype} (asked: {self.dtype_requested}), model runner {self.model_runner}, {cores}{kv}"


def engine_facts(config: ServerConfig, engine) -> EngineFacts:
    vllm_config = engine.vllm_config
    on_cpu = current_platform.is_cpu()
    bind = os.environ.get(host.BIND_ENV) if on_cpu else None
    ranks = host.parse_bind(bind) if bind else None
    kv_bytes = vllm_config.cache_config.kv_cache_memory_bytes if on_cpu else None
    return EngineFacts(
        dtype=str(vllm_config.model_config.dtype).removeprefix("torch."),
        dtype_requested=config.dtype,
        model_runner="v2" if vllm_config.use_v2_model_runner else "v1",
        cpu_cores=bind,
        threads_per_worker=len(ranks[0]) if ranks else None,
        kv_cache_gib=round(kv_bytes / GIB, 3) if kv_bytes else None,
    )
