"""Seeded arithmetic problems with exact answers, across difficulty levels.

A level is (digits per operand, operations allowed, number of operations, the question's
wording: the answer alone, or the work shown, for long answers). The default
levels span what SmolLM2-135M-Instruct can and cannot do (greedy, addition: ~93% with
1-digit operands, ~27% with 2-digit, ~0% with 3-digit), so probes and voting have easy,
medium and impossible problems to work on. Problems are generated from an explicit
`random.Random(seed)`: the same seed gives the same problems everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


# Phrasing matters to a 135M model: on 30 seeded problems per level, greedy, this one
# scored 73% / 20% / 7% (1-, 2-, 3-digit addition) against 57% / 20% / 7% for
# "What is a + b? Answer with just the number."
QUESTION_TEMPLATE = "Compute {expression}. Reply with only the result."
# Levels whose answers show the work: ~60-token answers instead of ~5, where forks can
# share long prefixes. Of four phrasings tried on 16 seeded three-term 1-digit sums
# (greedy, SmolLM2-135M-Instruct), this one scored best (25%, 65 tokens on average);
# "step by step" and "one at a time, saying each running total" wandered more.
WORK_SHOWN_TEMPLATE = "Compute {expression}. Show your work, then give the final answer."


@dataclass(frozen=True)
class Level:
    name: str
    digits: int  # digits of each operand
    operations: tuple[str, ...] = ("+",)
    num_operations: int = 1
    template: str = QUESTION_TEMPLATE  # the question, around the expression


DEFAULT_LEVELS = (
    Level("add-1digit", digits=1),
    Level("add-2digit", digits=2),
    Level("add-3digit", digits=3),
    Level("mixed-2digit-2ops", digits=2, operations=("+", "-"), num_operations=2),
    Level("mul-2digit", digits=2, operations=("*",)),
    Level("work-1digit-2ops", digits=1, num_operations=2, template=WORK_SHOWN_TEMPLATE),
)


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # exact, as an integer string
    level: str
    expression: str = ""  # the bare arithmetic, e.g. "12 + 9"


def make_problem(rng: random.Random, level: Level) -> Problem:
    low, high = (0 if level.digits == 1 else 10 ** (level.digits - 1)), 10**level.digits - 1
    operands = [rng.randint(low, high) for _ in range(level.num_operations + 1)]
    operators = [rng.choice(level.operations) for _ in range(level.num_operations)]
    expression = str(operands[0])
    value = operands[0]
    for operator, operand in zip(operators, operands[1:]):
        # Left to right; every operator binds the same, so the text reads unambiguously
        # only with one kind of operation or with + and - (the default levels).
        value = OPERATIONS[operator](value, operand)
        expression += f" {operator} {operand}"
    return Problem(level.template.format(expression=expression), str(value), level.name, expression)


def levels_named(names: list[str] | tuple[str, ...], levels: tuple[Level, ...] = DEFAULT_LEVELS) -> tuple[Level, ...]:
    """The levels with these names, in `levels`' order; an unknown name is an error."""
    unknown = set(names) - {level.name for level in levels}
    if unknown:
        raise ValueError(f"unknown levels {sorted(unknown)}; known: {[level.name for level in levels]}")
    return tuple(level for level in levels if level.name in names)


def generate(num_problems: int, seed: int, levels: tuple[Level, ...] = DEFAULT_LEVELS) -> list[Problem]:
    """`num_problems` problems, levels in turn, from `random.Random(seed)`."""
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    if not levels:
        raise ValueError("at least one level is needed")
    for level in levels:
        if level.digits < 1 or level.num_operations < 1 or not level.operations:
            raise ValueError(f"invalid level {level}")
        unknown = set(level.operations) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"level {level.name}: unknown operations {sorted(unknown)}")
        if "*" in level.operations and len(set(level.operations)) > 1:
            raise ValueError(f"level {level.name}: mixing * with +/- would need precedence rules")
    rng = random.Random(seed)
    return [make_problem(rng, levels[i % len(levels)]) for i in range(num_problems)]
