"""The entropy-RL methods by hand: each formula on a batch small enough to compute on
paper, the registry's composition rules, and the README's table being the registry's."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from entropy_serve.tasks.answers import equivalent
from entropy_serve.trainer import group_methods as gm
from entropy_serve.trainer import token_methods as tm
from entropy_serve.trainer.aepo import pad_rollouts
from entropy_serve.trainer.grpo import PolicyTrainer
from entropy_serve.trainer.methods import METHODS, Group, MethodPlan, methods_table
from entropy_serve.trainer.policy_config import PolicyConfig
from entropy_serve.trainer.rollouts import Rollout

README = Path(__file__).parents[2] / "README.md"


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# -- the registry ------------------------------------------------------------------------


def test_every_method_says_its_paper_needs_and_costs_and_the_readme_shows_the_registry():
    expected = {"clip_cov", "kl_cov", "80_20", "ttrl", "ettrl", "aepo", "steer", "siren", "canon", "seed_grpo", "hapo"}
    assert set(METHODS) == expected
    for method in METHODS.values():
        assert "arXiv" in method.paper and method.does and method.needs and method.cost
    assert methods_table() in README.read_text()


def test_hooks_run_replacing_estimator_first_then_factors_in_order():
    plan = MethodPlan.of(["ettrl", "canon"])
    settings = PolicyConfig(output_dir="x", canon_mu=1.0)
    group = Group(
        rewards=[1.0, 1.0, 0.0, 1.0],
        advantages=[9.0, 9.0, 9.0, 9.0],  # GRPO's, replaced by CANON's
        mean_entropies_nats=[0.4, 0.1, 0.3, 0.2],
        num_tokens=[3, 3, 3, 3],
        answers=["1", "1", "2", "1"],
        same=equivalent,
    )
    canon = [0.0, 0.5, -1.0, 0.5]  # test_canon_by_hand
    factors = [0.0, 1.6, 0.8, 1.2]  # ETTRL: 1 + (0.25 - H_i) / 0.25
    assert plan.apply_advantages(group, settings) == pytest.approx([a * f for a, f in zip(canon, factors)])
    assert MethodPlan.of([]).advantage_hooks() == []


# -- group methods -----------------------------------------------------------------------


def test_canon_by_hand():
    """Sorted by entropy: rows 1, 3 (low half, mean reward 1), rows 2, 0 (high half, 0.5)."""
    rewards, entropies = [1.0, 1.0, 0.0, 1.0], [0.4, 0.1, 0.3, 0.2]
    # mu 1, inter: high rows against the low half's mean, low rows against the high half's.
    assert gm.canon_advantages(rewards, entropies, mu=1.0) == pytest.approx([0.0, 0.5, -1.0, 0.5])
    # mu 0, intra: each row against its own half's mean.
    assert gm.canon_advantages(rewards, entropies, mu=0.0) == pytest.approx([0.5, 0.0, -0.5, 0.0])
    assert gm.canon_advantages(rewards, entropies, mu=0.5) == pytest.approx([0.25, 0.25, -0.75, 0.25])
    assert gm.canon_advantages([1.0], [0.3]) == [0.0]
    # odd n: the low half is n // 2 = 1 row (the lowest entropy), the high half 2.
    assert gm.canon_advantages([1.0, 0.0, 0.0], [0.1, 0.2, 0.3]) == pytest.approx([1.0, -1.0, -1.0])


def test_semantic_entropy_and_seed_grpo_scale_by_hand():
    answers = ["5", "5.0", "6", None]  # classes {5, 5.0}, {6}, {no answer}
    se = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert gm.semantic_entropy(answers, equivalent) == pytest.approx(se)
    assert gm.seed_grpo_scale(answers, 0.5, equivalent) == pytest.approx(1 - 0.5 * se / math.log(4))
    assert gm.seed_grpo_scale(["3", "3", "3"], 0.5, equivalent) == 1.0  # one meaning: full signal
    assert gm.seed_grpo_scale(["1", "2", "3"], 0.5, equivalent) == pytest.approx(0.5)  # maximal entropy
    assert gm.seed_grpo_scale(["1", "2", "3"], 2.0, equivalent) == 0.0  # never a flipped sign


def test_hapo_token_level_group_average_by_hand():
    # tokens carry their response's reward: [1, 1, 1, 0] -> mean 0.75, std sqrt(0.1875)
    std = math.sqrt(0.1875)
    assert gm.token_mean_advantages([1.0, 0.0], [3, 1]) == pytest.approx([0.25 / std, -0.75 / std], rel=1e-5)
    # a lone one-token success among 99 tokens: |A| ~ 9.9 >= 5, so GRPO's per-response advantages
    assert gm.token_mean_advantages([1.0, 0.0], [1, 99]) == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001])
    assert gm.group_normalized([1.0, 1.0]) == [0.0, 0.0]


def test_aepo_temperature_switch_and_selection_by_hand():
    assert gm.aepo_temperature(1.0, target_nats=2.0, high=1.2, low=0.8) == 1.2
    assert gm.aepo_temperature(2.0, target_nats=2.0, high=1.2, low=0.8) == 1.2  # at the target: up
    assert gm.aepo_temperature(2.5, target_nats=2.0, high=1.2, low=0.8) == 0.8
    groups = [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]
    # beat their group: row 0, and rows 9, 10 (flat); a group all alike has no winner
    assert gm.aepo_selection(groups, num_samples=8, above_target=False) == [0, 9, 10]
    assert gm.aepo_selection(groups, num_samples=2, above_target=False) == [0, 9]
    assert gm.aepo_selection(groups, num_samples=2, above_target=True) == [0]  # halved above the target
    assert gm.aepo_selection([[0.0, 0.0]], num_samples=4, above_target=False) == []


def test_aepo_rows_are_padded_like_trls():
    rollouts = [
        Rollout([1, 2, 3], [7, 8], [-0.1, -0.2], "x", [1.0, 1.0]),
        Rollout([4], [9, 10, 11], [-0.1] * 3, "y", [1.0] * 3),
    ]
    batch = pad_rollouts(rollouts, pad_id=0, device="cpu")
    assert batch.prompt_ids.tolist() == [[1, 2, 3], [0, 0, 4]]  # prompts on the left
    assert batch.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.completion_ids.tolist() == [[7, 8, 0], [9, 10, 11]]  # completions on the right
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.size == 2 and pad_rollouts([], 0, "cpu").size == 0


def test_method_advantages_apply_hooks_group_by_group():
    settings = PolicyConfig(output_dir="x", method=["seed_grpo"], seed_grpo_alpha=1.0, group_size=2)
    rollouts = [Rollout([1], [2], [-0.1], text, [1.0]) for text in ("3", "3", "3", "4")]
    trainer = SimpleNamespace(
        _rollouts=rollouts,
        _rewards=t([1.0], [1.0], [1.0], [0.0]),
        accelerator=SimpleNamespace(process_index=0),
        num_generations=2,
        methods=MethodPlan.of(settings.method),
        settings=settings,
    )
    advantages = PolicyTrainer.method_advantages(trainer, torch.tensor([0.0, 0.0, 1.0, -1.0]))
    # group 1: one meaning, factor 1; group 2: two meanings of two, factor 1 - ln 2 / ln 2 = 0
    assert advantages.tolist() == [0.0, 0.0, 0.0, 0.0]
    trainer.settings = settings.model_copy(update={"seed_grpo_alpha": 0.5})
    assert PolicyTrainer.method_advantages(trainer, torch.tensor([0.0, 0.0, 1.0, -1.0])).tolist() == [0, 0, 0.5, -0.5]


# -- token methods -----------------------------------------------------------------------


def test_dual_clip_caps_a_bad_tokens_loss():
    log_probs = torch.log(t([5.0, 0.5]))  # ratios 5 and 0.5
    loss, clipped = tm.dual_clip_surrogate(log_probs, torch.zeros(1, 2), t([-1.0, -1.0]), 0.2, 0.2, dual_clip=3.0)
    # ratio 5, A -1: PPO's max(5, 1.2) = 5, capped at -A c = 3; ratio 0.5: max(0.5, 0.8) = 0.8
    assert loss[0].tolist() == pytest.approx([3.0, 0.8])
    assert clipped[0].tolist() == [False, True]


def test_steer_weights_by_hand():
    # token 0: p 0.5, H ln 2 -> ln p + H = 0: no entropy change, the largest weight
    # token 1: p 0.5, p_old 0.5, H 1, A 1 -> Omega = 2 * 0.25 * (1 - ln 2)
    # token 2: p 0.25, p_old 0.25, H 2, A 1 -> Omega = 4 * 0.1875 * (2 - ln 4): the largest, weight 0.8
    log_probs = torch.log(t([0.5, 0.5, 0.25, 0.9]))
    entropies = t([math.log(2), 1.0, 2.0, 0.3])
    mask = t([1, 1, 1, 0])
    weights = tm.steer_weights(log_probs, log_probs, torch.ones(1, 4), entropies, mask)
    omega_1, omega_2 = 0.5 * (1 - math.log(2)), 0.75 * (2 - math.log(4))
    assert weights[0].tolist() == pytest.approx([1.2, 1.2 - 0.4 * omega_1 / omega_2, 0.8, 0.0], rel=1e-5)
    same = tm.steer_weights(log_probs[:, :1], log_probs[:, :1], torch.ones(1, 1), entropies[:, :1], mask[:, :1])
    assert same.tolist() == [[1.0]]  # one valid token: the midpoint


def test_steer_loss_is_the_weighted_dual_clipped_loss():
    log_probs = torch.log(t([0.5, 0.25]))
    result = tm.steer_loss(log_probs, log_probs, t([1.0]), t([1, 1]), t([math.log(2), 2.0]))
    assert result.loss[0].tolist() == pytest.approx([-1.2, -0.8])  # ratio 1: -A r times the weights


def test_hapo_entropy_scores_by_hand():
    entropies = torch.exp(t([1.0, 2.0, 3.0, 4.0, 5.0, 0.0]))  # log-entropies 1..5, and padding
    h = tm.hapo_entropy_scores(entropies, t([1, 1, 1, 1, 1, 0]), pivot=0.5)
    # pivot ln H = 3; z = [-2, -1, 0, 1, 2] / sqrt(2); scaled to +-1 by the extremes
    assert h[0, :5].tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])


def test_hapo_loss_clips_asymmetrically_and_redistributes_by_hand():
    entropies = torch.exp(t([1.0, 2.0, 3.0, 4.0, 5.0]))  # h = [-1, -0.5, 0, 0.5, 1] at pivot 0.5
    mask = torch.ones(1, 5)
    kwargs = dict(pivot=0.5, clip_alpha=1.0, advantage_beta=1.0, eps_low=0.2, eps_high=0.2, dual_clip=10.0)
    # ratio 1 (neutral): confident tokens take A (1 + h), uncertain ones A
    on_policy = tm.hapo_loss(torch.zeros(1, 5), torch.zeros(1, 5), t([1.0]), mask, entropies, **kwargs)
    assert on_policy.loss[0].tolist() == pytest.approx([0.0, -0.5, -1.0, -1.0, -1.0])
    # The uncertain token (h 1): clip range up to 1 + 0.2 * 2 = 1.4, neutral zone up to 1.2.
    # Ratio 1.3 leaves the zone: A' = 2, loss -2.6; ratio 1.5 is clipped at 1.4: -2.8.
    for ratio, expected, clip in ((1.3, -2.6, 0.0), (1.5, -2.8, 0.2)):
        log_probs = torch.log(t([1.0, 1.0, 1.0, 1.0, ratio]))
        result = tm.hapo_loss(log_probs, torch.zeros(1, 5), t([1.0]), mask, entropies, **kwargs)
        assert result.loss[0, 4].item() == pytest.approx(expected)
        assert result.clip_fraction == pytest.approx(clip)
    # The most confident token (h -1), A -1: its lower bound widens to 1 - 0.2 * 2 = 0.6;
    # ratio 0.5 is outside the zone (below 0.8), so A stays -1; clipped at 0.6.
    log_probs = torch.log(t([0.5, 1.0, 1.0, 1.0, 1.0]))
    result = tm.hapo_loss(log_probs, torch.zeros(1, 5), t([-1.0]), mask, entropies, **kwargs)
    assert result.loss[0, 0].item() == pytest.approx(0.6)


def test_nucleus_entropy_by_hand_with_gradient():
    logits = torch.log(t([0.5, 0.3, 0.2], [0.9, 0.05, 0.05])).requires_grad_()
    entropy = tm.nucleus_entropy(logits, top_p=0.85)
    # row 0: 0.5 + 0.3 <= 0.85 -> {0.625, 0.375}; row 1: the top token alone -> 0
    assert entropy.tolist() == pytest.approx([-(0.625 * math.log(0.625) + 0.375 * math.log(0.375)), 0.0], abs=1e-6)
    entropy.sum().backward()
    assert logits.grad[0].abs().sum() > 0


def test_peak_mask_and_siren_entropy_by_hand():
    entropies = t([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 9.0, 9.0, 9.0])
    mask = t([1, 1, 1, 1, 1], [1, 1, 0, 0, 0])
    peak = tm.peak_entropy_mask(entropies, mask, quantile=0.8)
    # row 0: the 0.8 quantile of 1..5 is 4.2 -> token 5; row 1: of [1, 2] it is 1.8 -> token 2, never padding
    assert peak.tolist() == [[False, False, False, False, True], [False, True, False, False, False]]
    entropy = tm.siren_entropy(entropies, mask, quantile=0.8)
    assert entropy.item() == pytest.approx((5.0 + 2.0) / 2)
    assert tm.siren_regularizer(entropy, anchor=3.0, coef=0.005).item() == pytest.approx(0.005 * 0.25)
    assert tm.siren_regularizer(entropy, anchor=3.5).item() == 0.0


def test_aepo_second_rollout_samples_hotter_below_target_and_keeps_the_winners():
    from entropy_serve.trainer.aepo import AepoRollout
    from entropy_serve.trainer.policy import rewards_for

    settings = PolicyConfig(output_dir="x", method=["aepo"], group_size=2, aepo_samples=4, aepo_prompt_fraction=0.5)
    problems = [[{"role": "user", "content": f"Compute {a} + 1."}] for a in (1, 2, 3, 4)]
    sent, logged = [], {}

    def sample(bodies, step, kind):
        sent.extend(bodies)
        texts = {"Compute 1 + 1.": ("2", "5"), "Compute 2 + 1.": ("9", "9")}
        return [
            [Rollout([1], [5, 6], [-0.1] * 2, t, [1.0] * 2) for t in texts[b["messages"][0]["content"]]] for b in bodies
        ]

    trainer = SimpleNamespace(
        settings=settings,
        served_model_name="policy",
        train_dataset=[{"prompt": p, "answer": str(i + 2)} for i, p in enumerate(problems)],
        reward_funcs=[rewards_for("ground_truth", 2)],
        sample=sample,
        rollout_seed=lambda step, group, stream: 1000 * stream + group,
        _log_metric=logged.__setitem__,
        processing_class=SimpleNamespace(pad_token_id=0),
        accelerator=SimpleNamespace(device="cpu"),
    )
    trainer.rollout_body = lambda *a, **k: PolicyTrainer.rollout_body(trainer, *a, **k)
    aepo = AepoRollout(trainer)
    batch = aepo.run(problems, entropy_nats=1.5, step=0)  # no target set: the first batch's, 1.5
    assert aepo.target_nats == 1.5 and logged["aepo_temperature"] == 1.2  # at the target: the hotter one
    assert [b["messages"] for b in sent] == problems[:2]  # half of the 4 problems, seeds of stream 1
    assert [b["seed"] for b in sent] == [1000, 1001] and all(b["n"] == 2 for b in sent)
    # problem 1: "2" right, "5" wrong -> the right one is kept; problem 2: both wrong, none
    assert batch.size == 1 and logged["aepo_samples"] == 1.0 and logged["aepo_rollout_tokens"] == 12.0
    aepo.run(problems, entropy_nats=2.0, step=2)
    assert logged["aepo_temperature"] == 0.8 and logged["aepo_samples"] == 0.0  # above: cooler, half of 1 is 0
