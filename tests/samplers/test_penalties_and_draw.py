"""Penalties and vLLM's sampling order against vLLM's own code; the seeded draw's
contract (one finite logit, a function of seed and position only, distributed as p)."""

from __future__ import annotations

import pytest
import torch
from vllm.model_executor.layers.utils import apply_penalties
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

from entropy_serve.samplers.chain import RowParams, SamplerParams, apply_chain
from entropy_serve.samplers.draw import draw_
from entropy_serve.samplers.penalties import TokenHistory, apply_penalties_

VOCAB = 40
PROMPTS = [[1, 2, 3], [5], [], [7, 7, 8]]
OUTPUTS = [[2, 2, 9], [], [4, 4, 4, 1], [8]]


def logits_of(seed: int, rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def padded(lists: list[list[int]]) -> torch.Tensor:
    """vLLM's layout: token ids padded with the vocabulary size."""
    width = max(len(tokens) for tokens in lists) or 1
    return torch.tensor([tokens + [VOCAB] * (width - len(tokens)) for tokens in lists])


def test_penalties_by_hand():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    history = TokenHistory.of([[0]], [[1, 2, 2]], 4)
    apply_penalties_(logits, history, torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([0.25]))
    # 0: prompt, x > 0 -> 2 / 2; 1: output once -> -2 * 2 - 0.5 - 0.25; 2: twice -> 1 / 2 - 1 - 0.25; 3: unseen
    assert logits.tolist() == [[1.0, -4.75, -0.75, 0.5]]


def test_penalties_equal_vllms():
    logits = logits_of(0)
    repetition = torch.tensor([1.3, 1.0, 0.8, 2.0])
    frequency = torch.tensor([0.5, 0.0, -0.4, 1.0])
    presence = torch.tensor([0.2, 1.0, 0.0, -0.5])
    expected = apply_penalties(logits.clone(), padded(PROMPTS), padded(OUTPUTS), presence, frequency, repetition)
    ours = logits.clone()
    apply_penalties_(ours, TokenHistory.of(PROMPTS, OUTPUTS, VOCAB), repetition, frequency, presence)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("seed", range(5))
def test_vllm_order_equals_vllms_sampler(seed):
    """Penalties, temperature, min-p, then top-k and top-p: the distribution vLLM samples."""
    fields = [
        dict(temperature=0.7, min_p=0.3, top_p=0.6, repetition_penalty=1.2),
        dict(temperature=1.3, top_k=5, top_p=0.9, frequency_penalty=0.3),
        dict(temperature=0.5, min_p=0.05, top_k=3, presence_penalty=0.7),
        dict(temperature=1.0),
    ]
    rows = [SamplerParams(**f, vllm_order=1) for f in fields]
    params = RowParams.stack(rows)
    logits = logits_of(seed)
    ours = logits.clone()
    apply_chain(ours, params, history=TokenHistory.of(PROMPTS, OUTPUTS, VOCAB))

    expected = apply_penalties(
        logits.clone(),
        padded(PROMPTS),
        padded(OUTPUTS),
        params.presence_penalty,
        params.frequency_penalty,
        params.repetition_penalty,
    )
    expected /= params.temperature.unsqueeze(-1)
    probs = expected.softmax(-1)  # vLLM's MinPLogitsProcessor
    expected.masked_fill_(probs < params.min_p.unsqueeze(-1) * probs.amax(-1, keepdim=True), float("-inf"))
    top_k = torch.where(params.top_k > 0, params.top_k, torch.full_like(params.top_k, VOCAB))
    expected = apply_top_k_top_p_pytorch(expected, top_k, params.top_p)
    assert torch.equal(ours.isfinite(), expected.isfinite())
    torch.testing.assert_close(ours[ours.isfinite()], expected[expected.isfinite()])


def test_transformers_order_is_kept_where_vllm_order_is_not_asked():
    """p = [0.5, 0.3, 0.2], min_p 0.5, top_p 0.6: min-p first keeps one token, top-p first two."""
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(2, 1)
    params = RowParams.stack([SamplerParams(min_p=0.5, top_p=0.6), SamplerParams(min_p=0.5, top_p=0.6, vllm_order=1)])
    apply_chain(logits, params)
    assert logits.isfinite().sum(-1).tolist() == [2, 1]


def test_penalties_without_history_are_refused():
    with pytest.raises(ValueError, match="token history"):
        apply_chain(logits_of(0, rows=1), RowParams.stack([SamplerParams(presence_penalty=0.5)]))


def test_a_draw_leaves_one_finite_logit_and_depends_on_seed_and_position_only():
    logits = logits_of(1)
    drawn = logits.clone()
    tokens = draw_(drawn, [3, 3, 4, 3], [0, 0, 0, 1])
    assert drawn.isfinite().sum(-1).tolist() == [1, 1, 1, 1]
    assert drawn.argmax(-1).tolist() == tokens
    assert all(drawn[row, token] == logits[row, token] for row, token in enumerate(tokens))
    again = logits[[1, 0]].clone()  # other rows, other order: the same (seed, position), the same token
    assert draw_(again, [3, 3], [0, 0]) == tokens[1::-1]


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    logits = probs.log().expand(4000, -1).clone()
    tokens = torch.tensor(draw_(logits, list(range(4000)), [7] * 4000))
    frequencies = torch.bincount(tokens, minlength=4).float() / 4000
    assert frequencies[3] == 0
    torch.testing.assert_close(frequencies, probs, atol=0.03, rtol=0)
