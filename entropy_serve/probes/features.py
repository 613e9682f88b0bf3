"""Probe features: the served model's final-layer hidden state at the prompt's last token.

A second vLLM engine of the same weights runs in pooling mode (last-token pooling, no
activation or normalization), so features come batched from vLLM's own model code; its
output equals transformers' `hidden_states[-1][:, -1]` (after the final norm; cosine 1.0
measured on the embedded model). An optional suffix (DiffAdapt appends a short
difficulty-eliciting one) is tokenized after the rendered prompt. The trainer and the
server both go through `FeatureEngine`, so a probe sees the same features it was trained on.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
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
        enable_prefix_caching=False,
        disable_log_stats=True,
        enable_log_requests=False,
    )


def feature_token_ids(prompt_ids: list[int], suffix_ids: list[int]) -> list[int]:
    return list(prompt_ids) + list(suffix_ids)


class FeatureEngine:
    """Hidden states of token-id prompts from a pooling-mode AsyncLLM."""

    def __init__(self, engine: AsyncLLM, suffix: str = ""):
        self.engine = engine
        self.suffix = suffix
        tokenizer = engine.get_tokenizer()
        self.suffix_ids = tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
        self.hidden_size = engine.vllm_config.model_config.get_hidden_size()

    @classmethod
    def build(cls, args: AsyncEngineArgs, suffix: str = "") -> FeatureEngine:
        return cls(AsyncLLM.from_engine_args(args), suffix)

    async def features(self, prompts: list[list[int]]) -> np.ndarray:
        """[len(prompts), hidden] float32: one engine batch for all of them."""
        vectors = await asyncio.gather(*(self._one(p) for p in prompts))
        return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self.hidden_size), np.float32)

    async def _one(self, prompt_ids: list[int]) -> np.ndarray:
        token_ids = feature_token_ids(prompt_ids, self.suffix_ids)
        params = PoolingParams(task="embed")
        final = None
        async for output in self.engine.encode({"prompt_token_ids": token_ids}, params, f"probe-{uuid.uuid4().hex}"):
            final = output
        return np.asarray(final.outputs.data, dtype=np.float32)

    def shutdown(self) -> None:
        self.engine.shutdown()
