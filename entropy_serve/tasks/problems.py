"""Problems to sample answers for: the built-in arithmetic levels (seeded) or a
question/answer JSONL file. `train-probe`, `tune-strategies` and `train-policy` load them here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from entropy_serve.tasks import arithmetic
from entropy_serve.tasks.jsonl import load_jsonl

TRAINING_LEVELS = ("add-1digit", "add-2digit", "add-3digit")


@dataclass(frozen=True)
class TrainingProblem:
    question: str
    answer: str


def load_problems(
    task: str, num_problems: int, seed: int, levels: tuple[str, ...] = TRAINING_LEVELS
) -> list[TrainingProblem]:
    """The built-in arithmetic `levels` (seeded) or the first problems of a JSONL file."""
    if task == "arithmetic":
        levels = arithmetic.levels_named(levels)
        return [TrainingProblem(p.question, p.answer) for p in arithmetic.generate(num_problems, seed, levels)]
    path = Path(task)
    if not path.is_file():
        raise ValueError(f"--task: {task!r} is neither 'arithmetic' nor a JSONL file")
    items = load_jsonl(path)
    if len(items) < num_problems:
        raise ValueError(f"--task {task}: {len(items)} problems, fewer than --problems {num_problems}")
    return [TrainingProblem(item.question, item.answer) for item in items[:num_problems]]
