"""Entropy, varentropy and self-certainty of softmax(logits), in nats, over the full
vocabulary.

For p = softmax(z) over V tokens and surprisal s_i = -log p_i:
    H = E_p[s] = -sum_i p_i log p_i
    V = Var_p[s] = sum_i p_i (log p_i)^2 - H^2
    self-certainty = KL(U || p) = -ln V - (1/V) sum_i log p_i   (Kang et al. 2025;
    0 for a uniform p, large for a peaked one; CISC weighs votes by its trace mean)
Entries at -inf (tokens already masked out) have p_i = 0 and contribute nothing (never
a 0 * inf NaN). Nearly one-hot rows give H ~ 0, never a small negative number
(clamped). On CUDA the fused single-pass Triton kernel computes both (kernels/entropy.py);
on CPU the entropy alone comes from `shifted_log_normalizer_and_entropy`, compiled by
torch.compile (samplers/compiled.py). Pure functions, nothing is mutated.
"""

from __future__ import annotations

import math

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
    return shifted_log_normalizer_and_entropy(logits.float())[2].squeeze(-1)


def entropy_and_self_certainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] -> (entropy [batch], self-certainty [batch]) in nats.

    Self-certainty in the entropy's clamped space: with d_i = max(z_i - m, -87) and
    a = sum_i e^d_i, log p_i = d_i - ln a, so KL(U || p) = ln a - mean_i d_i - ln V.
    A masked (-inf) token counts as log p = -87 - ln a instead of -inf (a finite,
    comparable number for every row, where the exact value would be infinite)."""
    if logits.is_cuda:
        log_normalizer, entropy_nats, _ = entropy_stats(logits)
        row_max = logits.amax(dim=-1)
        mean_shifted = (logits.float() - row_max.unsqueeze(-1).float()).clamp_min(FLOAT32_MIN_LOG_NORMAL).mean(dim=-1)
        return entropy_nats, ((log_normalizer - row_max.float()) - mean_shifted - math.log(logits.shape[-1])).clamp_min(
            0.0
        )
    return _cpu_entropy_and_self_certainty(logits)


@CompiledOnCpu
def _cpu_entropy_and_self_certainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, log_total, entropy_nats, mean_shifted = _shifted_stats(logits.float())
    self_certainty = log_total - mean_shifted - math.log(logits.shape[-1])
    return entropy_nats.squeeze(-1), self_certainty.clamp_min(0.0).squeeze(-1) + 0.0


def shifted_log_normalizer_and_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] -> (row max m, ln a, entropy), each [batch, 1], one exp per token.

    With d_i = max(z_i - m, FLOAT32_MIN_LOG_NORMAL):
        a = sum_i e^d_i,   b = sum_i e^d_i d_i,   log Z = m + ln a,   H = ln a - b / a.
    The clamp keeps e^d out of the denormal floats, on which x86 arithmetic is many times
    slower (real LM rows hold many tokens with log p < -87), and turns masked -inf tokens
    into weights of e^-87 ~ 1.6e-38 instead of 0 * -inf = NaN: the entropy moves by under
    1e-33 nats. This is the Triton kernel's accumulation, without its running max.

    log Z is returned as its two terms, m and ln a, and never added up: at logits around
    1e4 one float32 step is ~1e-3, so m + ln a is rounded, and log p_i = (z_i - m) - ln a
    (exact: z_i - m is) would become z_i - log Z (off by up to that step).
    """
    row_max, log_total, entropy_nats, _ = _shifted_stats(logits)
    return row_max, log_total, entropy_nats


def _shifted_stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m, ln a, entropy, mean d), each [batch, 1], over d_i = max(z_i - m, -87)."""
    row_max = logits.amax(dim=-1, keepdim=True)
    shifted = (logits - row_max).clamp_min(FLOAT32_MIN_LOG_NORMAL)
    weights = shifted.exp()
    total = weights.sum(dim=-1, keepdim=True)  # a
    log_total = total.log()
    entropy_nats = log_total - (weights * shifted).sum(dim=-1, keepdim=True) / total
    return row_max, log_total, entropy_nats.clamp_min(0.0) + 0.0, shifted.mean(dim=-1, keepdim=True)
