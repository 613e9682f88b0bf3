"""How sure a trace is, from its exact per-token entropies, and when a weighted vote is
decided. Pure functions over numbers and strings, shared by the escalate strategy, the
tuning replay (trainer/strategy_tuning.py) and benchmarks/strategies.py.

Trace signals, each a confidence (higher: surer), so that one AUROC convention holds:
- mean: -mean H over the trace;
- lowest: -max over windows of the mean H of `window` consecutive tokens (DeepConf's
  lowest group confidence with C_t = -H_t);
- tail: -mean H of the last `tail` tokens (DeepConf's tail confidence);
- answer: -mean H of the tokens that spell the final answer (its last occurrence);
- topk: the mean over tokens of DeepConf's C_t = -(1/k) sum of the k highest
  log-probabilities (needs them from the engine), negated: a peaked distribution has
  large C_t, and the signal is kept in that sense (higher: surer).
Token offsets come from each token's own text (`token_texts`), which is exact when
tokens are whole characters (byte-level BPE on ASCII); a multi-byte character split
over tokens may move the answer's span by a token.

The weighted vote's stopping (escalate): with a and b the weights of the two leading
answers, each trace weighing at most 1, stop when P(p > 1/2) under p ~ Beta(a+1, b+1)
reaches the confidence (stopping.py's Beta rule over weighted counts); or when the
traces left, at weight 1 each, cannot overturn the leader (futility); or when the
leader holds less than `min_agreement` of the weight (the answers scatter: on problems
a model cannot do, more samples rarely find a majority, and they cost the most).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scipy.special import betainc

from entropy_serve.server.strategies.stopping import group_confidences, topk_confidence
from entropy_serve.server.strategies.voting import VoteResult, vote
from entropy_serve.tasks.answers import equivalent

SIGNALS = ("mean", "lowest", "tail", "answer", "topk")
DEFAULT_TAIL_TOKENS = 16


def answer_span(token_texts: Sequence[str], answer: str | None) -> range | None:
    """The tokens that spell `answer`'s last occurrence in the trace, or None when the
    trace has no answer or does not spell it as extracted."""
    if not answer:
        return None
    text = "".join(token_texts)
    start = text.rfind(answer)
    if start < 0:
        return None
    end, ends, total = start + len(answer), [], 0
    for piece in token_texts:
        total += len(piece)
        ends.append(total)
    first = next(i for i, e in enumerate(ends) if e > start)
    last = next(i for i, e in enumerate(ends) if e >= end)
    return range(first, last + 1)


def highest_window_entropy(entropies_nats: Sequence[float], window: int) -> float:
    """The largest mean entropy of `window` consecutive tokens (of all, when shorter)."""
    groups = group_confidences([-h for h in entropies_nats], window)
    return -min(groups) if groups else 0.0


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def uncertainty(signal: str, entropies_nats: Sequence[float], span: range | None, window: int) -> float:
    """A trace's entropy by `signal` (escalate's: answer, mean, lowest), in nats; the
    answer signal falls back to the whole trace's mean when the answer has no span."""
    if signal == "answer":
        return mean([entropies_nats[i] for i in span]) if span is not None else mean(entropies_nats)
    if signal == "mean":
        return mean(entropies_nats)
    if signal == "lowest":
        return highest_window_entropy(entropies_nats, window)
    raise ValueError(f"unknown signal {signal!r}; one of answer, mean, lowest")


def trace_signals(
    entropies_nats: Sequence[float],
    span: range | None,
    window: int,
    tail: int = DEFAULT_TAIL_TOKENS,
    top_logprobs: Sequence[Sequence[float]] | None = None,
    top_k: int = 20,
) -> dict[str, float | None]:
    """Every signal of one trace, as confidences (module doc); None where not defined."""
    signals: dict[str, float | None] = {
        "mean": -mean(entropies_nats),
        "lowest": -highest_window_entropy(entropies_nats, window),
        "tail": -mean(entropies_nats[-tail:]),
        "answer": -mean([entropies_nats[i] for i in span]) if span is not None else None,
        "topk": None,
    }
    if top_logprobs:
        signals["topk"] = mean([topk_confidence(position, top_k) for position in top_logprobs])
    return signals


def confidence_weight(entropies_nats: Sequence[float], window: int) -> float:
    """A trace's vote weight in (0, 1]: exp(-its highest window mean entropy)."""
    return math.exp(-highest_window_entropy(entropies_nats, window))


def majority_probability(a: float, b: float) -> float:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1), for real (weighted) counts a and b."""
    if a < 0 or b < 0:
        raise ValueError(f"weighted counts must be >= 0, got {a}, {b}")
    return float(1.0 - betainc(a + 1.0, b + 1.0, 0.5))


@dataclass
class WeightedVote:
    """The answers so far with their weights (each at most 1), and whether the vote is
    decided (module doc). `same` is the final vote's comparison (leaves.answers_agree)."""

    same: Callable[[str, str], bool] = equivalent
    answers: list[str | None] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def add(self, answer: str | None, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"a trace weighs in [0, 1], got {weight}")
        self.answers.append(answer)
        self.weights.append(weight)

    def result(self) -> VoteResult:
        return vote(self.answers, weights=self.weights, same=self.same)

    def decided(self, stop_confidence: float, num_left: int, min_agreement: float = 0.0) -> str | None:
        """Why sampling can stop, or None to sample on."""
        result = self.result()
        weights = list(result.table.values()) + [0.0, 0.0]
        a, b = weights[0], weights[1]
        if a <= 0:
            return None
        probability = majority_probability(a, b)
        if probability >= stop_confidence:
            return f"decided: P(leading answer is the majority) = {probability:.4f} >= {stop_confidence} (weights {a:.2f}:{b:.2f})"
        if a - b > num_left:
            return f"futility: the {num_left} traces left cannot overturn the leader (weights {a:.2f}:{b:.2f})"
        if result.agreement < min_agreement:
            return f"scattered: the leader holds {result.agreement:.3f} < {min_agreement} of the vote"
        return None
