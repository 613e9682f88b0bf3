"""Entropy control for policy training: pure functions over per-token tensors.

What TRL's GRPOTrainer lacks, each small, with its paper, written to be wired into the
loss by a subclass (trainer/policy.py, to come). Shapes: `log_probs`, `old_log_probs`,
`advantages` and `mask` are [batch, tokens]; `mask` is 1 on response tokens, 0 on
padding. Losses are returned per token ([batch, tokens], 0 off the mask), so the
caller's aggregation (TRL's `loss_type`: grpo, dapo, dr_grpo, bnpo) still applies.

- Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement
  Learning for Reasoning Language Models"), as verl implements them
  (`compute_policy_loss_clip_cov` / `compute_policy_loss_kl_cov` in core_algos.py): the
  per-token covariance between advantage and log-probability drives entropy down; the
  tokens where it is largest get their gradient dropped (Clip-Cov, chosen at random in a
  band) or a KL penalty (KL-Cov, the top ones).
- TTRL rewards (Zuo et al. 2025): agreement with the group's majority answer.
- ETTRL's entropy-based advantage reshaping (Liu et al. 2025, EAR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def token_covariance(advantages: torch.Tensor, log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(A - mean A)(log p - mean log p) per token [batch, tokens], means over the valid
    tokens of the whole batch (log p detached: the covariance only selects tokens)."""
    log_probs = log_probs.detach()
    return (advantages - masked_mean(advantages, mask)) * (log_probs - masked_mean(log_probs, mask))


def clipped_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float | torch.Tensor,
    eps_high: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token loss max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), and where
    the clipped side won (those tokens carry no gradient already). eps may be per token."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def flat_selection(indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A bool tensor shaped like `like`, True at `indices` of its flattened view."""
    selected = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    selected[indices] = True
    return selected.view_as(like)


@dataclass(frozen=True)
class TokenLoss:
    loss: torch.Tensor  # [batch, tokens], 0 off the mask
    selected: torch.Tensor  # [batch, tokens] bool: the covariance-selected tokens
    clip_fraction: float  # of valid tokens where PPO's clip won


def clip_fraction(clipped: torch.Tensor, valid: torch.Tensor) -> float:
    """The share of valid tokens where PPO's clip won."""
    return float((clipped & valid).sum()) / max(1, int(valid.sum()))


def ppo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> TokenLoss:
    """PPO's clipped surrogate with no covariance control (no token selected), 0 off the mask."""
    loss, clipped = clipped_surrogate(log_probs, old_log_probs, advantages, eps_low, eps_high)
    return unselected_loss(loss, clipped, mask)


def unselected_loss(loss: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor) -> TokenLoss:
    """A per-token loss that selects no token (all but the covariance controls'), 0 off the mask."""
    valid = mask > 0
    return TokenLoss(loss=loss * valid, selected=torch.zeros_like(valid), clip_fraction=clip_fraction(clipped, valid))


def clip_cov_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator,
    ratio: float = 0.0002,
    lower: float = 1.0,
    upper: float = 5.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> TokenLoss:
    """Clip-Cov: PPO's clipped loss, with the gradient of k = max(1, int(ratio * N))
    tokens dropped (N: valid tokens), chosen uniformly at random among the valid tokens
    PPO did not clip whose covariance lies in (lower, upper). Paper recipe: ratio 2e-4,
    band (1, 5). Randomness comes only from `generator`."""
    loss, clipped = clipped_surrogate(log_probs, old_log_probs, advantages, eps_low, eps_high)
    valid = mask > 0
    covariance = token_covariance(advantages, log_probs, mask)
    candidates = (valid & ~clipped & (covariance > lower) & (covariance < upper)).flatten().nonzero().squeeze(-1)
    k = max(1, int(ratio * int(valid.sum())))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:k]]
    selected = flat_selection(chosen, like=valid)
    return TokenLoss(
        loss=torch.where(selected | ~valid, torch.zeros_like(loss), loss),
        selected=selected,
        clip_fraction=clip_fraction(clipped, valid),
    )


def kl_cov_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    fraction: float = 0.002,
    coef: float = 1.0,
) -> TokenLoss:
    """KL-Cov: the policy-gradient loss -A r, plus coef * |log p - log p_old| on the
    k = max(1, int(fraction * N)) valid tokens of largest covariance. Paper recipe:
    fraction 2e-3, coef 1 (verl's default fraction, 2e-4, is ten times smaller). Fully
    on-policy (log p == log p_old) the penalty is zero: it acts from the second
    optimizer step on a rollout batch."""
    ratio = torch.exp(log_probs - old_log_probs)
    valid = mask > 0
    covariance = token_covariance(advantages, log_probs, mask).masked_fill(~valid, float("-inf"))
    k = max(1, int(fraction * int(valid.sum())))
    top = covariance.flatten().topk(min(k, int(valid.sum()))).indices
    selected = flat_selection(top, like=valid)
    loss = -advantages * ratio + coef * (log_probs - old_log_probs).abs() * selected
    return TokenLoss(loss=loss * valid, selected=selected, clip_fraction=0.0)


def majority_rewards(answers: list[str | None], same: Callable[[str, str], bool] | None = None) -> list[float]:
    """TTRL's reward: 1 for a response whose answer is equivalent to the group's majority
    label (voting.vote's winner, grouped by the project's answer equivalence), 0 otherwise
    and for responses with no answer. Each answer is compared with the label itself, not
    counted by the cluster it joined: equivalence is not transitive (`\\text{5}` ~ `5` ~
    `5.0`, `\\text{5}` !~ `5.0`), and an answer equal to the label must get its 1."""
    # Imported here: the vote lives with the server's strategies (and vLLM); the losses
    # above import torch alone, so the GPU lane runs them where no engine is installed.
    from entropy_serve.tasks.voting import vote

    if same is None:
        from entropy_serve.tasks.answers import equivalent as same
    label = vote(answers, same=same).winner
    return [1.0 if label is not None and answer is not None and same(answer, label) else 0.0 for answer in answers]


def entropy_advantage_scale(mean_entropies_nats: list[float]) -> list[float]:
    """ETTRL's entropy-based advantage reshaping: Y_i = 1 + (mean H - H_i) / mean H,
    with H_i response i's mean token entropy and mean H the group's; each response's
    advantage is multiplied by Y_i, so confident responses move the policy more. Y_i
    is clipped at 0: past twice the group's mean entropy it would flip the advantage's
    sign, which the paper does not intend. A group with zero mean entropy is left as is."""
    group = sum(mean_entropies_nats) / len(mean_entropies_nats)
    if group <= 0:
        return [1.0] * len(mean_entropies_nats)
    return [max(0.0, 1.0 + (group - h) / group) for h in mean_entropies_nats]
