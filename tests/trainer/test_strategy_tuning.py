"""The tuning replay on hand-made traces: the strategies' decisions, and the choice."""

from __future__ import annotations

import pytest

from entropy_serve.server.protocol.extensions import DeepConf, Escalate
from entropy_serve.trainer.strategy_tuning import (
    NEVER_NATS,
    ProblemTraces,
    Score,
    Trace,
    choose,
    plain_decoding,
    replay_deepconf,
    replay_escalate,
    trace_from_choice,
    tune_temperature,
)


def trace(answer: str | None, entropies: list[float], texts: list[str] | None = None) -> Trace:
    return Trace(answer, tuple(entropies), tuple(texts or ["x"] * len(entropies)))


SURE = trace("7", [0.0, 0.1, 0.0], ["3+4", "=", "7"])  # the answer token's entropy: 0.0
UNSURE = trace("8", [0.0, 0.0, 2.0], ["3+4", "=", "8"])  # 2.0


def problem(greedy: Trace, pool: list[Trace], reference: str = "7") -> ProblemTraces:
    return ProblemTraces(reference, greedy, tuple(pool))


def test_a_sure_greedy_answer_is_kept_and_costs_its_own_tokens():
    pool = [trace("9", [1.0] * 5)] * 8
    assert replay_escalate(problem(SURE, pool), Escalate(name="escalate", threshold_nats=0.5)) == ("7", 3)


def test_an_unsure_greedy_answer_escalates_until_the_vote_is_decided():
    pool = [trace("7", [0.0] * 4)] * 8  # weight 1 each
    strategy = Escalate(name="escalate", threshold_nats=0.5, n=8, wave=4, stop_confidence=0.9, window=2)
    # greedy "8" weighs exp(-1.0) (its highest 2-token window mean is 1.0); after one wave
    # "7" holds 4 : 0.37 -> P = 0.945 >= 0.9; the second wave is never sampled.
    answer, tokens = replay_escalate(problem(UNSURE, pool), strategy)
    assert (answer, tokens) == ("7", 3 + 4 * 4)
    never = strategy.model_copy(update={"threshold_nats": NEVER_NATS})
    assert replay_escalate(problem(UNSURE, pool), never) == ("8", 3)


def test_a_greedy_trace_without_an_answer_always_escalates():
    greedy = trace(None, [0.0, 0.0])
    pool = [trace("7", [0.0] * 4)] * 4
    strategy = Escalate(name="escalate", threshold_nats=NEVER_NATS, n=4, wave=4)
    assert replay_escalate(problem(greedy, pool), strategy) == ("7", 2 + 16)


def test_escalation_spends_the_budget_on_a_split_vote():
    pool = [trace(str(i % 2 + 7), [0.0] * 3) for i in range(8)]  # 7, 8, 7, 8, ...
    strategy = Escalate(name="escalate", threshold_nats=0.0, n=8, wave=4, weighting="uniform")
    answer, tokens = replay_escalate(problem(UNSURE, pool), strategy)
    assert tokens == 3 + 8 * 3 and answer == "8"  # greedy's 8 breaks the 4:4 tie


def test_deepconf_replay_stops_low_confidence_traces_and_weighs_the_rest():
    confident = trace("7", [0.1] * 8)
    doubtful = trace("9", [0.1, 0.1, 3.0, 3.0, 3.0, 0.1, 0.1, 0.1])
    pool = [confident, confident, doubtful, confident, doubtful, doubtful, doubtful, doubtful]
    strategy = DeepConf(
        name="deepconf", n=8, warmup=4, wave=4, confidence="entropy", window=2, keep=0.9, consensus=0.99
    )
    answer, tokens = replay_deepconf(problem(SURE, pool), strategy)
    # Warm-up: 3 confident, 1 doubtful, whole (32 tokens); the threshold keeps 90% of
    # them: between the doubtful trace's -3.0 and the others' -0.1. Every later doubtful
    # trace is stopped at its 4th token (the window -1.55 falls below it).
    assert answer == "7"
    assert tokens == 32 + 4 * 4


def test_plain_decoding_is_greedy_and_self_consistency_over_the_first_k():
    pool = [trace("8", [0.0]), trace("7", [0.0, 0.0]), trace("7", [0.0]), trace("7", [0.0])]
    frontier = plain_decoding([problem(SURE, pool)])
    assert frontier["greedy"] == Score(1.0, 3.0)
    assert frontier["self_consistency_1"] == Score(0.0, 1.0)
    assert frontier["self_consistency_2"] == Score(0.0, 3.0)  # a tie: the first answer wins
    assert frontier["self_consistency_4"] == Score(1.0, 5.0)
    assert set(frontier) == {"greedy", "self_consistency_1", "self_consistency_2", "self_consistency_4"}


def test_choose_is_the_most_accurate_within_the_budget():
    scored = [("a", Score(0.5, 10.0)), ("b", Score(0.6, 30.0)), ("c", Score(0.6, 20.0)), ("d", Score(0.9, 90.0))]
    assert choose(scored, 50.0)[0] == "c"
    assert choose(scored, 5.0)[0] == "a"  # none within: the cheapest


def test_tuning_chooses_learned_fields_and_records_its_scores():
    problems = [problem(SURE, [trace("7", [0.2] * 3)] * 4), problem(UNSURE, [trace("7", [0.2] * 3)] * 4)]
    entry = tune_temperature(problems, 0.5, token_share=1.0)  # budget: 12 tokens per problem
    fields = entry.strategies["escalate"]
    assert set(fields) == {
        "signal",
        "threshold_nats",
        "stop_confidence",
        "min_agreement",
        "wave",
        "weighting",
        "cisc_temperature",
        "window",
    }
    assert entry.training["escalate"]["accuracy"] == 1.0  # escalate only the unsure one
    assert entry.training["self_consistency_4"] == {"accuracy": 1.0, "tokens_per_problem": 12.0}
    assert entry.training["escalate"]["tokens_per_problem"] == (3 + 3 + 4 * 3) / 2
    assert entry.training["token_budget_per_problem"] == 12.0
    Escalate.model_validate({"name": "escalate", **fields})
    DeepConf.model_validate({"name": "deepconf", **entry.strategies["deepconf"]})


def test_trace_from_a_chat_choice():
    choice = {
        "message": {"content": "3 + 4 = 7"},
        "entropy": {"model_entropy_nats": [0.5, 0.1, 0.2], "self_certainty_nats": [3.0, 9.0, 8.0]},
        "logprobs": {"content": [{"token": "3 + 4"}, {"token": " ="}, {"token": " 7"}]},
    }
    parsed = trace_from_choice(choice)
    assert parsed.answer == "7" and parsed.span == range(2, 3) and parsed.num_tokens == 3
    assert parsed.self_certainty_nats == (3.0, 9.0, 8.0)
    with pytest.raises(KeyError):
        trace_from_choice({"message": {"content": "7"}})
