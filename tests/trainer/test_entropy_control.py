"""Entropy control by hand: covariance, Clip-Cov, KL-Cov, TTRL rewards, ETTRL's reshaping."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_serve.trainer.entropy_control import (
    clip_cov_loss,
    clipped_surrogate,
    entropy_advantage_scale,
    kl_cov_loss,
    majority_rewards,
    token_covariance,
)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_covariance_uses_the_valid_tokens_means_only():
    advantages, log_probs = t([2.0, 0.0, 9.0]), t([-1.0, -3.0, -100.0])
    covariance = token_covariance(advantages, log_probs, t([1, 1, 0]))
    # means over the two valid tokens: A 1, log p -2
    assert covariance[0, :2].tolist() == [1.0, 1.0]


def test_clipped_surrogate_by_hand():
    log_probs = t([math.log(1.5), math.log(1.5)])
    loss, clipped = clipped_surrogate(log_probs, torch.zeros_like(log_probs), t([1.0, -1.0]), 0.2, 0.2)
    assert loss[0].tolist() == pytest.approx([-1.2, 1.5])  # A > 0: capped at 1 + eps; A < 0: the larger loss
    assert clipped[0].tolist() == [True, False]


BAND = dict(advantages=t([2.0, 2.0, -2.0, -2.0]), log_probs=t([-1.0, -1.0, -3.0, -3.0]))  # covariance 2 everywhere


def test_clip_cov_drops_the_gradient_of_k_random_tokens_in_the_band():
    a, lp = BAND["advantages"], BAND["log_probs"]
    result = clip_cov_loss(lp, lp.detach(), a, torch.ones_like(a), generator=torch.Generator().manual_seed(0))
    assert int(result.selected.sum()) == 1  # k = max(1, int(2e-4 * 4))
    expected = torch.where(result.selected, torch.zeros_like(a), -a)  # on-policy: ratio 1, loss -A
    assert torch.equal(result.loss, expected)
    lp = lp.clone().requires_grad_()
    clip_cov_loss(
        lp, lp.detach(), a, torch.ones_like(a), generator=torch.Generator().manual_seed(0)
    ).loss.sum().backward()
    assert (lp.grad[result.selected] == 0).all() and (lp.grad[~result.selected] != 0).all()


def test_clip_cov_counts_k_over_valid_tokens_and_is_seeded():
    a = torch.cat([BAND["advantages"], torch.zeros(1, 4)], dim=1)
    lp = torch.cat([BAND["log_probs"], torch.zeros(1, 4)], dim=1)
    mask = t([1, 1, 1, 1, 0, 0, 0, 0])
    runs = [clip_cov_loss(lp, lp, a, mask, generator=torch.Generator().manual_seed(7), ratio=0.5) for _ in range(2)]
    assert int(runs[0].selected.sum()) == 2  # 0.5 of the 4 valid tokens, not of 8
    assert not runs[0].selected[0, 4:].any() and torch.equal(runs[0].selected, runs[1].selected)
    assert runs[0].loss[0, 4:].eq(0).all()


def test_clip_cov_never_picks_outside_the_band_or_a_clipped_token():
    a, lp = t([2.0, 2.0, -2.0, -2.0]), t([-1.0, -1.0, -3.0, -3.0])
    old = lp.clone()
    old[0, 0] -= math.log(2.0)  # token 0: ratio 2 with A > 0, PPO clips it
    for seed in range(20):
        result = clip_cov_loss(lp, old, a, torch.ones_like(a), generator=torch.Generator().manual_seed(seed), upper=1.9)
        assert not result.selected.any()  # covariance 2 is above the band: nothing to drop
        result = clip_cov_loss(lp, old, a, torch.ones_like(a), generator=torch.Generator().manual_seed(seed), ratio=0.5)
        assert not result.selected[0, 0] and int(result.selected.sum()) == 2
    assert result.clip_fraction == 0.25


def test_kl_cov_is_zero_on_policy_and_penalises_the_top_covariance_tokens():
    a, lp = t([4.0, 0.0, 0.0, 0.0]), t([-1.0, -2.0, -2.0, -3.0])  # covariance [3, 0, 0, 1]
    mask = torch.ones_like(a)
    on_policy = kl_cov_loss(lp, lp, a, mask, fraction=0.25)
    assert torch.equal(on_policy.loss, -a)  # |log p - log p_old| = 0: no penalty at all
    assert on_policy.selected[0].tolist() == [True, False, False, False]  # k = max(1, int(0.25 * 4)) = 1
    off_policy = kl_cov_loss(lp, lp - 0.1, a, mask, fraction=0.25, coef=1.0)
    ratio = math.exp(0.1)
    assert off_policy.loss[0].tolist() == pytest.approx([-4 * ratio + 0.1, 0.0, 0.0, 0.0])
    assert int(kl_cov_loss(lp, lp - 0.1, a, mask, fraction=0.5).selected.sum()) == 2  # tokens 0 and 3


def test_kl_cov_counts_only_valid_tokens():
    a, lp = t([4.0, 0.0, 9.0, 9.0]), t([-1.0, -3.0, 5.0, 5.0])
    result = kl_cov_loss(lp, lp - 0.1, a, t([1, 1, 0, 0]), fraction=1.0)
    assert result.selected[0].tolist() == [True, True, False, False] and result.loss[0, 2:].eq(0).all()


def test_majority_rewards_use_answer_equivalence():
    assert majority_rewards(["4", "4.0", "5", None]) == [1.0, 1.0, 0.0, 0.0]
    assert majority_rewards([None, None]) == [0.0, 0.0]


def test_majority_rewards_compare_each_answer_with_the_label_not_its_cluster():
    """Equivalence is not transitive: `\\text{5}` ~ `5` ~ `5.0` but `\\text{5}` !~ `5.0`. The
    label is 5.0 (three votes); `5` joined `\\text{5}`'s cluster, yet equals the label (TTRL)."""
    from entropy_serve.tasks.answers import equivalent

    answers = ["\\text{5}", "5.0", "5.0", "5.0", "5"]
    assert (
        equivalent(answers[0], answers[4])
        and equivalent(answers[4], answers[1])
        and not equivalent(answers[0], answers[1])
    )
    assert majority_rewards(answers) == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_entropy_advantage_scale_by_hand():
    assert entropy_advantage_scale([1.0, 2.0, 3.0]) == pytest.approx([1.5, 1.0, 0.5])
    # Past twice the group's mean entropy Y would be negative (-0.5): clipped at 0.
    assert entropy_advantage_scale([0.5, 0.5, 5.0]) == pytest.approx([1.75, 1.75, 0.0])
    assert entropy_advantage_scale([0.0, 0.0]) == [1.0, 1.0]
