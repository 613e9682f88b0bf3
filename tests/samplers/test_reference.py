"""Our samplers against transformers' warpers and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from entropy_serve.samplers.chain import (
    DYNATEMP,
    EDT,
    HAPO,
    EntropyProfile,
    RowParams,
    apply_chain,
    min_p_mask,
    top_k_mask,
    top_p_mask,
)
from entropy_serve.samplers.entropy import entropy_and_varentropy
from entropy_serve.samplers.temperature import MAX_TEMPERATURE, MIN_TEMPERATURE
from entropy_serve.samplers.typical import BLOCK, smallest, typical_filter_, typical_mask, typical_mask_reference

NEG_INF = float("-inf")


def random_logits(rows=6, vocab=50, seed=0, scale=3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * scale


def adversarial_logits(vocab: int = 40) -> torch.Tensor:
    rows = [
        torch.zeros(vocab),  # uniform: every token ties
        torch.full((vocab,), -30.0).index_fill_(0, torch.tensor([3]), 30.0),  # nearly one-hot
        torch.arange(vocab, dtype=torch.float32).remainder(4),  # many exact ties
        torch.linspace(-5, 5, vocab).index_fill_(0, torch.arange(0, vocab, 3), NEG_INF),  # already masked
        torch.tensor([1.0, 1.0] + [NEG_INF] * (vocab - 2)),  # two survivors
    ]
    return torch.stack(rows)


# Vocabularies of 50 and 40 tokens, and of 256 and 48 (multiples of typical's BLOCK).
ALL_LOGITS = [random_logits(seed=s) for s in range(4)] + [adversarial_logits()]
ALL_LOGITS += [random_logits(seed=4, vocab=256), adversarial_logits(vocab=48)]


def test_entropy_by_hand():
    logits = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [math.log(3), 0.0, NEG_INF, NEG_INF], [0.0, NEG_INF, NEG_INF, NEG_INF]]
    )
    h, v = entropy_and_varentropy(logits)
    p = torch.tensor([0.75, 0.25])
    expected_h = -(p * p.log()).sum()
    expected_v = (p * p.log().square()).sum() - expected_h**2
    torch.testing.assert_close(h, torch.stack([torch.tensor(math.log(4)), expected_h, torch.tensor(0.0)]))
    torch.testing.assert_close(v, torch.stack([torch.tensor(0.0), expected_v, torch.tensor(0.0)]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("logits", ALL_LOGITS)
def test_entropy_bounds_and_no_nan(logits):
    h, v = entropy_and_varentropy(logits)
    assert torch.isfinite(h).all() and torch.isfinite(v).all()
    assert (h >= 0).all() and (h <= math.log(logits.shape[-1]) + 1e-5).all()
    assert (v >= 0).all()


@pytest.mark.parametrize("logits", ALL_LOGITS)
@pytest.mark.parametrize("mass", [0.05, 0.2, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("keep", [1, 3])
@pytest.mark.parametrize("stages", [(), (4,), (12,), (3, 20)])  # full sort; top-k stages with fallbacks
def test_typical_keeps_exactly_what_transformers_keeps(logits, mass, keep, stages):
    typical_p = torch.full((logits.shape[0],), mass)
    ours = typical_mask(logits.clone(), typical_p, keep, stages)
    theirs = TypicalLogitsWarper(mass=mass, min_tokens_to_keep=keep)(None, logits.clone()) == NEG_INF
    already_masked = logits == NEG_INF
    assert torch.equal(ours | already_masked, theirs)
    assert ((~ours) & ~already_masked).sum(-1).min() >= 1  # kept set never empty
    filtered = logits.clone()
    typical_filter_(filtered, typical_p, keep, stages)
    assert torch.equal(filtered == NEG_INF, theirs)
    assert torch.equal(filtered[~theirs], logits[~theirs])


FILTERS = [
    (top_k_mask, TopKLogitsWarper, "top_k", [1, 2, 7]),
    (top_p_mask, TopPLogitsWarper, "top_p", [0.1, 0.5, 0.95]),
    (min_p_mask, MinPLogitsWarper, "min_p", [0.01, 0.1, 0.5]),
]


@pytest.mark.parametrize("logits", ALL_LOGITS)
@pytest.mark.parametrize(
    "mask_fn,warper,name,value",
    [(fn, warper, name, v) for fn, warper, name, values in FILTERS for v in values],
)
def test_filters_match_transformers(logits, mask_fn, warper, name, value):
    ours = mask_fn(logits, torch.full((logits.shape[0],), value))
    theirs = warper(**{name: value})(None, logits.clone()) == NEG_INF
    assert torch.equal(ours | (logits == NEG_INF), theirs)


def params(rows: int, **values) -> RowParams:
    return RowParams.uniform(rows, **values)


@pytest.mark.parametrize("logits", ALL_LOGITS)
def test_chain_equals_transformers_warper_chain(logits):
    rows = logits.shape[0]
    chosen = dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.8)
    ours = logits.clone()
    apply_chain(ours, params(rows, **chosen))
    theirs = logits.clone()
    for warper in (
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(20),
        TopPLogitsWarper(0.9),
        MinPLogitsWarper(0.05),
        TypicalLogitsWarper(0.8),
    ):
        theirs = warper(None, theirs)
    assert torch.equal(ours == NEG_INF, theirs == NEG_INF)
    torch.testing.assert_close(ours[ours != NEG_INF], theirs[theirs != NEG_INF])


def test_neutral_rows_are_untouched_and_entropies_reported():
    logits = random_logits()
    shaped = logits.clone()
    result = apply_chain(shaped, params(logits.shape[0]))
    assert torch.equal(shaped, logits)
    torch.testing.assert_close(result.model_entropy, result.sampled_entropy)
    torch.testing.assert_close(result.temperature, torch.ones(logits.shape[0]))


def test_filters_lower_the_sampled_entropy():
    logits = random_logits(scale=1.0)
    result = apply_chain(logits.clone(), params(logits.shape[0], typical_p=0.2))
    assert (result.sampled_entropy < result.model_entropy).all()


def test_hapo_cools_confident_rows_and_heats_uncertain_ones():
    confident = torch.full((1, 50), -20.0).index_fill_(1, torch.tensor([0]), 20.0)
    uncertain = torch.zeros(1, 50)
    logits = torch.cat([confident, uncertain])
    profile = EntropyProfile(log_entropy_pivot=math.log(0.5), log_entropy_spread=2.0)
    result = apply_chain(logits.clone(), params(2, method=HAPO, hapo_tau=0.5), profile)
    assert result.temperature[0] == pytest.approx(0.5)  # score clipped to -1: T * (1 - tau)
    h = math.log(50)
    expected = 1.0 * (1 + 0.5 * min(1.0, (math.log(h) - math.log(0.5)) / 2.0))
    assert result.temperature[1].item() == pytest.approx(expected, rel=1e-5)


def test_edt_by_hand():
    logits = torch.zeros(1, 8)  # H = ln 8
    result = apply_chain(logits.clone(), params(1, method=EDT, temperature=1.0, edt_theta=0.5, edt_base=0.8))
    assert result.temperature.item() == pytest.approx(0.8 ** (0.5 / math.log(8)), rel=1e-5)


def test_dynatemp_by_hand_and_bounds():
    uniform = torch.zeros(1, 16)  # H / ln V = 1 -> T_max
    peaked = torch.full((1, 16), -50.0).index_fill_(1, torch.tensor([0]), 50.0)  # H ~ 0 -> T_min
    logits = torch.cat([uniform, peaked])
    chosen = dict(method=DYNATEMP, dynatemp_min=0.3, dynatemp_max=1.7, dynatemp_exponent=1.0)
    result = apply_chain(logits.clone(), params(2, **chosen))
    torch.testing.assert_close(result.temperature, torch.tensor([1.7, 0.3]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("logits", ALL_LOGITS)
@pytest.mark.parametrize("method", [HAPO, EDT, DYNATEMP])
def test_adaptive_temperatures_stay_in_bounds(logits, method):
    profile = EntropyProfile(log_entropy_pivot=0.0, log_entropy_spread=1.0)
    chosen = dict(method=method, hapo_tau=5.0, dynatemp_min=0.0, dynatemp_max=50.0, edt_theta=3.0)
    result = apply_chain(logits.clone(), params(logits.shape[0], **chosen), profile)
    assert ((result.temperature >= MIN_TEMPERATURE) & (result.temperature <= MAX_TEMPERATURE)).all()


@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0])  # flat to peaked rows over a real vocabulary
@pytest.mark.parametrize("mass", [0.2, 0.9, 0.95])
def test_typical_fast_path_on_a_full_vocabulary(scale, mass):
    logits = random_logits(rows=8, vocab=49152, seed=7, scale=scale)
    ours = typical_mask(logits, torch.full((8,), mass))
    theirs = TypicalLogitsWarper(mass=mass)(None, logits.clone()) == NEG_INF
    assert torch.equal(ours, theirs)
    filtered = logits.clone()
    typical_filter_(filtered, torch.full((8,), mass))
    assert torch.equal(filtered == NEG_INF, theirs)


@pytest.mark.parametrize("k", [1, 5, 16, 40, 63, 64])
def test_smallest_by_blocks_equals_topk(k):
    generator = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 30, (7, 64 * BLOCK), generator=generator).float()  # many ties
    scores[1, 100:] = float("inf")  # few finite scores
    scores[2] = 5.0  # all tied
    block_minima = scores.view(7, -1, BLOCK).amin(-1)
    values, indices = smallest(scores, block_minima, k)
    expected = torch.topk(scores, k, dim=-1, largest=False, sorted=True).values
    assert torch.equal(values, expected)
    assert torch.equal(scores.gather(-1, indices), values)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # distinct tokens


def hard_rows() -> torch.Tensor:
    logits = torch.randn(5, 1024, generator=torch.Generator().manual_seed(0)) * 4
    logits[1, :1014] = NEG_INF  # mostly masked
    logits[2] = NEG_INF
    logits[2, 7] = 3.0  # one-hot
    return logits


def test_compiled_cpu_entropy_equals_the_eager_one():
    from entropy_serve.samplers import entropy as entropy_module

    logits = hard_rows()
    compiled = entropy_module.entropy(logits)
    assert entropy_module._cpu_entropy.enabled  # compiled here, not fallen back
    torch.testing.assert_close(compiled, entropy_module._cpu_entropy.eager(logits.clone()), atol=1e-5, rtol=1e-5)
    assert 0.0 <= compiled[2] < 1e-6


def test_compiled_typical_stages_equal_the_eager_ones():
    from entropy_serve.samplers import typical as typical_module

    logits = hard_rows()
    shifted, row_max, log_total, block_minima = typical_module._shifted_scores(logits)
    assert typical_module._shifted_scores.enabled
    eager_shifted, eager_row_max, eager_log_total, eager_minima = typical_module._shifted_scores.eager(logits)
    torch.testing.assert_close(shifted, eager_shifted, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(row_max + log_total, eager_row_max + eager_log_total)
    torch.testing.assert_close(block_minima, eager_minima, atol=1e-5, rtol=1e-5)
    assert torch.equal(block_minima, shifted.view(5, -1, typical_module.BLOCK).amin(-1))
    assert torch.equal(shifted.isinf(), logits.isinf())  # masked tokens are never candidates

    threshold = shifted.nan_to_num(posinf=0.0).median(dim=-1, keepdim=True).values
    compiled, eager = logits.clone(), logits.clone()
    typical_module._remove_above(compiled, shifted, threshold)
    assert typical_module._remove_above.enabled
    typical_module._remove_above.eager(eager, shifted, threshold)
    assert torch.equal(compiled, eager)
    assert torch.equal(compiled == NEG_INF, logits.isinf() | (shifted > threshold))


@pytest.mark.parametrize(
    "typical_p, kept",
    [(0.2, [1]), (0.7, [0, 1]), (0.85, [0, 1, 2]), (0.99, [0, 1, 2, 3])],
)
def test_typical_by_hand(typical_p, kept):
    """p = (0.5, 0.3, 0.15, 0.05): H = 1.1422 nats; surprisals 0.693, 1.204, 1.897,
    2.996; shifted scores 0.449, 0.062, 0.755, 1.854; so the typical order is tokens 1,
    0, 2, 3 with cumulative mass 0.3, 0.8, 0.95, 1.0, cut where it reaches typical_p."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    expected_remove = torch.tensor([[i not in kept for i in range(4)]])
    p = torch.tensor([typical_p])
    assert torch.equal(typical_mask_reference(logits, p), expected_remove)
    assert torch.equal(typical_mask(logits, p, stages=(2,)), expected_remove)


