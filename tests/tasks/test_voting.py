"""Voting by hand: grouping by equivalence, weights, ties, empty votes."""

from __future__ import annotations

import math

import pytest
from vllm.sampling_params import StructuredOutputsParams

from entropy_serve.tasks.voting import EXACT, constrained_answer, vote


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
    [
        ({"mode": "plurality"}, "unknown mode"),
        ({"mode": "entropy_weighted"}, "one mean entropy per answer"),
        ({"mode": "entropy_weighted", "mean_entropies_nats": [1.0]}, "one mean entropy per answer"),
    ],
)
def test_bad_vote_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vote(["1", "2"], **kwargs)


def test_constrained_json_answers_are_compared_as_parsed_values():
    params = StructuredOutputsParams(json_object=True)
    answers = [
        constrained_answer(text, params)
        for text in ('{"b": 1, "a": [1, 2]}', '{ "a":[1,2],\n "b":1 }', '{"a": "X"}', '{"a": "x"}', '{"a": ')
    ]
    assert answers[0] == answers[1] == '{"a":[1,2],"b":1}' and answers[4] is None
    result = vote(answers, same=EXACT)
    assert result.winner == '{"a":[1,2],"b":1}' and result.winner_leaves == [0, 1]
    assert result.table == {
        '{"a":[1,2],"b":1}': 2.0,
        '{"a":"X"}': 1.0,
        '{"a":"x"}': 1.0,
    }  # case is not equivalence here


def test_other_constrained_answers_are_the_text_as_written():
    params = StructuredOutputsParams(choice=["Yes", "yes"])
    assert constrained_answer(" Yes ", params) == "Yes"
    assert vote(["Yes", "yes", "yes"], same=EXACT).winner == "yes"
