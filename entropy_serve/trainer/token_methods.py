"""Entropy-RL methods that act per token: pure functions over [batch, tokens] tensors.

Shapes and conventions as in trainer/entropy_control.py: `log_probs` (current policy),
`old_log_probs` (the policy that sampled), `advantages` ([batch, 1] or [batch, tokens]),
`mask` (1 on response tokens), `entropies` (the current policy's full-vocabulary entropy
per token, nats); losses per token, 0 off the mask, for the caller's aggregation.
- STEER (arXiv 2510.10150, zz-haooo/STEER at b31df71): each token's clipped loss times
  a weight in [0.8, 1.2], smaller where the token's predicted entropy change is larger;
- HAPO's Differential Advantage Redistribution and Asymmetric Adaptive Clipping (arXiv
  2509.16591, starriver030515/HAPO at 7671dde), driven by each token's normalized
  log-entropy;
- SIREN (arXiv 2509.25133, Linn3a/siren at fa59a8d): entropy over the top-p nucleus, a
  mask of each response's peak-entropy tokens, and a squared pull towards an anchor.
"""

from __future__ import annotations

import torch

from entropy_serve.trainer.entropy_control import TokenLoss, clipped_surrogate, unselected_loss


def dual_clip_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float | torch.Tensor,
    eps_high: float | torch.Tensor,
    dual_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's `compute_policy_loss`: PPO's max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)),
    and for A < 0 also capped at -A c (dual clip, c > 1: a huge ratio on a bad token cannot
    blow the loss up). eps may be per token. Returns the loss and where PPO's clip won."""
    ppo, clipped = clipped_surrogate(log_probs, old_log_probs, advantages, eps_low, eps_high)
    return torch.where(advantages < 0, torch.minimum(ppo, -advantages * dual_clip), ppo), clipped


def steer_weights(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    weight_min: float = 0.8,
    weight_max: float = 1.2,
) -> torch.Tensor:
    """STEER's per-token weights (`compute_token_weights`, linear mapping), no gradient.

    With p = exp(log p) clamped to [1e-8, 1 - 1e-8] and p_old = exp(log p_old) clamped
    below at 1e-8, the first-order entropy change a token's update causes is
        Omega = A / p_old * p (1 - p) (ln p + H).
    |Omega| over the batch's valid tokens is mapped linearly onto [weight_max, weight_min]
    (the smallest |Omega| gets weight_max, the largest weight_min; all equal: the
    midpoint), so tokens that would move entropy most are damped. 0 off the mask."""
    with torch.no_grad():
        p = torch.exp(log_probs).clamp(1e-8, 1 - 1e-8)
        p_old = torch.exp(old_log_probs).clamp(min=1e-8, max=1.0)
        omega = (advantages / p_old * p * (1 - p) * (torch.log(p) + entropies)).abs()
        omega = torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))
        valid = mask > 0
        weights = torch.zeros_like(omega)
        if not valid.any():
            return weights
        low, high = omega[valid].min(), omega[valid].max()
        if high > low:
            scaled = weight_max - (omega - low) * (weight_max - weight_min) / (high - low)
        else:
            scaled = torch.full_like(omega, (weight_min + weight_max) / 2)
        return torch.where(valid, scaled.clamp(weight_min, weight_max), weights)


def steer_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor,
    *,
    weight_min: float = 0.8,
    weight_max: float = 1.2,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float = 3.0,
) -> TokenLoss:
    """STEER (`compute_policy_loss_with_entropy`): the dual-clipped PPO loss per token
    times `steer_weights`."""
    advantages = advantages.expand_as(log_probs)
    weights = steer_weights(log_probs, old_log_probs, advantages, entropies, mask, weight_min, weight_max)
    loss, clipped = dual_clip_surrogate(log_probs, old_log_probs, advantages, eps_low, eps_high, dual_clip)
    return unselected_loss(loss * weights, clipped, mask)


def hapo_entropy_scores(entropies: torch.Tensor, mask: torch.Tensor, pivot: float = 0.8) -> torch.Tensor:
    """HAPO's h_hat (`compute_entropy_h`): z = ln H - q, with q the `pivot` quantile of ln H
    over the batch's valid tokens (nearest rank), divided by the root mean square of z
    over them; then positives divided by their maximum and negatives by their minimum's
    magnitude, so h_hat lies in [-1, 1]: 1 for the batch's most uncertain token, -1 for
    its most confident. No gradient. The paper's h lies in [-1, 1]; the reference scales
    the negatives by 1 / min (a negative number), which flips their sign, so there every
    token counts as uncertain: here confident tokens stay negative."""
    with torch.no_grad():
        valid = mask > 0
        log_h = torch.log(entropies.clamp(min=1e-8))
        values = log_h[valid].sort().values
        pivot_value = values[round(pivot * (len(values) - 1))] if len(values) else log_h.new_zeros(())
        z = log_h - pivot_value
        rms = ((z.pow(2) * valid).sum() / valid.sum().clamp(min=1)).clamp(min=1e-8).sqrt()
        z = z / rms
        top = torch.where(valid & (z > 0), z, torch.zeros_like(z)).max().clamp(min=1e-8)
        bottom = torch.where(valid & (z < 0), z, torch.zeros_like(z)).min().clamp(max=-1e-8)
        return torch.where(z > 0, z / top, -z / bottom)


