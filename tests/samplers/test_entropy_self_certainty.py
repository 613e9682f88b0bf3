"""Self-certainty, KL(uniform || p), against its definition in float64."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_serve.samplers.entropy import entropy, entropy_and_self_certainty


def reference(logits: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return -math.log(logits.shape[-1]) - log_probs.mean(dim=-1)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 8.0])  # every z - max above -87: no clamping
def test_self_certainty_is_kl_from_uniform(scale):
    logits = torch.randn(5, 4096, generator=torch.Generator().manual_seed(0)) * scale
    h, certainty = entropy_and_self_certainty(logits)
    torch.testing.assert_close(certainty.double(), reference(logits), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(h, entropy(logits))


def test_uniform_is_zero_and_one_hot_is_large_but_finite():
    uniform = torch.zeros(1, 100)
    peaked = torch.full((1, 100), -1e4)
    peaked[0, 3] = 0.0
    masked = torch.randn(1, 100)
    masked[0, :10] = float("-inf")  # as vLLM's min_tokens masks EOS
    _, certainty = entropy_and_self_certainty(torch.cat([uniform, peaked, masked]))
    assert certainty[0].item() == 0.0
    # A one-hot row: every other token counts at the clamp, log p = -87 (samplers/entropy.py).
    assert certainty[1].item() == pytest.approx(87.0 * 99 / 100 - math.log(100), rel=1e-5)
    assert math.isfinite(certainty[2].item()) and certainty[2].item() > 0
