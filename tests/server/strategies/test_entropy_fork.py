"""Fork-point choice: pure, on hand-made entropies."""

from __future__ import annotations

from entropy_serve.server.strategies.entropy_fork import fork_positions


def test_fork_positions_are_the_highest_entropies_in_order():
    entropies = [0.1, 2.5, 0.3, 3.0, 0.2, 2.5]
    assert fork_positions(entropies, 1) == [3]
    assert fork_positions(entropies, 2) == [1, 3]
    assert fork_positions(entropies, 3) == [1, 3, 5]  # the tie at 2.5 goes to the earlier first


def test_short_samples_fork_where_they_can():
    assert fork_positions([0.4, 0.9], 5) == [0, 1]
    assert fork_positions([], 2) == []


def test_a_branch_is_grafted_onto_its_tree_prefix():
    from vllm.outputs import CompletionOutput

    from entropy_serve.server.adapters.channel import TokenEntropy
    from entropy_serve.server.strategies.entropy_fork import _grafted
    from entropy_serve.server.strategies.leaves import Leaf

    def entropy(h: float) -> TokenEntropy:
        return TokenEntropy(h, h / 2, 0.8)

    tree = Leaf(
        CompletionOutput(
            index=0, text="2 + 2 = 4", token_ids=[10, 11, 12, 13], cumulative_logprob=None,
            logprobs=[{10: 1}, {11: 2}, {12: 3}, {13: 4}], finish_reason="stop",
        ),
        [entropy(0.1), entropy(0.2), entropy(1.5), entropy(0.3)],
    )
    branch = CompletionOutput(
        index=1, text=" 5.", token_ids=[20, 21], cumulative_logprob=None, logprobs=[{20: 5}, {21: 6}],
        finish_reason="length",
    )
    leaf = _grafted(tree, 2, "2 +", branch, [entropy(0.7), entropy(0.9)])
    assert leaf.output.token_ids == [10, 11, 20, 21]
    assert leaf.output.text == "2 + 5."
    assert leaf.output.logprobs == [{10: 1}, {11: 2}, {20: 5}, {21: 6}]
    assert leaf.output.finish_reason == "length" and leaf.output.index == 1
    assert [t.model_entropy_nats for t in leaf.entropies] == [0.1, 0.2, 0.7, 0.9]
    assert (leaf.num_shared_tokens, leaf.num_new_tokens) == (2, 2)
    # A branch sampled without entropies gets none (not the prefix's alone).
    assert _grafted(tree, 2, "2 +", branch, []).entropies == []
