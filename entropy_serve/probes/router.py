"""The difficulty router: the probe, the pooling engine that reads its features, and the
class table, as one object the server starts, asks and stops.

`classify(token_ids)` -> the class with the highest probability (Normal when that
probability is below `--probe-min-confidence`: an unsure probe changes nothing), its probabilities,
the class's strategy (probes/table.py) and the probe's latency. The probe is checked
against the served model when the router is made; its pooling engine starts after the
generation engine, in the generation engine's dtype.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.probes.features import FeatureEngine, engine_pooling_type, pooling_engine_args
from entropy_serve.probes.probe import Probe, load_probe
from entropy_serve.probes.table import TABLE_FILE, ClassStrategy, DifficultyTable, load_table
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine import engine_args, pooling_kv_cache_bytes


@dataclass(frozen=True)
class Classification:
    name: str  # the class routed as
    probabilities: dict[str, float]
    strategy: ClassStrategy
    latency_s: float
    fallback: bool = False  # the probe was unsure (top probability below the minimum): routed as Normal


def feature_engine_args(config: ServerConfig, pooling: str, dtype: torch.dtype | None = None) -> AsyncEngineArgs:
    """The pooling engine of the probe's features (`pooling`: features.POOLINGS), in the
    dtype the generation engine resolves (`dtype`, or resolved here when no generation
    engine runs): for `auto`, vLLM can pick differently for a pooling runner (float16 on
    CPU, 6x slower there than bfloat16)."""
    dtype = dtype or engine_args(config).create_model_config().dtype
    return pooling_engine_args(
        config.model, config.max_model_len, str(dtype).removeprefix("torch."), config.enforce_eager,
        pooling_type=engine_pooling_type(pooling), kv_cache_memory_bytes=pooling_kv_cache_bytes(config),
    )


class DifficultyRouter:
    def __init__(self, config: ServerConfig, probe: Probe, table: DifficultyTable):
        self.config = config
        self.probe = probe
        self.table = table
        self.features: FeatureEngine | None = None

    @classmethod
    def load(cls, config: ServerConfig) -> DifficultyRouter | None:
        """The router of `--probe` (checked against the model now), or None without one."""
        if not config.probe:
            return None
        probe = load_probe(config.probe, config.model)
        learned = Path(config.probe) / TABLE_FILE
        default = load_table(learned) if config.difficulty_table is None and learned.exists() else None
        return cls(config, probe, load_table(config.difficulty_table, default))

    @property
    def engine(self) -> AsyncLLM | None:
        return self.features.engine if self.features is not None else None

    async def start(self, dtype: torch.dtype) -> None:
        self.features = await asyncio.to_thread(self._build, dtype)

    def _build(self, dtype: torch.dtype) -> FeatureEngine:
        pooling = self.probe.metadata.get("feature_pooling", "last")  # probes from before poolings were compared: last
        features = FeatureEngine.build(
            feature_engine_args(self.config, pooling, dtype), self.probe.metadata.get("feature_suffix", ""), pooling
        )
        if features.feature_size != self.probe.hidden_size:
            features.shutdown()
            raise ValueError(
                f"the probe reads {self.probe.hidden_size}-wide features, the model gives {features.feature_size} ({pooling})"
            )
        return features

    async def classify(self, token_ids: list[int]) -> Classification:
        started = time.perf_counter()
        features = await self.features.features([token_ids])
        probabilities = self.probe.probabilities(features)[0]
        latency_s = time.perf_counter() - started
        name = self.probe.classes[int(probabilities.argmax())]
        fallback = float(probabilities.max()) < self.config.probe_min_confidence
        if fallback:
            name = "normal"
        return Classification(
            name=name,
            probabilities={c: float(p) for c, p in zip(self.probe.classes, probabilities)},
            strategy=self.table.for_class(name),
            latency_s=latency_s,
            fallback=fallback,
        )

    def stop(self) -> None:
        features, self.features = self.features, None  # dropped too: see EngineHolder.stop
        if features is not None:
            features.shutdown()
