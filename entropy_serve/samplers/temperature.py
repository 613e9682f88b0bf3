"""Per-token adaptive temperature: T for each row from that row's own entropy H (nats).

All functions map per-row entropy [batch] and per-row parameters [batch] to per-row
temperatures [batch]; none mutates its inputs. Dividing the logits by T is the caller's
(see chain.py, which also applies the fixed temperature of rows without a rule, as
transformers' TemperatureLogitsWarper: logits / T). One function per rule, each with
its formula and paper: `hapo_temperature`, `edt_temperature`, `dynatemp_temperature`.

Every result is clamped to [MIN_TEMPERATURE, MAX_TEMPERATURE] so that a degenerate row
(H = 0) never divides by zero.
"""

from __future__ import annotations

import math

import torch

MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 10.0
# Entropies below this are treated as this (ln 0 and 1/0 are avoided, not special-cased).
ENTROPY_FLOOR_NATS = 1e-6


def hapo_temperature(
    entropy_nats: torch.Tensor,
    base_temperature: torch.Tensor,
    tau: torch.Tensor,
    log_entropy_pivot: float,
    log_entropy_spread: float,
) -> torch.Tensor:
    """HAPO's adaptive temperature sampling (Liu et al., 2025, "Heterogeneous Adaptive
    Policy Optimization"):
        T = T_base * (1 + tau * h),   h = clip((ln H - ln H_pivot) / spread, -1, 1)
    h is a signed, normalized log-entropy score: negative for tokens less uncertain than
    the model's usual pivot, positive for more. H_pivot (HAPO: the 0.8 quantile of token
    entropy) and `spread` (half the 5%-95% range of ln H) come from the model's
    calibration profile. HAPO's released code normalizes so that low-entropy tokens also
    map to +1 (raising their temperature too); we implement the paper's intent, the
    signed score, so confident tokens are cooled and uncertain ones heated. HAPO trains
    with tau = 0.05; serving defaults to tau = 0.5 for a visible effect (a request field).
    """
    log_entropy = entropy_nats.clamp_min(ENTROPY_FLOOR_NATS).log()
    score = ((log_entropy - log_entropy_pivot) / log_entropy_spread).clamp(-1.0, 1.0)
    return (base_temperature * (1.0 + tau * score)).clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)


def edt_temperature(
    entropy_nats: torch.Tensor, base_temperature: torch.Tensor, theta: torch.Tensor, base_n: torch.Tensor
) -> torch.Tensor:
    """Entropy-based Dynamic Temperature (Zhang, Yang, Zhang, Yu, Wang, Zhou 2024, "EDT:
    Improving Large Language Models' Generation by Entropy-based Dynamic Temperature
    Sampling"):
        T = T0 * N^(theta / H),  N = 0.8 by default
    so T -> 0 as H -> 0 (confident tokens turn greedy) and T -> T0 as H grows.
    """
    exponent = theta / entropy_nats.clamp_min(ENTROPY_FLOOR_NATS)
    return (base_temperature * base_n.pow(exponent)).clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)


def dynatemp_temperature(
    entropy_nats: torch.Tensor,
    min_temperature: torch.Tensor,
    max_temperature: torch.Tensor,
    exponent: torch.Tensor,
    vocab_size: int,
) -> torch.Tensor:
    """llama.cpp's dynamic temperature (`llama_sampler_temp_ext`, "dynatemp", after
    kalomaze's proposal):
        T = T_min + (T_max - T_min) * (H / ln V)^exponent,  V the vocabulary size
    H / ln V is the entropy normalized to [0, 1] (ln V is the uniform row's).
    """
    normalized = (entropy_nats / math.log(vocab_size)).clamp(0.0, 1.0)
    temperature = min_temperature + (max_temperature - min_temperature) * normalized.pow(exponent)
    return temperature.clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)
