"""Entropy and varentropy of softmax(logits), in nats, over the full vocabulary.

For p = softmax(z) and surprisal s_i = -log p_i:
    H = E_p[s] = -sum_i p_i log p_i
    V = Var_p[s] = sum_i p_i (log p_i)^2 - H^2
Entries at -inf (tokens already masked out) have p_i = 0 and contribute nothing: the
0 * inf products are replaced by 0 instead of producing NaN. Nearly one-hot rows give
H ~ 0, never a small negative number (clamped). On CUDA the fused single-pass Triton
kernel computes both (kernels/entropy.py); elsewhere its torch reference does. Pure
functions, nothing is mutated.
"""

from __future__ import annotations

import torch

from entropy_serve.kernels.entropy import entropy_stats


def entropy_and_varentropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] -> (entropy [batch], varentropy [batch]), fp32, nats."""
    _, entropy, varentropy = entropy_stats(logits)
    return entropy, varentropy


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [batch, vocab] -> entropy [batch] in nats (the hot path: no varentropy)."""
    if logits.is_cuda:
        return entropy_and_varentropy(logits)[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    # -inf entries give 0 * -inf = nan, which nansum skips: they contribute nothing.
    return (-(logprobs.exp() * logprobs).nansum(dim=-1)).clamp_min(0.0) + 0.0
