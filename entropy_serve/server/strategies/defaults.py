"""A model's learned strategy settings, and how a request's strategy takes them.

`train-probe` tunes deepconf's and escalate's settings per temperature on its training
problems (trainer/strategy_tuning.py) and writes them as `strategy_defaults.json`; the
embedded model's profile carries the same record under "strategy_defaults". The
server reads one (`--strategy-defaults`, else the probe folder's, else the profile's)
and, for every request, fills the strategy fields the client left out with the
settings learned at the nearest temperature (`resolve`). Fields the client sent always
win; without a record, the fields' own defaults (extensions.py) apply.

The record, per temperature: the learned fields of each tuned strategy (validated by
the request models themselves, so a field has one name and one range everywhere), and
what they scored on the training problems against greedy and self-consistency.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from entropy_serve.server.protocol.extensions import Auto, DeepConf, Escalate

DEFAULTS_FILE = "strategy_defaults.json"
OPENAI_TEMPERATURE = 1.0  # what a request that sets none samples at
PROFILE_KEY = "strategy_defaults"
TUNED = {"deepconf": DeepConf, "escalate": Escalate}  # strategy name -> request model
# What tuning chooses; the rest (n; deepconf's warmup, wave, top_k) stay the request's budget.
TUNED_FIELDS = {
    "deepconf": ("confidence", "window", "keep", "consensus"),
    "escalate": (
        "signal",
        "threshold_nats",
        "stop_confidence",
        "min_agreement",
        "wave",
        "weighting",
        "cisc_temperature",
        "window",
    ),
}


class TemperatureDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(ge=0.0, le=2.0)
    strategies: dict[str, dict] = Field(description="strategy name -> learned fields (TUNED_FIELDS)")
    training: dict = Field(default_factory=dict, description="accuracy and tokens per problem on the training problems")

    def fields(self, name: str) -> dict:
        return dict(self.strategies.get(name, {}))


class StrategyDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    fingerprint: str | None = None
    made_by: str = ""
    temperatures: list[TemperatureDefaults] = Field(min_length=1)

    def check(self) -> StrategyDefaults:
        """Every learned field validates as the request field it fills."""
        for entry in self.temperatures:
            for name, fields in entry.strategies.items():
                if name not in TUNED:
                    raise ValueError(f"strategy defaults: unknown strategy {name!r}; tuned ones are {sorted(TUNED)}")
                unknown = set(fields) - set(TUNED_FIELDS[name])
                if unknown:
                    raise ValueError(f"strategy defaults: {name} fields {sorted(unknown)} are not tuned ones")
                TUNED[name].model_validate({"name": name, **fields})
        return self

    def at(self, temperature: float | None) -> TemperatureDefaults:
        """The entry for `temperature` (the nearest tuned one), or, for None, the one whose
        learned escalation scored best on the training problems."""
        if temperature is None:
            return max(self.temperatures, key=lambda e: e.training.get("escalate", {}).get("accuracy", 0.0))
        return min(self.temperatures, key=lambda e: abs(e.temperature - temperature))


def load(path: str | Path, fingerprint: str | None = None) -> StrategyDefaults:
    """A defaults file, or a profile holding them under PROFILE_KEY; with `fingerprint`,
    refuse settings learned on another model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        data = data.get(PROFILE_KEY, data) if isinstance(data, dict) else data
        defaults = StrategyDefaults.model_validate(data).check()
    except (OSError, ValueError, ValidationError) as error:
        raise ValueError(f"cannot read strategy defaults {path}: {error}") from error
    if fingerprint is not None and defaults.fingerprint not in (None, fingerprint):
        raise ValueError(
            f"strategy defaults {path} were learned on {defaults.model!r} ({defaults.fingerprint}), not on this model; "
            "learn them with `entropy-serve train-probe`"
        )
    return defaults


def has_defaults(path: str | Path) -> bool:
    """Whether a JSON file (a profile) carries strategy defaults."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (PROFILE_KEY in data or "temperatures" in data)


def resolve(
    strategy: BaseModel, temperature: float | None, defaults: StrategyDefaults | None
) -> tuple[BaseModel, float | None]:
    """The strategy as it runs, and the temperature: the client's fields, the rest learned.

    `auto` becomes `escalate` with every field learned, at the learned temperature when
    the request sets none. Strategies that were not tuned come back unchanged."""
    if isinstance(strategy, Auto):
        entry = defaults.at(temperature) if defaults else None
        fields = entry.fields("escalate") if entry else {}
        if temperature is None and entry is not None:
            temperature = entry.temperature
        return Escalate.model_validate({"name": "escalate", **fields}), temperature
    name = getattr(strategy, "name", None)
    if defaults is None or name not in TUNED:
        return strategy, temperature
    learned = defaults.at(OPENAI_TEMPERATURE if temperature is None else temperature).fields(name)
    sent = strategy.model_dump(include=strategy.model_fields_set)
    return TUNED[name].model_validate({**learned, **sent, "name": name}), temperature
