"""Stopping rules on hand-made vote sequences and confidence traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from entropy_serve.server.protocol.extensions import DeepConf, EarlyStop, EntropyFork, SelfConsistency
from entropy_serve.server.strategies import stopping
from entropy_serve.server.strategies.stopping import (
    TraceWatch,
    answer_counts,
    beta_majority_probability,
    consensus_decided,
    group_confidences,
    lowest_group_confidence,
    stop_threshold,
    topk_confidence,
    vote_decided,
)
from entropy_serve.tasks.answers import equivalent
from entropy_serve.tasks.voting import EXACT, vote


@pytest.mark.parametrize("a,b", [(0, 0), (1, 0), (3, 0), (4, 0), (4, 1), (5, 2), (7, 7), (2, 9), (30, 12)])
def test_beta_majority_probability_is_the_beta_tail(a, b):
    assert beta_majority_probability(a, b) == pytest.approx(stats.beta.sf(0.5, a + 1, b + 1), abs=1e-12)


def test_beta_by_hand():
    assert beta_majority_probability(0, 0) == 0.5
    assert beta_majority_probability(3, 0) == 1 - 1 / 16  # 0.9375: three unanimous votes are not enough at 0.95
    assert beta_majority_probability(4, 0) == 1 - 1 / 32  # 0.96875: four are
    assert beta_majority_probability(4, 4) == 0.5


def test_answer_counts_group_equivalent_answers_and_skip_missing_ones():
    assert answer_counts(["7", "7.0", None, "8", "14/2", "8", "9"]) == [3, 2, 1]
    assert answer_counts([None, None]) == []


BETA = EarlyStop(rule="beta")


@pytest.mark.parametrize(
    "answers,decided",
    [
        (["5", "5", "5"], False),  # 0.9375 < 0.95
        (["5", "5", "5", "5"], True),  # 0.969
        (["5", "5", "5", "5", "6"], False),  # 4:1 -> 0.891
        (["5", "6", "5", "5", "5", "5", "5"], True),  # 6:1 -> 0.965
        (["5", "5", "6", "6", "5", "6", "5", "5", "5", "5"], False),  # 7:3 -> 0.887
        (["5", None, "5", None, "5", "5"], True),  # no answer casts no vote: 4:0
        ([None] * 8, False),
        (["5", "7", "5", "8", "5", "9", "5", "5", "5"], True),  # 6:1 between the two leaders; the rest do not count
    ],
)
def test_beta_rule_on_vote_sequences(answers, decided):
    reason = vote_decided(BETA, answers, equivalent)
    assert (reason is not None) == decided
    if decided:
        assert reason.startswith("beta:")


def test_beta_confidence_is_the_request_s():
    assert vote_decided(EarlyStop(rule="beta", confidence=0.9), ["5", "5", "5"], equivalent) is not None
    assert vote_decided(EarlyStop(rule="beta", confidence=0.99), ["5"] * 5, equivalent) is None  # 1 - 2^-6 = 0.984
    assert vote_decided(EarlyStop(rule="beta", confidence=0.99), ["5"] * 6, equivalent) is not None  # 1 - 2^-7 = 0.992


@pytest.mark.parametrize(
    "answers,window,decided",
    [
        (["1", "2", "3", "3"], 2, True),
        (["1", "2", "3", "3"], 3, False),
        (["3", "3", "3"], 4, False),  # fewer answers than the window
        (["2", "3.0", "3", "3"], 3, True),  # equivalent answers agree
        (["3", "3", None], 3, False),  # a missing answer agrees with nothing
        ([None, None], 2, False),
        (["9", "3", "3", "3", "3"], 4, True),
    ],
)
def test_esc_rule_on_vote_sequences(answers, window, decided):
    assert (vote_decided(EarlyStop(rule="esc", window=window), answers, equivalent) is not None) == decided


@pytest.mark.parametrize("rule", [EarlyStop(rule="beta"), EarlyStop(rule="esc", window=4)])
def test_rules_group_answers_as_the_final_vote_does(rule):
    """Under an output constraint the vote compares whole outputs exactly: "7" and "7.0"
    are two answers there, and a rule that counted them as one would stop on a vote
    the vote itself calls split."""
    answers = ["7", "7.0", "7", "7.0"]
    assert vote_decided(rule, answers, equivalent) is not None
    assert vote_decided(rule, answers, EXACT) is None
    assert vote(answers, same=EXACT).agreement == 0.5


def test_consensus_reads_the_weighted_share():
    assert consensus_decided({"5": 9.6, "4": 0.4}, 0.95) is not None
    assert consensus_decided({"5": 9.4, "4": 0.6}, 0.95) is None
    assert consensus_decided({}, 0.95) is None


def test_topk_confidence_is_minus_the_mean_of_the_k_highest():
    assert topk_confidence([-0.1, -3.0, -5.0, -9.0], 2) == pytest.approx((0.1 + 3.0) / 2)
    assert topk_confidence([-9.0, -0.1], 5) == pytest.approx((0.1 + 9.0) / 2)  # fewer given: their mean
    # a peaked distribution is more confident than a flat one
    peaked = np.log(np.array([0.97] + [0.03 / 19] * 19))
    flat = np.log(np.full(20, 1 / 20))
    assert topk_confidence(peaked.tolist(), 20) > topk_confidence(flat.tolist(), 20)
    with pytest.raises(ValueError):
        topk_confidence([], 3)


def test_group_confidences_are_sliding_means():
    assert group_confidences([1.0, 2.0, 3.0, 4.0], 2) == [1.5, 2.5, 3.5]
    assert group_confidences([1.0, 2.0, 3.0], 5) == [2.0]  # shorter than the window: the mean of all
    assert group_confidences([], 3) == []
    assert lowest_group_confidence([5.0, 1.0, 1.0, 5.0, 5.0], 2) == 1.0
    assert lowest_group_confidence([], 2) is None


def test_threshold_is_the_percentile_that_keeps_a_share_of_the_warmup():
    lowest = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert stop_threshold(lowest, keep=1.0) == 1.0
    assert stop_threshold(lowest, keep=0.5) == 3.0
    assert stop_threshold(lowest, keep=0.1) == pytest.approx(4.6)  # numpy's linear percentile, 90th
    kept = [c for c in lowest if c >= stop_threshold(lowest, keep=0.75)]
    assert len(kept) == 4
    with pytest.raises(ValueError):
        stop_threshold([], 0.9)


def test_trace_watch_stops_once_the_window_mean_falls_below():
    watch = TraceWatch(window=3, threshold=2.0)
    assert not watch.add([1.0, 1.0])  # no verdict before a full window
    assert watch.add([1.0])  # mean 1.0 < 2.0
    assert watch.stopped_at == 3
    assert watch.add([9.0, 9.0, 9.0])  # once stopped, stays stopped
    confident = TraceWatch(window=2, threshold=2.0)
    assert not confident.add([3.0, 2.0, 2.0, 5.0])  # window means 2.5, 2.0 (not below), 3.5
    assert not confident.add([0.5])  # (5 + 0.5) / 2 = 2.75: only the last window counts
    assert confident.add([1.0]) and confident.stopped_at == 6  # (0.5 + 1) / 2


def test_trace_weights_are_positive():
    assert stopping.trace_weight(4.0, "topk") == 4.0
    assert stopping.trace_weight(-0.5, "entropy") == pytest.approx(math.exp(-0.5))
    with pytest.raises(ValueError):
        stopping.trace_weight(1.0, "loudness")


def test_strategy_fields_and_their_errors():
    assert SelfConsistency(name="self_consistency", early_stop="esc").early_stop.leaves_per_wave == 4
    assert EntropyFork(name="entropy_fork", early_stop={"rule": "beta", "wave": 6}).early_stop.leaves_per_wave == 6
    with pytest.raises(ValueError, match="warmup"):
        DeepConf(name="deepconf", n=4, warmup=4)
    with pytest.raises(ValueError):
        EarlyStop(rule="beta", confidence=0.5)
