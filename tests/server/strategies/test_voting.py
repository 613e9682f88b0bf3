"""Voting by hand: grouping by equivalence, weights, ties, empty votes."""

from __future__ import annotations

import math

import pytest

from entropy_serve.server.strategies.voting import vote


def test_majority_groups_equivalent_answers():
    result = vote(["0.5", "3", "\\frac{1}{2}", None, "3", "1/2"])
    assert result.winner == "0.5"
    assert result.winner_leaves == [0, 2, 5]
    assert result.table == {"0.5": 3.0, "3": 2.0}
    assert result.num_leaves == 6
    assert result.agreement == pytest.approx(3 / 5)


def test_ties_go_to_the_first_seen_group():
    assert vote(["7", "8", "8", "7"]).winner == "7"
    assert vote(["8", "7", "7", "8"]).winner == "8"


def test_entropy_weighting_lets_confident_answers_win():
    answers = ["4", "4", "5"]
    assert vote(answers).winner == "4"
    result = vote(answers, mean_entropies_nats=[2.0, 2.0, 0.1], mode="entropy_weighted")
    assert result.winner == "5"
    assert result.table["5"] == pytest.approx(math.exp(-0.1))
    assert result.table["4"] == pytest.approx(2 * math.exp(-2.0))


def test_no_answers_no_winner():
    result = vote([None, None])
    assert (result.winner, result.table, result.num_leaves, result.agreement) == (None, {}, 2, 0.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"mode": "plurality"}, "unknown mode"), ({"mode": "entropy_weighted"}, "one mean entropy per answer"),
     ({"mode": "entropy_weighted", "mean_entropies_nats": [1.0]}, "one mean entropy per answer")],
)
def test_bad_vote_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vote(["1", "2"], **kwargs)
