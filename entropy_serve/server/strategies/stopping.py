"""When to stop sampling: vote-level rules over the answers so far, and DeepConf's
trace-level confidence watch. Pure functions over answers and numbers.

Vote level: a strategy samples its leaves in waves and, after each, asks its rule
whether the vote is decided (`vote_decided` -> a reason, or None to go on):
- beta (Adaptive-Consistency, Aggarwal et al. 2023): with a and b the votes of the two
  leading answers, stop when P(p > 1/2 | a, b) >= confidence under p ~ Beta(a+1, b+1).
  For integer parameters that probability is a binomial tail,
  P(Bin(a+b+1, 1/2) <= a), computed exactly (`beta_majority_probability`). Four
  unanimous answers are the fewest that reach the default 0.95 (1 - 2^-5 = 0.969; three
  give 0.9375).
- esc (Early-Stopping Self-Consistency, Li et al. 2024): stop when the latest `window`
  answers are one answer (a leaf without an answer agrees with nothing).
- consensus (DeepConf's adaptive sampling): stop when the winner's share of the
  (confidence-weighted) vote reaches `confidence`.

Trace level (DeepConf online, Fu et al. 2025). Each token has a confidence: `topk`,
C_t = -(1/k) sum of the k highest log-probabilities of the model's distribution there
(DeepConf's own measure; a peaked distribution gives a large C), or `entropy`,
C_t = -H_t with the exact entropy this server already measures (no log-probabilities
to ship). A trace's group confidence at token t is the mean of the last `window` token
confidences. Warm-up traces are sampled whole; their lowest group confidences set the
threshold at the percentile that keeps a fraction `keep` of them
(`stop_threshold`: keep 0.9 is DeepConf-high, 0.1 DeepConf-low). A later trace whose
group confidence falls below it is stopped (`TraceWatch`); the vote weighs each whole
trace by its lowest group confidence (`trace_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import get_args

import numpy as np

from entropy_serve.server.protocol.extensions import ConfidenceMeasure, EarlyStop
from entropy_serve.tasks.answers import equivalent
from entropy_serve.tasks.voting import vote

CONFIDENCE_MEASURES = get_args(ConfidenceMeasure)


# -- vote level ------------------------------------------------------------------------


def beta_majority_probability(a: int, b: int) -> float:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1): the probability that the leading answer
    (a votes) would keep more than half of the vote between the two leaders (b votes for
    the runner-up) however many more leaves were sampled."""
    if a < 0 or b < 0:
        raise ValueError(f"vote counts must be >= 0, got {a}, {b}")
    n = a + b + 1
    return math.fsum(math.comb(n, i) for i in range(a + 1)) / 2**n


Same = Callable[[str, str], bool]  # when two answers are one vote (leaves.answers_agree)


def answer_counts(answers: Sequence[str | None], same: Same = equivalent) -> list[int]:
    """Votes per group of answers that are `same`, most first (leaves without one cast none)."""
    return [round(count) for count in vote(list(answers), same=same).table.values()]


def beta_decided(answers: Sequence[str | None], confidence: float, same: Same = equivalent) -> str | None:
    counts = answer_counts(answers, same) + [0, 0]
    a, b = counts[0], counts[1]
    if a == 0:
        return None
    probability = beta_majority_probability(a, b)
    if probability >= confidence:
        return f"beta: P(leading answer is the majority) = {probability:.4f} >= {confidence} with votes {a}:{b}"
    return None


def esc_decided(answers: Sequence[str | None], window: int, same: Same = equivalent) -> str | None:
    latest = list(answers[-window:])
    if len(latest) < window or any(answer is None for answer in latest):
        return None
    if all(same(latest[0], other) for other in latest[1:]):
        return f"esc: the latest {window} answers agree"
    return None


def consensus_decided(table: dict[str, float], confidence: float) -> str | None:
    """`table`: the vote's weight per answer group, heaviest first (voting.VoteResult)."""
    total = sum(table.values())
    if total <= 0:
        return None
    share = next(iter(table.values())) / total
    if share >= confidence:
        return f"consensus: the winner holds {share:.3f} >= {confidence} of the vote"
    return None


# -- trace level -----------------------------------------------------------------------


def topk_confidence(top_logprobs: Sequence[float], k: int) -> float:
    """C = -(1/k) x the sum of the k highest log-probabilities (fewer when fewer are given)."""
    highest = sorted(top_logprobs, reverse=True)[:k]
    if not highest:
        raise ValueError("topk confidence needs at least one log-probability")
    return -math.fsum(highest) / len(highest)


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """The mean of every `window` consecutive token confidences (one value, the mean of
    all, for a trace shorter than the window; none for an empty trace)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    values = np.asarray(confidences, dtype=np.float64)
    if len(values) == 0:
        return []
    if len(values) <= window:
        return [float(values.mean())]
    sums = np.convolve(values, np.ones(window), mode="valid")  # [len - window + 1]
    return (sums / window).tolist()


def lowest_group_confidence(confidences: Sequence[float], window: int) -> float | None:
    groups = group_confidences(confidences, window)
    return min(groups) if groups else None


def stop_threshold(warmup_lowest: Sequence[float], keep: float) -> float:
    """The group confidence below which a trace is stopped: the percentile of the
    warm-up traces' lowest group confidences that a fraction `keep` of them reach."""
    if not warmup_lowest:
        raise ValueError("the threshold needs at least one warm-up trace")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return float(np.percentile(np.asarray(warmup_lowest, dtype=np.float64), 100.0 * (1.0 - keep)))


def trace_weight(lowest_confidence: float, measure: str) -> float:
    """A whole trace's vote weight, > 0: topk confidences are already positive; entropy
    confidences (-H) are mapped through exp, as entropy_weighted voting does."""
    if measure == "topk":
        return max(lowest_confidence, 1e-9)
    if measure == "entropy":
        return math.exp(lowest_confidence)
    raise ValueError(f"unknown confidence measure {measure!r}; one of {CONFIDENCE_MEASURES}")


def trace_weights(lowest_of: Sequence[float | None], measure: str) -> list[float]:
    """Each trace's vote weight from its lowest group confidence; a stopped trace (None)
    weighs 0: it has no answer anyway."""
    return [0.0 if c is None else trace_weight(c, measure) for c in lowest_of]


class TraceWatch:
    """One trace's online check: `add` token confidences as they stream; it returns True
    once the group confidence (mean of the last `window`) falls below `threshold`. No
    verdict before `window` tokens, as in DeepConf."""

    def __init__(self, window: int, threshold: float):
        self.window = window
        self.threshold = threshold
        self.confidences: list[float] = []
        self.stopped_at: int | None = None  # tokens seen when it fell below

    def add(self, confidences: Sequence[float]) -> bool:
        for value in confidences:
            self.confidences.append(value)
            if self.stopped_at is None and len(self.confidences) >= self.window:
                group = math.fsum(self.confidences[-self.window :]) / self.window
                if group < self.threshold:
                    self.stopped_at = len(self.confidences)
        return self.stopped_at is not None


def vote_decided(rule: EarlyStop, answers: Sequence[str | None], same: Same) -> str | None:
    """Why the vote over `answers` is decided under `rule`, or None to sample on. `same`
    is the final vote's comparison (leaves.answers_agree): a rule must not count two
    answers as one vote that the vote itself would split."""
    if rule.rule == "beta":
        return beta_decided(answers, rule.confidence, same)
    if rule.rule == "esc":
        return esc_decided(answers, rule.window, same)
    raise ValueError(f"unknown early-stop rule {rule.rule!r}")
