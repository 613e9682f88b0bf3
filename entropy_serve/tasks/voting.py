"""Majority voting over extracted answers, plain or entropy-weighted: pure functions the
server's strategies, the trainers and the benchmarks share.

Answers are grouped by equivalence (tasks/answers.py: "0.5" and "\\frac{1}{2}" are one
group), each group named by its first member. A leaf with no extractable answer (None)
counts as a leaf but casts no vote.
- majority: every answer weighs 1;
- entropy_weighted: an answer weighs exp(-mean token entropy of its completion), so
  more confident completions count more (confidence-weighted voting).
The winner is the heaviest group; ties go to the group whose first member came first,
so the result does not depend on dict order or on luck.
Under a structured-output constraint the answer is the whole output (`constrained_answer`):
JSON compared as parsed values (key order and whitespace do not split a vote), other
grammars' outputs as written, and groups are formed by equality, not by equivalence.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from entropy_serve.json_input import MalformedJSON, parse_json
from entropy_serve.tasks.answers import equivalent

if TYPE_CHECKING:
    from vllm.sampling_params import StructuredOutputsParams

VoteMode = Literal["majority", "entropy_weighted"]  # a strategy's `vote` (server/protocol/extensions.py)
VOTE_MODES = get_args(VoteMode)


@dataclass(frozen=True)
class VoteResult:
    winner: str | None  # None when no leaf had an answer
    winner_leaves: list[int]  # indices of the leaves whose answer won
    table: dict[str, float]  # group name -> total weight, heaviest first
    num_leaves: int
    agreement: float  # the winner's share of the total weight (0 without votes)


def constrained_answer(text: str, params: StructuredOutputsParams) -> str | None:
    """A constrained output's answer: JSON as its parsed value, canonically written (None
    when it does not parse: cut short); anything else as written, stripped."""
    if params.json is None and not params.json_object:
        return text.strip()
    try:
        value = parse_json(text)
    except MalformedJSON:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


EXACT: Callable[[str, str], bool] = operator.eq


def vote(
    answers: list[str | None],
    mean_entropies_nats: list[float] | None = None,
    mode: str = "majority",
    same: Callable[[str, str], bool] = equivalent,
    weights: list[float] | None = None,
) -> VoteResult:
    """`same`: when two answers are one group (default: tasks/answers.py's equivalence).
    `weights`: each answer's weight, given (deepconf's trace confidences), over `mode`."""
    if mode not in VOTE_MODES:
        raise ValueError(f"vote: unknown mode {mode!r}; one of {VOTE_MODES}")
    if weights is not None:
        if len(weights) != len(answers) or any(w < 0 for w in weights):
            raise ValueError("vote: weights need one non-negative weight per answer")
    elif mode == "entropy_weighted":
        if mean_entropies_nats is None or len(mean_entropies_nats) != len(answers):
            raise ValueError("vote: entropy_weighted needs one mean entropy per answer")
        weights = [math.exp(-h) for h in mean_entropies_nats]
    else:
        weights = [1.0] * len(answers)
    groups: list[tuple[str, list[int]]] = []  # (name, leaf indices), in order of first appearance
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        for name, members in groups:
            if same(name, answer):
                members.append(index)
                break
        else:
            groups.append((answer, [index]))
    totals = [(name, sum(weights[i] for i in members), members) for name, members in groups]
    # Stable sort: equal weights keep their order of first appearance.
    totals.sort(key=lambda item: -item[1])
    total_weight = sum(weight for _, weight, _ in totals)
    if not totals:
        return VoteResult(None, [], {}, len(answers), 0.0)
    name, weight, members = totals[0]
    return VoteResult(
        winner=name,
        winner_leaves=members,
        table={n: w for n, w, _ in totals},
        num_leaves=len(answers),
        agreement=weight / total_weight,
    )
