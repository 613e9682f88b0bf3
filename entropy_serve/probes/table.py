"""The strategy each difficulty class is answered with: DiffAdapt's table, as config.

A JSON file (`serve --difficulty-table FILE`) may override any field of any class:
    {"easy": {"temperature": 0.5, "top_p": 0.95, "budget_fraction": 0.4,
              "instruction": "Answer directly."}, "normal": {...}, "hard": {...}}
`instruction` becomes a system message (chat; before the client's own) or a line before
the prompt (completions); `budget_fraction` scales the request's max_tokens (or, without
one, what is left of the context). Defaults are DiffAdapt's: Normal T 0.8, top-p 0.95,
full budget; Easy T 0.5, answer directly, 0.4x; Hard T 0.4, outline key steps, 0.5x.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ClassStrategy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(ge=0.0, le=2.0)
    top_p: float = Field(gt=0.0, le=1.0)
    budget_fraction: float = Field(gt=0.0, le=1.0)
    instruction: str | None = None

    def max_tokens(self, budget: int) -> int:
        return max(1, math.floor(budget * self.budget_fraction))


class DifficultyTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    easy: ClassStrategy = ClassStrategy(
        temperature=0.5, top_p=0.95, budget_fraction=0.4, instruction="Answer directly, without explanation."
    )
    normal: ClassStrategy = ClassStrategy(temperature=0.8, top_p=0.95, budget_fraction=1.0)
    hard: ClassStrategy = ClassStrategy(
        temperature=0.4, top_p=0.95, budget_fraction=0.5,
        instruction="Outline the key steps briefly, then give the final answer.",
    )

    def for_class(self, name: str) -> ClassStrategy:
        return getattr(self, name)


def load_table(path: str | Path | None) -> DifficultyTable:
    """The default table, with the file's classes and fields over it."""
    if path is None:
        return DifficultyTable()
    try:
        overrides = json.loads(Path(path).read_text())
        defaults = DifficultyTable().model_dump()
        if not isinstance(overrides, dict):
            raise ValueError("expected a JSON object of classes")
        merged = {name: {**defaults.get(name, {}), **fields} for name, fields in overrides.items()}
        return DifficultyTable.model_validate({**defaults, **merged})
    except (OSError, ValueError, TypeError, ValidationError) as error:
        raise ValueError(f"cannot read difficulty table {path}: {error}") from error
