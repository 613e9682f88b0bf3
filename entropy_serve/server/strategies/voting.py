"""Majority voting over extracted answers, plain or entropy-weighted.

Answers are grouped by equivalence (tasks/answers.py: "0.5" and "\\frac{1}{2}" are one
group), each group named by its first member. A leaf with no extractable answer (None)
counts as a leaf but casts no vote.
- majority: every answer weighs 1;
- entropy_weighted: an answer weighs exp(-mean token entropy of its completion), so
  more confident completions count more (confidence-weighted voting).
The winner is the heaviest group; ties go to the group whose first member came first,
so the result does not depend on dict order or on luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from entropy_serve.tasks.answers import equivalent

VOTE_MODES = ("majority", "entropy_weighted")


@dataclass(frozen=True)
class VoteResult:
    winner: str | None  # None when no leaf had an answer
    winner_leaves: list[int]  # indices of the leaves whose answer won
    table: dict[str, float]  # group name -> total weight, heaviest first
    num_leaves: int
    agreement: float  # the winner's share of the total weight (0 without votes)


def vote(answers: list[str | None], mean_entropies_nats: list[float] | None = None, mode: str = "majority") -> VoteResult:
    if mode not in VOTE_MODES:
        raise ValueError(f"vote: unknown mode {mode!r}; one of {VOTE_MODES}")
    if mode == "entropy_weighted":
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
            if equivalent(name, answer):
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
