"""Trace signals, the answer's token span, and the weighted vote's stopping, by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from entropy_serve.server.strategies.confidence import (
    WeightedVote,
    answer_span,
    confidence_weight,
    highest_window_entropy,
    majority_probability,
    trace_signals,
    uncertainty,
)
from entropy_serve.server.strategies.stopping import beta_majority_probability
from entropy_serve.tasks.voting import EXACT


def test_answer_span_is_the_last_occurrence_s_tokens():
    texts = ["3", " +", " 4", " =", " 7", ".", " So", " 7", "!"]
    assert answer_span(texts, "7") == range(7, 8)
    assert answer_span(["The", " answer", " is", " 1", "2", "3"], "123") == range(3, 6)
    assert answer_span(["x", "12", "3y"], "23") == range(1, 3)  # tokens that overlap the answer
    assert answer_span(["no", " number"], "5") is None
    assert answer_span(["5"], None) is None


def test_signals_by_hand():
    entropies = [0.0, 1.0, 3.0, 0.5, 0.5]
    signals = trace_signals(
        entropies, range(3, 5), window=2, tail=2, top_logprobs=[[-0.1, -2.0], [-0.5, -1.5]], top_k=2
    )
    assert signals["mean"] == pytest.approx(-1.0)
    assert signals["lowest"] == pytest.approx(-2.0)  # windows: 0.5, 2.0, 1.75, 0.5
    assert signals["tail"] == pytest.approx(-0.5)
    assert signals["answer"] == pytest.approx(-0.5)
    assert signals["topk"] == pytest.approx((2.1 / 2 + 2.0 / 2) / 2)
    assert trace_signals(entropies, None, window=2)["answer"] is None
    assert trace_signals(entropies, None, window=2)["topk"] is None


def test_uncertainty_by_signal():
    entropies = [0.0, 1.0, 3.0, 0.5, 0.5]
    assert uncertainty("answer", entropies, range(2, 3), 2) == 3.0
    assert uncertainty("answer", entropies, None, 2) == 1.0  # no span: the whole trace's mean
    assert uncertainty("mean", entropies, range(2, 3), 2) == 1.0
    assert uncertainty("lowest", entropies, None, 2) == 2.0
    assert highest_window_entropy([0.2, 0.4], 8) == pytest.approx(0.3)  # shorter than the window: the mean
    with pytest.raises(ValueError):
        uncertainty("loudness", entropies, None, 2)


def test_confidence_weight_is_in_zero_one():
    assert confidence_weight([0.0, 0.0], 4) == 1.0
    assert confidence_weight([1.0, 3.0, 1.0], 1) == pytest.approx(math.exp(-3.0))


@pytest.mark.parametrize("a,b", [(0, 0), (3, 0), (4, 1), (7, 7), (2.5, 0.3), (0.9, 0.0), (12.25, 4.5)])
def test_majority_probability_is_the_beta_tail(a, b):
    assert majority_probability(a, b) == pytest.approx(stats.beta.sf(0.5, a + 1, b + 1), abs=1e-12)
    if float(a).is_integer() and float(b).is_integer():
        assert majority_probability(a, b) == pytest.approx(beta_majority_probability(int(a), int(b)), abs=1e-12)


def test_weighted_vote_decides_on_weight_not_count():
    tally = WeightedVote()
    for answer, weight in [("5", 1.0), ("5", 1.0), ("5", 1.0), ("5", 1.0), ("6", 0.05)]:
        tally.add(answer, weight)
    assert tally.decided(0.95, num_left=8).startswith("decided")  # 4 : 0.05 -> 0.96
    tally = WeightedVote()
    for answer, weight in [("5", 0.2), ("5", 0.2), ("6", 1.0)]:
        tally.add(answer, weight)
    assert tally.result().winner == "6"
    assert tally.decided(0.95, num_left=8) is None


def test_futility_stops_when_the_traces_left_cannot_overturn():
    tally = WeightedVote()
    for answer, weight in [("5", 1.0), ("5", 1.0), ("5", 0.5), ("6", 0.9)]:
        tally.add(answer, weight)
    assert tally.decided(0.99, num_left=2) is None  # 2.5 - 0.9 = 1.6 < 2
    assert tally.decided(0.99, num_left=1).startswith("futility")


def test_weighted_vote_uses_the_given_comparison():
    tally = WeightedVote(EXACT)
    for answer in ["7", "7.0", "7", "7.0"]:
        tally.add(answer, 1.0)
    assert tally.result().agreement == 0.5
    assert tally.decided(0.9, num_left=0) is None
    with pytest.raises(ValueError):
        tally.add("7", 1.5)
    tally = WeightedVote()
    tally.add(None, 1.0)
    assert tally.decided(0.5 + 1e-9, num_left=0) is None  # no answer, no vote


def test_a_scattered_vote_stops_at_min_agreement():
    tally = WeightedVote()
    for answer in ["1", "2", "3", "1", "4"]:
        tally.add(answer, 1.0)
    assert tally.decided(0.95, num_left=8) is None  # the leader holds 0.4
    assert tally.decided(0.95, num_left=8, min_agreement=0.5).startswith("scattered")
    assert tally.decided(0.95, num_left=8, min_agreement=0.4) is None


def test_cisc_weights_are_a_softmax_of_self_certainty_scaled_to_the_surest():
    tally = WeightedVote(relative_temperature=0.5)
    for answer, certainty in [("5", 10.0), ("6", 10.5), ("6", 9.0), ("5", 10.5)]:
        tally.add(answer, certainty)
    expected = [math.exp(-1.0), 1.0, math.exp(-3.0), 1.0]
    assert tally.weights == pytest.approx(expected)
    # Softmax-weighted voting's winner (CISC): the same as these weights'.
    softmax = [math.exp(c / 0.5) for c in (10.0, 10.5, 9.0, 10.5)]
    assert tally.result().winner == ("5" if softmax[0] + softmax[3] > softmax[1] + softmax[2] else "6") == "5"
    tally.add("6", 12.0)  # a surer trace rescales every weight
    assert max(tally.weights) == 1.0 and tally.weights[1] == pytest.approx(math.exp(-3.0))


def test_escalate_scores_by_weighting():
    from entropy_serve.server.protocol.extensions import Escalate
    from entropy_serve.server.strategies.confidence import trace_score, weighted_vote

    entropies, certainties = [0.0, 1.0, 3.0], [9.0, 8.0, 4.0]
    confidence = Escalate(name="escalate", window=1)
    assert trace_score(confidence, entropies, certainties) == pytest.approx(math.exp(-3.0))
    assert weighted_vote(confidence).relative_temperature is None
    cisc = Escalate(name="escalate", weighting="self_certainty", cisc_temperature=0.25)
    assert trace_score(cisc, entropies, certainties) == 7.0 and weighted_vote(cisc).relative_temperature == 0.25
    assert trace_score(Escalate(name="escalate", weighting="uniform"), entropies, certainties) == 1.0
