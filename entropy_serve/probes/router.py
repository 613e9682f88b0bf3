"""The difficulty router: the probe, the pooling engine that reads its features, and the
class table, as one object the server asks and stops.

`classify(token_ids)` -> the class with the highest probability (Normal when that
probability is below `--probe-min-confidence`: an unsure probe changes nothing), its probabilities,
the class's strategy (probes/table.py) and the probe's latency. The probe is checked
against the served model when the router is made. The router does not build its pooling
engine: the server does (server/engine/feature_engines.py: after the generation engine, in its
dtype, with the probe's `pooling` and `feature_suffix`) and `attach`es it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vllm.v1.engine.async_llm import AsyncLLM

from entropy_serve.probes.features import FeatureEngine
from entropy_serve.probes.probe import Probe, load_probe
from entropy_serve.probes.table import TABLE_FILE, ClassStrategy, DifficultyTable, load_table


@dataclass(frozen=True)
class Classification:
    name: str  # the class routed as
    probabilities: dict[str, float]
    strategy: ClassStrategy
    latency_s: float
    fallback: bool = False  # the probe was unsure (top probability below the minimum): routed as Normal


class DifficultyRouter:
    def __init__(self, probe: Probe, table: DifficultyTable, min_confidence: float):
        self.probe = probe
        self.table = table
        self.min_confidence = min_confidence
        self.features: FeatureEngine | None = None

    @classmethod
    def load(
        cls, probe_dir: str | None, model: str, table: str | None, min_confidence: float
    ) -> DifficultyRouter | None:
        """The router of the probe in `probe_dir` (checked against `model` now), or None
        without one; `table`: a JSON file or "diffadapt" (None: the probe's learned table)."""
        if not probe_dir:
            return None
        probe = load_probe(probe_dir, model)
        learned = Path(probe_dir) / TABLE_FILE
        default = load_table(learned) if table is None and learned.exists() else None
        return cls(probe, load_table(table, default), min_confidence)

    @property
    def pooling(self) -> str:
        """How the probe pools hidden states (probes from before poolings were compared: last)."""
        return self.probe.metadata.get("feature_pooling", "last")

    @property
    def feature_suffix(self) -> str:
        return self.probe.metadata.get("feature_suffix", "")

    @property
    def engine(self) -> AsyncLLM | None:
        return self.features.engine if self.features is not None else None

    def attach(self, features: FeatureEngine) -> None:
        """The pooling engine the server built for this probe (shut down if it does not fit)."""
        if features.feature_size != self.probe.hidden_size:
            features.shutdown()
            raise ValueError(
                f"the probe reads {self.probe.hidden_size}-wide features, "
                f"the model gives {features.feature_size} ({self.pooling})"
            )
        self.features = features

    async def classify(self, token_ids: list[int]) -> Classification:
        started = time.perf_counter()
        features = await self.features.features([token_ids])
        probabilities = self.probe.probabilities(features)[0]
        latency_s = time.perf_counter() - started
        name = self.probe.classes[int(probabilities.argmax())]
        fallback = float(probabilities.max()) < self.min_confidence
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
