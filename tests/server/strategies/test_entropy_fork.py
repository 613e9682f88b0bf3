"""Fork-point choice: pure, on hand-made entropies."""

from __future__ import annotations

from entropy_serve.server.strategies.entropy_fork import fork_positions


def test_fork_positions_are_the_highest_entropies_in_order():
    entropies = [0.1, 2.5, 0.3, 3.0, 0.2, 2.5]
    assert fork_positions(entropies, 1) == [3]
    assert fork_positions(entropies, 2) == [1, 3]
    assert fork_positions(entropies, 3) == [1, 3, 5]  # the tie at 2.5 goes to the earlier first


def test_savings_weighs_entropy_by_the_prefix_a_fork_shares():
    entropies = [3.0, 0.2, 0.5, 1.0, 0.1]
    assert fork_positions(entropies, 1) == [0]  # ETTRL: the first token, which shares nothing
    assert fork_positions(entropies, 1, "savings") == [3]  # scores 0, 0.2, 1.0, 3.0, 0.4
    assert fork_positions(entropies, 2, "savings") == [2, 3]


def test_min_prefix_keeps_forks_late():
    entropies = [3.0, 0.2, 0.5, 1.0, 0.1]
    assert fork_positions(entropies, 2, min_prefix=2) == [2, 3]
    assert fork_positions(entropies, 2, min_prefix=5) == []  # the tree is too short to fork that late


def test_short_samples_fork_where_they_can():
    assert fork_positions([0.4, 0.9], 5) == [0, 1]
    assert fork_positions([], 2) == []


def test_a_branch_is_grafted_onto_its_tree_prefix():
    import dataclasses

    from entropy_serve.server.core.submission import Generated
    from entropy_serve.server.engine.adapters.channel import TokenEntropy
    from entropy_serve.server.strategies.entropy_fork import _grafted
    from entropy_serve.server.strategies.leaves import Leaf

    def entropy(h: float) -> TokenEntropy:
        return TokenEntropy(h, h / 2, 0.8)

    tree = Leaf(
        Generated(
            index=0,
            prompt_index=0,
            text="2 + 2 = 4",
            token_ids=[10, 11, 12, 13],
            logprobs=[{10: 1}, {11: 2}, {12: 3}, {13: 4}],
            finish_reason="stop",
            entropies=[entropy(0.1), entropy(0.2), entropy(1.5), entropy(0.3)],
        )
    )
    branch = Generated(
        index=1,
        prompt_index=0,
        text=" 5.",
        token_ids=[20, 21],
        logprobs=[{20: 5}, {21: 6}],
        finish_reason="length",
        entropies=[entropy(0.7), entropy(0.9)],
    )
    leaf = _grafted(tree, 2, "2 +", branch)
    assert leaf.choice.token_ids == [10, 11, 20, 21]
    assert leaf.choice.text == "2 + 5."
    assert leaf.choice.logprobs == [{10: 1}, {11: 2}, {20: 5}, {21: 6}]
    assert leaf.choice.finish_reason == "length" and leaf.choice.index == 1
    assert [t.model_entropy_nats for t in leaf.choice.entropies] == [0.1, 0.2, 0.7, 0.9]
    assert (leaf.num_shared_tokens, leaf.num_new_tokens) == (2, 2)
    # The tree and the branch are read, not changed.
    assert tree.choice.token_ids == [10, 11, 12, 13] and branch.token_ids == [20, 21]
    # A branch sampled without entropies gets none (not the prefix's alone).
    assert _grafted(tree, 2, "2 +", dataclasses.replace(branch, entropies=[])).choice.entropies == []