def extreme_row() -> torch.Tensor:
    return 1e4 + torch.randn(1, 1000, generator=torch.Generator().manual_seed(12)) * 3


@pytest.mark.parametrize("stages", [(), (64,), (64, 256)])
def test_typical_at_logits_around_1e4_keeps_what_transformers_and_float64_keep(stages):
    """log Z = max + ln(sum) rounded at 1e4 (one fp32 step ~1e-3) used to shift every
    score and mass: 114 kept against transformers' 113. Scores and masses now live in
    z - max space."""
    logits = extreme_row()
    p = torch.tensor([0.9])
    ours = typical_mask(logits.clone(), p, stages=stages)
    theirs = TypicalLogitsWarper(mass=0.9)(None, logits.clone()) == NEG_INF
    exact = typical_mask_reference(logits.double(), p.double())
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, exact)
    filtered = logits.clone()
    typical_filter_(filtered, p, stages=stages)
    assert torch.equal(filtered == NEG_INF, theirs)


def test_entropy_of_a_uniform_row_at_1e4_is_ln_v_with_no_varentropy():
    vocab = 49_152
    logits = torch.full((1, vocab), 1e4)
    h, v = entropy_and_varentropy(logits)
    assert h.item() == pytest.approx(math.log(vocab), abs=1e-6)
    assert 0.0 <= v.item() < 1e-9
    from entropy_serve.samplers.entropy import entropy

    assert entropy(logits).item() == pytest.approx(math.log(vocab), abs=1e-5)


def test_entropy_and_varentropy_match_float64_at_large_offsets():
    logits = extreme_row()
    h, v = entropy_and_varentropy(logits)
    z = logits.double()
    logp = z - torch.logsumexp(z, dim=-1, keepdim=True)
    p = logp.exp()
    h64 = -(p * logp).sum(-1)
    v64 = (p * (logp + h64.unsqueeze(-1)).square()).sum(-1)
    assert h.item() == pytest.approx(h64.item(), abs=1e-5)
    assert v.item() == pytest.approx(v64.item(), rel=1e-4)
