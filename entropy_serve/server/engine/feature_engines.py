"""Pooling engines that read the served model's hidden states (the difficulty probe's
features), built from the server's config, in the dtype the generation engine resolved.

The difficulty router (probes/router.py) receives the engine built here; `train-probe`
builds one to featurize its problems; `score`'s pooling engine is sized here too.
"""

from __future__ import annotations

import asyncio

import torch
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.platforms import current_platform

from entropy_serve.probes.features import FeatureEngine, engine_pooling_type, pooling_engine_args
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine.holder import engine_args, kv_cache_bytes


def pooling_kv_cache_bytes(config: ServerConfig) -> int | None:
    """A CPU pooling engine's KV-cache budget (`kv_cache_bytes`); None on GPU, where vLLM
    sizes it by memory fraction."""
    if not current_platform.is_cpu():
        return None
    return kv_cache_bytes(config, engine_args(config).create_model_config(), pooling=True)


def feature_engine_args(config: ServerConfig, pooling: str, dtype: torch.dtype | None = None) -> AsyncEngineArgs:
    """The pooling engine of the probe's features (`pooling`: features.POOLINGS), in the
    dtype the generation engine resolves (`dtype`, or resolved here when no generation
    engine runs): for `auto`, vLLM can pick differently for a pooling runner (float16 on
    CPU, 6x slower there than bfloat16)."""
    dtype = dtype or engine_args(config).create_model_config().dtype
    return pooling_engine_args(
        config.model,
        config.max_model_len,
        str(dtype).removeprefix("torch."),
        config.enforce_eager,
        pooling_type=engine_pooling_type(pooling),
        kv_cache_memory_bytes=pooling_kv_cache_bytes(config),
    )


async def start_feature_engine(
    config: ServerConfig, pooling: str, suffix: str, dtype: torch.dtype | None = None
) -> FeatureEngine:
    """A started feature engine (built in a worker thread: loading takes seconds)."""
    return await asyncio.to_thread(FeatureEngine.build, feature_engine_args(config, pooling, dtype), suffix, pooling)
