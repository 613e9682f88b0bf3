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
  log-probabilities (needs them from the engine): a peaked distribution has large C_t;
- self_certainty: the mean over tokens of KL(uniform || p) (Kang et al. 2025), which
  the engine measures beside the entropy (samplers/entropy.py).
Token offsets come from each token's own text (`token_texts`), which is exact when
tokens are whole characters (byte-level BPE on ASCII); a multi-byte character split
over tokens may move the answer's span by a token.

The weighted vote's stopping (escalate): with a and b the weights of the two leading
answers, each trace weighing at most 1 (exp(-H) of its least sure window; or CISC's
exp((c - c_max) / tau) over the traces' mean self-certainties c, Taubenfeld et al.
2025, whose winner is softmax(c / tau)-weighted voting's), stop when P(p > 1/2) under p ~ Beta(a+1, b+1)
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
from entropy_serve.tasks.answers import equivalent
from entropy_serve.tasks.voting import VoteResult, vote

SIGNALS = ("mean", "lowest", "tail", "answer", "topk", "self_certainty")
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
    self_certainty_nats: Sequence[float] | None = None,
) -> dict[str, float | None]:
    """Every signal of one trace, as confidences (module doc); None where not defined."""
    signals: dict[str, float | None] = {
        "mean": -mean(entropies_nats),
        "lowest": -highest_window_entropy(entropies_nats, window),
        "tail": -mean(entropies_nats[-tail:]),
        "answer": -mean([entropies_nats[i] for i in span]) if span is not None else None,
        "topk": mean([topk_confidence(position, top_k) for position in top_logprobs]) if top_logprobs else None,
        "self_certainty": mean(self_certainty_nats) if self_certainty_nats else None,
    }
    return signals


def confidence_weight(entropies_nats: Sequence[float], window: int) -> float:
    """A trace's vote weight in (0, 1]: exp(-its highest window mean entropy)."""
    return math.exp(-highest_window_entropy(entropies_nats, window))


def trace_score(strategy, entropies_nats: Sequence[float], self_certainty_nats: Sequence[float]) -> float:
    """A trace's score in an escalate strategy's weighted vote (`weighted_vote`)."""
    if strategy.weighting == "confidence":
        return confidence_weight(entropies_nats, strategy.window)
    if strategy.weighting == "self_certainty":
        return mean(self_certainty_nats)
    return 1.0


def weighted_vote(strategy, same: Callable[[str, str], bool] = equivalent) -> WeightedVote:
    """The escalate strategy's vote: scores are weights, or CISC's confidences."""
    relative = strategy.cisc_temperature if strategy.weighting == "self_certainty" else None
    return WeightedVote(same, relative)


def majority_probability(a: float, b: float) -> float:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1), for real (weighted) counts a and b."""
    if a < 0 or b < 0:
        raise ValueError(f"weighted counts must be >= 0, got {a}, {b}")
    return float(1.0 - betainc(a + 1.0, b + 1.0, 0.5))


@dataclass
class WeightedVote:
    """The answers so far with their scores, and whether the vote is decided (module
    doc). A score is the trace's weight, in [0, 1]; with `relative_temperature` tau it
    is a confidence, and the weights are exp((score - max score) / tau), recomputed as
    traces arrive. `same` is the final vote's comparison (leaves.answers_agree)."""

    same: Callable[[str, str], bool] = equivalent
    relative_temperature: float | None = None
    answers: list[str | None] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, answer: str | None, score: float) -> None:
        if self.relative_temperature is None and not 0.0 <= score <= 1.0:
            raise ValueError(f"a trace weighs in [0, 1], got {score}")
        self.answers.append(answer)
        self.scores.append(score)

    @property
    def weights(self) -> list[float]:
        if self.relative_temperature is None:
            return list(self.scores)
        top = max(self.scores)
        return [math.exp((score - top) / self.relative_temperature) for score in self.scores]

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
            return (
                f"decided: P(leading answer is the majority) = {probability:.4f} >= {stop_confidence} "
                f"(weights {a:.2f}:{b:.2f})"
            )
        if a - b > num_left:
            return f"futility: the {num_left} traces left cannot overturn the leader (weights {a:.2f}:{b:.2f})"
        if result.agreement < min_agreement:
            return f"scattered: the leader holds {result.agreement:.3f} < {min_agreement} of the vote"
        return None
