"""The strategy each difficulty class is answered with: a table, learned per model or
DiffAdapt's.

Which table a server routes with: `serve --difficulty-table FILE` (or the name
`diffadapt`: the paper's table), else the table `train-probe` learned and saved beside
the probe (`difficulty_table.json`), else the paper's. Learning (`choose_table`):
train-probe samples each of CANDIDATES on its training problems; per class, the
candidate with the fewest tokens whose accuracy is within a tolerance of the class's
best is kept.

A JSON file may override any field of any class (of the paper's table):
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
        temperature=0.4,
        top_p=0.95,
        budget_fraction=0.5,
        instruction="Outline the key steps briefly, then give the final answer.",
    )

    def for_class(self, name: str) -> ClassStrategy:
        return getattr(self, name)


TABLE_FILE = "difficulty_table.json"  # a learned table, in a probe's folder
DIFFADAPT = "diffadapt"  # the paper's table, by name

# The strategies train-probe tries per class: the paper's three, and cheaper or cooler
# variants of them (a small model may answer better greedy than sampled).
CANDIDATES: dict[str, ClassStrategy] = {
    "diffadapt-normal": DifficultyTable().normal,
    "diffadapt-easy": DifficultyTable().easy,
    "diffadapt-hard": DifficultyTable().hard,
    "greedy": ClassStrategy(temperature=0.0, top_p=1.0, budget_fraction=1.0),
    "greedy-0.4-budget": ClassStrategy(temperature=0.0, top_p=1.0, budget_fraction=0.4),
    "greedy-direct-0.4-budget": ClassStrategy(
        temperature=0.0, top_p=1.0, budget_fraction=0.4, instruction="Answer directly, without explanation."
    ),
    "cool-0.5": ClassStrategy(temperature=0.5, top_p=0.95, budget_fraction=1.0),
}


def choose_table(
    scores: dict[str, dict[str, tuple[float, float]]], tolerance: float
) -> tuple[DifficultyTable, dict[str, str]]:
    """`scores`: class -> candidate -> (accuracy, tokens per answer) on that class's
    training problems. Per class, the fewest-token candidate whose accuracy is within
    `tolerance` of the best (ties: the higher accuracy, then CANDIDATES' order); a class
    without problems keeps the paper's strategy. Returns the table and each class's choice."""
    paper = DifficultyTable()
    chosen, names = {}, {}
    for name in ("easy", "normal", "hard"):
        by_candidate = scores.get(name) or {}
        if not by_candidate:
            chosen[name], names[name] = paper.for_class(name), f"{DIFFADAPT}-{name}"
            continue
        best = max(accuracy for accuracy, _ in by_candidate.values())
        order = list(CANDIDATES)
        eligible = [c for c, (accuracy, _) in by_candidate.items() if accuracy >= best - tolerance - 1e-12]
        pick = min(eligible, key=lambda c: (by_candidate[c][1], -by_candidate[c][0], order.index(c)))
        chosen[name], names[name] = CANDIDATES[pick], pick
    return DifficultyTable(**chosen), names


def load_table(path: str | Path | None, default: DifficultyTable | None = None) -> DifficultyTable:
    """`default` (else the paper's table) with the file's classes and fields over it;
    the name `diffadapt` is the paper's table."""
    if path == DIFFADAPT:
        return DifficultyTable()
    if path is None:
        return default or DifficultyTable()
    try:
        overrides = json.loads(Path(path).read_text())
        defaults = DifficultyTable().model_dump()
        if not isinstance(overrides, dict):
            raise ValueError("expected a JSON object of classes")
        merged = {name: {**defaults.get(name, {}), **fields} for name, fields in overrides.items()}
        return DifficultyTable.model_validate({**defaults, **merged})
    except (OSError, ValueError, TypeError, ValidationError) as error:
        raise ValueError(f"cannot read difficulty table {path}: {error}") from error
