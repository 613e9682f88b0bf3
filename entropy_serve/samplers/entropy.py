"""Entropy and varentropy of softmax(logits), in nats, over the full vocabulary.

For p = softmax(z) and surprisal s_i = -log p_i:
    H = E_p[s] = -sum_i p_i log p_i
    V = Var_p[s] = sum_i p_i (log p_i)^2 - H^2
Entries at -inf (tokens already masked out) have p_i = 0 and contribute nothing: the
0 * inf products are replaced by 0 instead of producing NaN. Nearly one-hot rows give
H ~ 0, never a small negative number (clamped). On CUDA the fused single-pass Triton
kernel computes both (kernels/entropy.py); on CPU the entropy alone is the torch
reference compiled by torch.compile (samplers/compiled.py). Pure functions, nothing is
mutated.
"""

from __future__ import annotations

import torch

from entropy_serve.kernels.entropy import entropy_stats
from entropy_serve.samplers.compiled import CompiledOnCpu

FLOAT32_MIN_LOG_NORMAL = -87.0  # exp(-87) ~ 1.6e-38, just above float32's smallest normal


def entropy_and_varentropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] -> (entropy [batch], varentropy [batch]), fp32, nats."""
    _, entropy, varentropy = entropy_stats(logits)
    return entropy, varentropy


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [batch, vocab] -> entropy [batch] in nats (the hot path: no varentropy)."""
    if logits.is_cuda:
        return entropy_and_varentropy(logits)[0]
    return _cpu_entropy(logits)


@CompiledOnCpu
def _cpu_entropy(logits: torch.Tensor) -> torch.Tensor:
    # The log-probabilities are ours: clamp them in place (one large buffer fewer).
    logprobs = torch.log_softmax(logits.float(), dim=-1).clamp_min_(FLOAT32_MIN_LOG_NORMAL)
    return _entropy_of_clamped(logprobs)


def entropy_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """log_softmax output [batch, vocab] -> entropy [batch] in nats.

    The log-probabilities are clamped at FLOAT32_MIN_LOG_NORMAL: real LM rows hold many
    tokens with log p < -87, whose exp is a denormal float, and x86 arithmetic on
    denormals is many times slower. Each such token (and each masked -inf one) then
    weighs e^-87 ~ 1e-38: the entropy moves by under 1e-33 nats, and no 0 * -inf NaN
    can appear.
    """
    return _entropy_of_clamped(logprobs.clamp_min(FLOAT32_MIN_LOG_NORMAL))


def _entropy_of_clamped(clamped: torch.Tensor) -> torch.Tensor:
    weighted = clamped.exp().mul_(clamped)  # p log p, in the exp's own buffer
    return (-weighted.sum(dim=-1)).clamp_min(0.0) + 0.0
