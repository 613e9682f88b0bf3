"""Probe features: the served model's final-layer hidden states of the prompt, pooled.

A second vLLM engine of the same weights runs in pooling mode (no activation or
normalization), so features come batched from vLLM's own model code; the last token's
output equals transformers' `hidden_states[-1][:, -1]` (after the final norm; cosine
1.0 measured on the embedded model). POOLINGS: the last token's state (DiffAdapt's
feature; the engine pools LAST), the mean over the prompt's tokens, or both side by
side (the engine returns every token's state, ALL, and we pool). An optional suffix
(DiffAdapt appends a short difficulty-eliciting one) is tokenized after the rendered
prompt. The trainer and the server both go through `FeatureEngine`, so a probe sees the
same features it was trained on.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import torch
from vllm import PoolingParams
from vllm.config import PoolerConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

# A pooling engine keeps no sequences between steps: a small share of memory is plenty.
POOLING_MEMORY_FRACTION = 0.1


def pooling_engine_args(
    model: str,
    max_model_len: int | None,
    dtype: str,
    enforce_eager: bool,
    pooling_type: str = "LAST",
    memory_fraction: float = POOLING_MEMORY_FRACTION,
    kv_cache_memory_bytes: int | None = None,
) -> AsyncEngineArgs:
    """A pooling engine of the model's final hidden states (after the final norm, no
    activation): at the last token (LAST) or every token (ALL, offline/score.py's)."""
    return AsyncEngineArgs(
        model=model,
        runner="pooling",
        pooler_config=PoolerConfig(pooling_type=pooling_type, use_activation=False),
        max_model_len=max_model_len,
        dtype=dtype,
        enforce_eager=enforce_eager,
        gpu_memory_utilization=memory_fraction,
        kv_cache_memory_bytes=kv_cache_memory_bytes,  # CPU: an explicit budget (server/engine/holder.py)
        enable_prefix_caching=False,
        disable_log_stats=True,
        enable_log_requests=False,
    )


POOLINGS = ("last", "mean", "last+mean")


def feature_token_ids(prompt_ids: list[int], suffix_ids: list[int]) -> list[int]:
    return list(prompt_ids) + list(suffix_ids)


def pooled(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """[tokens, hidden] states -> the feature vector ([hidden], or [2 x hidden] for last+mean)."""
    if pooling == "last":
        return hidden[-1]
    if pooling == "mean":
        return hidden.mean(axis=0)
    if pooling == "last+mean":
        return np.concatenate([hidden[-1], hidden.mean(axis=0)])
    raise ValueError(f"unknown pooling {pooling!r}; one of {POOLINGS}")


def engine_pooling_type(pooling: str) -> str:
    """What the pooling engine returns for `pooling`: the last token alone, or every token."""
    return "LAST" if pooling == "last" else "ALL"


class FeatureEngine:
    """Pooled hidden states of token-id prompts from a pooling-mode AsyncLLM (LAST for
    `last`, else ALL: see `engine_pooling_type`)."""

    def __init__(self, engine: AsyncLLM, suffix: str = "", pooling: str = "last"):
        self.engine = engine
        self.suffix = suffix
        self.pooling = pooling
        tokenizer = engine.get_tokenizer()
        self.suffix_ids = tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
        self.hidden_size = engine.vllm_config.model_config.get_hidden_size()

    @classmethod
    def build(cls, args: AsyncEngineArgs, suffix: str = "", pooling: str = "last") -> FeatureEngine:
        return cls(AsyncLLM.from_engine_args(args), suffix, pooling)

    @property
    def feature_size(self) -> int:
        return self.hidden_size * (2 if self.pooling == "last+mean" else 1)

    async def features(self, prompts: list[list[int]]) -> np.ndarray:
        """[len(prompts), feature size] float32, pooled as the engine's `pooling`: one
        engine batch for all of them."""
        return (await self.features_by_pooling(prompts, (self.pooling,)))[self.pooling]

    async def features_by_pooling(self, prompts: list[list[int]], poolings=POOLINGS) -> dict[str, np.ndarray]:
        """Each pooling's [len(prompts), its size] features from one pass (the trainer
        compares them); any but `last` needs an ALL engine."""
        every_token = engine_pooling_type(self.pooling) == "ALL"
        if not every_token and set(poolings) != {"last"}:
            raise ValueError(f"poolings {poolings} need every token's state; this engine pools the last one")
        states = await asyncio.gather(*(self._states(p) for p in prompts))  # [tokens, hidden] or [hidden] each
        result = {}
        for pooling in poolings:
            width = self.hidden_size * (2 if pooling == "last+mean" else 1)
            vectors = [pooled(h, pooling) if every_token else h for h in states]
            result[pooling] = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, width), np.float32)
        return result

    async def _states(self, prompt_ids: list[int]) -> np.ndarray:
        token_ids = feature_token_ids(prompt_ids, self.suffix_ids)
        params = PoolingParams(task="token_embed" if engine_pooling_type(self.pooling) == "ALL" else "embed")
        final = None
        async for output in self.engine.encode({"prompt_token_ids": token_ids}, params, f"probe-{uuid.uuid4().hex}"):
            final = output
        data = final.outputs.data
        return data.float().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data, dtype=np.float32)

    def shutdown(self) -> None:
        self.engine.shutdown()