def hapo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    entropies: torch.Tensor,
    *,
    pivot: float = 0.8,
    clip_alpha: float = 1.0,
    advantage_beta: float = 1.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float = 10.0,
) -> TokenLoss:
    """HAPO's token-level loss (`compute_policy_loss` with adaptive_clip and adaptive_advantage).

    With h = `hapo_entropy_scores` per token:
    - Asymmetric Adaptive Clipping: confident tokens (h <= 0) get eps_low (1 - alpha h), a
      wider lower bound (their probability may fall further: noisy confident tokens are
      cut), uncertain ones (h > 0) eps_high (1 + alpha h), a wider upper bound (room to
      explore); the other bound stays.
    - Differential Advantage Redistribution: A' = A (1 + beta h). An uncertain token takes
      A' once its ratio has left the neutral zone (1 - eps_low / 2, 1 + eps_high / 2) and A
      inside it; a confident token takes A' inside the zone and A outside it.
    Then verl's dual-clipped PPO loss (the recipe's c = 10)."""
    advantages = advantages.expand_as(log_probs)
    h = hapo_entropy_scores(entropies, mask, pivot)
    eps_low_t = torch.where(h <= 0, eps_low * (1 - clip_alpha * h), torch.full_like(h, eps_low))
    eps_high_t = torch.where(h > 0, eps_high * (1 + clip_alpha * h), torch.full_like(h, eps_high))
    with torch.no_grad():
        ratio = torch.exp(log_probs - old_log_probs)
        neutral = (ratio > 1 - eps_low_t / 2) & (ratio < 1 + eps_high_t / 2)
        redistributed = advantages * (1 + advantage_beta * h)
        advantages = torch.where((h > 0) ^ neutral, redistributed, advantages)
    loss, clipped = dual_clip_surrogate(log_probs, old_log_probs, advantages, eps_low_t, eps_high_t, dual_clip)
    return unselected_loss(loss, clipped, mask)


def nucleus_entropy(logits: torch.Tensor, top_p: float = 0.8) -> torch.Tensor:
    """SIREN's entropy over the top-p nucleus (`top_p_entropy_from_logits`), per position
    [..., vocab] -> [...], differentiable: the tokens in decreasing probability whose
    cumulative probability is <= top_p (always the first), renormalized, then their
    entropy. A confident position (top-1 alone past top_p) has entropy 0."""
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(dim=-1) <= top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    kept = kept / kept.sum(dim=-1, keepdim=True)
    return -(kept * torch.log(kept + 1e-20)).sum(dim=-1)


def peak_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, quantile: float = 0.8) -> torch.Tensor:
    """SIREN's token mask (`mask_by_quantile`): per response, the valid tokens whose
    entropy is above that response's `quantile` (linear interpolation, as torch's
    nanquantile). No gradient. Padding is never in the mask (the reference compares
    padding positions with the bound too)."""
    with torch.no_grad():
        valid = mask > 0
        values = torch.where(valid, entropies.detach().float(), torch.full_like(entropies, float("nan")))
        bound = torch.nanquantile(values, quantile, dim=-1, keepdim=True)
        return valid & (entropies > bound)


def siren_entropy(nucleus_entropies: torch.Tensor, mask: torch.Tensor, quantile: float = 0.8) -> torch.Tensor:
    """SIREN's batch entropy: the nucleus entropy of each response's peak tokens
    (`peak_entropy_mask`), averaged per response, then over responses (verl's
    seq-mean-token-mean; a response with no peak token counts 0)."""
    peak = peak_entropy_mask(nucleus_entropies, mask, quantile).float()
    per_response = (nucleus_entropies * peak).sum(-1) / peak.sum(-1).clamp(min=1)
    return per_response.mean()


def siren_regularizer(entropy: torch.Tensor, anchor: float, coef: float = 0.005) -> torch.Tensor:
    """SIREN's self-anchored regularizer, added to the policy loss: coef (H - anchor)^2,
    H = `siren_entropy` of the batch, anchor = that entropy on the run's first batch.
    Zero gradient at the anchor; it pulls entropy back from either side."""
    return coef * (entropy - anchor) ** 2
