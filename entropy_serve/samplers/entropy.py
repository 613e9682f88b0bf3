"""Entropy and varentropy of softmax(logits), in nats, over the full vocabulary.

For p = softmax(z) and surprisal s_i = -log p_i:
    H = E_p[s] = -sum_i p_i log p_i
    V = Var_p[s] = sum_i p_i (log p_i)^2 - H^2
Entries at -inf (tokens already masked out) have p_i = 0 and contribute nothing: the
0 * inf products are replaced by 0 instead of producing NaN. Nearly one-hot rows give
H ~ 0, never a small negative number (clamped). Pure function, nothing is mutated.
"""

from __future__ import annotations

import torch


def entropy_and_varentropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] -> (entropy [batch], varentropy [batch]), fp32, nats."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [batch, vocab]
    probs = logprobs.exp()
    weighted = torch.where(probs > 0, probs * logprobs, torch.zeros_like(probs))
    entropy = (-weighted.sum(dim=-1)).clamp_min(0.0) + 0.0  # + 0.0: no "-0.0" in responses
    second = torch.where(probs > 0, probs * logprobs.square(), torch.zeros_like(probs)).sum(dim=-1)
    varentropy = (second - entropy.square()).clamp_min(0.0)
    return entropy, varentropy


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [batch, vocab] -> entropy [batch] in nats."""
    return entropy_and_varentropy(logits)[0]
