"""Learn deepconf's and escalate's settings per temperature by replaying sampled traces.

Order:
1. traces (trainer/tune_strategies.py): for every training problem, one greedy answer
   and `num_traces` answers sampled at each temperature, with exact per-token
   entropies and each token's text;
2. replay: each candidate setting of each strategy answers every problem from those
   traces (`replay_escalate`, `replay_deepconf`: the strategies' decisions, made by the
   same pure functions the server runs, on traces already sampled), giving its
   accuracy and generated tokens per problem; plain decoding gives the frontier:
   greedy, and self-consistency over the first k traces (k = 1, 2, 4, ...);
3. choice, per strategy and temperature: the most accurate setting that spends at
   most `token_share` of self-consistency's tokens at the full budget (ties: the
   cheaper), saved as strategy_defaults.json (server/strategies/defaults.py).

What the replay does not model: deepconf's abort lands an engine step or so after the
token that triggered it, so a stopped trace costs a token or two more on the server
than here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from entropy_serve.server.protocol.extensions import DeepConf, Escalate
from entropy_serve.server.strategies.confidence import answer_span, trace_score, uncertainty, weighted_vote
from entropy_serve.server.strategies.defaults import TUNED_FIELDS, StrategyDefaults, TemperatureDefaults
from entropy_serve.server.strategies.stopping import (
    TraceWatch,
    consensus_decided,
    lowest_group_confidence,
    stop_threshold,
    trace_weights,
)
from entropy_serve.tasks.answers import equivalent, extract_answer
from entropy_serve.tasks.voting import vote

THRESHOLD_QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NEVER_NATS = 100.0  # escalate's largest threshold: answer greedily always
ESCALATE_GRID = {
    "signal": ("answer", "mean", "lowest"),
    "stop_confidence": (0.8, 0.9),
    "min_agreement": (0.0, 0.4, 0.55, 0.7),
    "wave": (4, 8),
    "weighting": ("confidence", "uniform", "self_certainty"),
    "window": (16,),
}
CISC_TEMPERATURES = (0.1, 0.5)  # nats: traces' mean self-certainties differ by tenths of a nat
DEEPCONF_GRID = {
    "confidence": ("entropy",),
    "window": (8, 16, 32),
    "keep": (0.1, 0.5, 0.9),
    "consensus": (0.8, 0.9, 0.95),
}


@dataclass(frozen=True)
class Trace:
    answer: str | None
    entropies_nats: tuple[float, ...]
    token_texts: tuple[str, ...]
    self_certainty_nats: tuple[float, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.entropies_nats)

    @property
    def span(self) -> range | None:
        return answer_span(self.token_texts, self.answer)


@dataclass(frozen=True)
class ProblemTraces:
    reference: str
    greedy: Trace
    pool: tuple[Trace, ...]  # sampled, in seed order


@dataclass(frozen=True)
class Score:
    accuracy: float
    tokens_per_problem: float


def trace_from_choice(choice: dict) -> Trace:
    """A trace from a chat choice as JSON (entropy and logprobs asked for)."""
    text = choice["message"]["content"] or ""
    return Trace(
        extract_answer(text),
        tuple(choice["entropy"]["model_entropy_nats"]),
        tuple(position["token"] for position in (choice.get("logprobs") or {}).get("content") or ()),
        tuple(choice["entropy"]["self_certainty_nats"]),
    )


# -- replay ----------------------------------------------------------------------------


def replay_escalate(problem: ProblemTraces, strategy: Escalate) -> tuple[str | None, int]:
    """escalate.run_escalate's decisions on these traces: (answer, generated tokens)."""
    greedy = problem.greedy

    def weight(trace: Trace) -> float:
        return trace_score(strategy, trace.entropies_nats, trace.self_certainty_nats)

    tally = weighted_vote(strategy)
    tally.add(greedy.answer, weight(greedy))
    tokens = greedy.num_tokens
    entropy = uncertainty(strategy.signal, greedy.entropies_nats, greedy.span, strategy.window)
    if greedy.answer is not None and entropy <= strategy.threshold_nats:
        return greedy.answer, tokens
    pool = problem.pool[: strategy.n]
    for start in range(0, len(pool), strategy.wave):
        wave = pool[start : start + strategy.wave]
        for trace in wave:
            tally.add(trace.answer, weight(trace))
            tokens += trace.num_tokens
        if tally.decided(strategy.stop_confidence, len(pool) - start - len(wave), strategy.min_agreement) is not None:
            break
    return tally.result().winner, tokens


def replay_deepconf(problem: ProblemTraces, strategy: DeepConf) -> tuple[str | None, int]:
    """deepconf.run_deepconf's decisions on these traces (entropy confidence)."""
    pool = problem.pool[: strategy.n]

    def confidences(trace: Trace) -> list[float]:
        return [-h for h in trace.entropies_nats]

    warmup = pool[: strategy.warmup]
    lowest_of = [lowest_group_confidence(confidences(t), strategy.window) for t in warmup]
    threshold = stop_threshold([c for c in lowest_of if c is not None] or [0.0], strategy.keep)
    answers = [t.answer for t in warmup]
    tokens = sum(t.num_tokens for t in warmup)
    for start in range(strategy.warmup, len(pool), strategy.wave):
        for trace in pool[start : start + strategy.wave]:
            watch = TraceWatch(strategy.window, threshold)
            if watch.add(confidences(trace)):
                answers.append(None)
                lowest_of.append(None)
                tokens += watch.stopped_at
            else:
                answers.append(trace.answer)
                lowest_of.append(lowest_group_confidence(confidences(trace), strategy.window))
                tokens += trace.num_tokens
        if (
            consensus_decided(vote(answers, weights=trace_weights(lowest_of, "entropy")).table, strategy.consensus)
            is not None
        ):
            break
    return vote(answers, weights=trace_weights(lowest_of, "entropy")).winner, tokens


def score(problems: list[ProblemTraces], answer: Callable[[ProblemTraces], tuple[str | None, int]]) -> Score:
    outcomes = [answer(problem) for problem in problems]
    correct = [equivalent(a, problem.reference) for (a, _), problem in zip(outcomes, problems, strict=True)]
    return Score(float(np.mean(correct)), float(np.mean([tokens for _, tokens in outcomes])))


def plain_decoding(problems: list[ProblemTraces]) -> dict[str, Score]:
    """The frontier a strategy must beat: greedy, and majority votes over the first k traces."""
    frontier = {"greedy": score(problems, lambda p: (p.greedy.answer, p.greedy.num_tokens))}
    num_traces = min(len(p.pool) for p in problems)
    k = 1
    while k <= num_traces:
        frontier[f"self_consistency_{k}"] = score(
            problems,
            lambda p, k=k: (vote([t.answer for t in p.pool[:k]]).winner, sum(t.num_tokens for t in p.pool[:k])),
        )
        k *= 2
    return frontier


# -- choice ----------------------------------------------------------------------------


def grid(fields: dict[str, tuple]) -> list[dict]:
    return [dict(zip(fields, values)) for values in itertools.product(*fields.values())]


def escalate_candidates(problems: list[ProblemTraces], num_traces: int) -> list[Escalate]:
    """The grid, with thresholds at quantiles of the greedy answers' own uncertainty."""
    candidates = []
    weighings = [{"weighting": w} for w in ESCALATE_GRID["weighting"] if w != "self_certainty"]
    weighings += [{"weighting": "self_certainty", "cisc_temperature": t} for t in CISC_TEMPERATURES]
    other = {name: values for name, values in ESCALATE_GRID.items() if name != "weighting"}
    for fields in (fields | weighing for fields in grid(other) for weighing in weighings):
        entropies = [
            uncertainty(fields["signal"], p.greedy.entropies_nats, p.greedy.span, fields["window"]) for p in problems
        ]
        thresholds = sorted({round(float(np.quantile(entropies, q)), 6) for q in THRESHOLD_QUANTILES} | {NEVER_NATS})
        candidates += [
            Escalate(name="escalate", n=num_traces, threshold_nats=min(t, NEVER_NATS), **fields) for t in thresholds
        ]
    return candidates


def choose(scored: list[tuple[object, Score]], max_tokens_per_problem: float) -> tuple[object, Score]:
    """The most accurate candidate within the token budget (ties: the cheaper; none
    within it: the cheapest)."""
    within = [item for item in scored if item[1].tokens_per_problem <= max_tokens_per_problem]
    if not within:
        return min(scored, key=lambda item: item[1].tokens_per_problem)
    return max(within, key=lambda item: (item[1].accuracy, -item[1].tokens_per_problem))


def tune_temperature(problems: list[ProblemTraces], temperature: float, token_share: float) -> TemperatureDefaults:
    """Step 3 at one temperature: the chosen fields, and every score they were chosen by."""
    num_traces = min(len(p.pool) for p in problems)
    if num_traces < 2:
        raise ValueError(f"tuning needs at least 2 traces per problem, got {num_traces}")
    frontier = plain_decoding(problems)
    full = frontier[
        max((k for k in frontier if k.startswith("self_consistency_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    ]
    budget = token_share * full.tokens_per_problem
    escalate = choose(
        [(c, score(problems, lambda p, c=c: replay_escalate(p, c))) for c in escalate_candidates(problems, num_traces)],
        budget,
    )
    warmup = min(DeepConf.model_fields["warmup"].default, num_traces - 1)
    deepconf_candidates = [
        DeepConf(name="deepconf", n=num_traces, warmup=warmup, **fields) for fields in grid(DEEPCONF_GRID)
    ]
    deepconf = choose([(c, score(problems, lambda p, c=c: replay_deepconf(p, c))) for c in deepconf_candidates], budget)
    training = {name: vars(s) for name, s in frontier.items()}
    training |= {"escalate": vars(escalate[1]), "deepconf": vars(deepconf[1]), "token_budget_per_problem": budget}
    return TemperatureDefaults(
        temperature=temperature,
        strategies={
            "escalate": escalate[0].model_dump(include=set(TUNED_FIELDS["escalate"])),
            "deepconf": deepconf[0].model_dump(include=set(TUNED_FIELDS["deepconf"])),
        },
        training=training,
    )


def tune(
    traces: dict[float, list[ProblemTraces]], token_share: float, model: str, fingerprint: str, made_by: str
) -> StrategyDefaults:
    return StrategyDefaults(
        model=model,
        fingerprint=fingerprint,
        made_by=made_by,
        temperatures=[tune_temperature(problems, t, token_share) for t, problems in sorted(traces.items())],
    ).check()
