"""Locally typical sampling (Meister, Pimentel, Wiher, Cotterell, 2023, TACL).

Keep the tokens whose surprisal -log p_i is closest to the entropy H, in order of
|(-log p_i) - H|, until their probability mass reaches `typical_p`; always keep at least
`min_tokens_to_keep`. `typical_mask_reference` is the readable version (transformers'
`TypicalLogitsWarper`, operation for operation); `typical_mask` and `typical_filter_`
are the fast path, which keeps the same set.

What is guaranteed: the kept set equals `TypicalLogitsWarper`'s on every row whose
cumulative mass, in shifted order, is not within BOUNDARY_MARGIN of `typical_p` at the
cut (those rows take the full sort, which is transformers' computation); masses are
computed in z - max space, so this holds at any logit scale (rows of logits around 1e4
included). Where transformers itself rounds a tie at the cut differently from exact
arithmetic, both agree with each other, not necessarily with float64.

Fast path, per row:
1. shifted scores |(-log p_i) - H|, log Z and per-block minima, fused (compiled on CPU);
2. the cut: the kept set is every token whose shifted score is at most a threshold, the
   score at which the mass, in shifted order, reaches `typical_p`. That threshold only
   depends on the tokens up to that point, so we look at the tokens with the smallest
   shifted scores (a top-k, much cheaper than a sort, in growing stages, searching
   only the blocks of tokens that can hold them: see `smallest`); rows whose
   mass does not reach `typical_p` among them, or whose decision lies within float
   noise of `typical_p`, or where `min_tokens_to_keep` overrides the threshold, take
   the full sort, which replicates transformers operation for operation;
3. removal: tokens above their row's threshold become -inf (one fused pass).
"""

from __future__ import annotations

import torch

from entropy_serve.samplers.compiled import CompiledOnCpu
from entropy_serve.samplers.entropy import shifted_log_normalizer_and_entropy


def typical_mask_reference(logits: torch.Tensor, typical_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """The readable version: boolean mask [batch, vocab] of tokens to REMOVE.

    transformers' `TypicalLogitsWarper`, operation for operation: sort every token by
    its shifted score |(-log p_i) - H|, accumulate probability mass in that order, keep
    tokens up to and including the one where the mass reaches `typical_p`, plus every
    token tied with that one's score, and at least `min_tokens_to_keep`. A full sort per
    row; the fast path below decides the same set from a few candidates.
    logits: [batch, vocab] fp32; typical_p: [batch] in (0, 1). Nothing is mutated.
    """
    logprobs = torch.log_softmax(logits, dim=-1)
    probs = logprobs.exp()
    entropy = -(logprobs * probs).nansum(-1, keepdim=True)  # [batch, 1]
    shifted = torch.abs(-logprobs - entropy)  # [batch, vocab]
    sorted_shifted, sorted_indices = torch.sort(shifted, descending=False)
    cumulative = logits.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
    last_kept = (cumulative < typical_p.unsqueeze(-1)).sum(dim=-1)  # [batch]
    last_kept.clamp_(max=sorted_shifted.shape[-1] - 1)
    sorted_remove = sorted_shifted > sorted_shifted.gather(-1, last_kept.unsqueeze(-1))
    sorted_remove[..., :min_tokens_to_keep] = False
    return sorted_remove.scatter(-1, sorted_indices, sorted_remove)


# -- the fast path -----------------------------------------------------------------------

# Top-k sizes tried in turn before a full sort. On 64 SmolLM2 rows at typical_p = 0.9,
# the mass reached 0.9 within 64 tokens on 60 rows at T = 0.8, 45 at T = 1.0; within
# 256 on all at T = 0.8, 62 at T = 1.0 (the rest within 4096).
CANDIDATE_STAGES = (64, 256, 4096)
# Scores are searched in blocks of this many consecutive tokens (see `smallest`).
BLOCK = 16
# Cumulative masses this close to typical_p are decided by the exact (full-sort) path:
# far above the float noise between our cumulative sum and transformers' (~1e-7 per token).
BOUNDARY_MARGIN = 2e-5


def typical_mask(
    logits: torch.Tensor,
    typical_p: torch.Tensor,
    min_tokens_to_keep: int = 1,
    stages: tuple[int, ...] = CANDIDATE_STAGES,
) -> torch.Tensor:
    """Boolean mask [batch, vocab] of tokens to REMOVE; rows with typical_p >= 1 keep all.

    logits: [batch, vocab] fp32; typical_p: [batch] in (0, 1].
    """
    remove = torch.zeros_like(logits, dtype=torch.bool)
    rows = (typical_p < 1.0).nonzero().squeeze(-1)
    if rows.numel():
        sub = logits[rows]
        shifted, threshold, exact_rows = _cut(sub, typical_p[rows], min_tokens_to_keep, stages)
        sub_remove = shifted > threshold
        if exact_rows.numel():
            sub_remove[exact_rows] = typical_mask_reference(
                sub[exact_rows], typical_p[rows][exact_rows], min_tokens_to_keep
            )
        remove[rows] = sub_remove
    return remove


def typical_filter_(
    logits: torch.Tensor,
    typical_p: torch.Tensor,
    min_tokens_to_keep: int = 1,
    stages: tuple[int, ...] = CANDIDATE_STAGES,
) -> None:
    """In place: the tokens `typical_mask` removes become -inf. Every row has typical_p < 1."""
    shifted, threshold, exact_rows = _cut(logits, typical_p, min_tokens_to_keep, stages)
    if exact_rows.numel():  # decided on the logits as they are, before any removal
        exact = logits[exact_rows]
        exact.masked_fill_(typical_mask_reference(exact, typical_p[exact_rows], min_tokens_to_keep), float("-inf"))
    _remove_above(logits, shifted, threshold)  # exact rows have threshold +inf here
    if exact_rows.numel():
        logits[exact_rows] = exact


def _cut(
    logits: torch.Tensor, typical_p: torch.Tensor, min_tokens_to_keep: int, stages: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shifted scores [batch, vocab], thresholds [batch, 1], rows left to the full sort).

    A row's kept set is `shifted <= threshold`; rows left to the full sort have +inf.
    """
    shifted, row_max, log_total, block_minima = _shifted_scores(logits)
    threshold = torch.full_like(log_total, float("inf"))
    pending = torch.arange(logits.shape[0], device=logits.device)
    for candidates in stages:
        if pending.numel() == 0 or candidates >= logits.shape[-1]:
            break
        every_row = pending.numel() == logits.shape[0]
        decided, row_threshold = _candidate_threshold(
            logits if every_row else logits[pending],
            shifted if every_row else shifted[pending],
            block_minima if every_row or block_minima is None else block_minima[pending],
            row_max[pending],
            log_total[pending],
            typical_p[pending],
            min_tokens_to_keep,
            candidates,
        )
        threshold[pending[decided]] = row_threshold[decided]
        pending = pending[~decided]
    return shifted, threshold, pending


@CompiledOnCpu
def _shifted_scores(
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """logits [batch, vocab] -> (|(-log p) - H| [batch, vocab], row max m [batch, 1], ln a
    [batch, 1] (log Z = m + ln a, kept apart: see `shifted_log_normalizer_and_entropy`),
    the minimum score of each BLOCK consecutive tokens [batch, vocab / BLOCK], or None when
    BLOCK does not divide the vocabulary).

    -log p = ln a - (z - m): every term is exact or rounded at the scale of ln a, never at
    the scale of the logits."""
    row_max, log_total, entropy = shifted_log_normalizer_and_entropy(logits)
    shifted = torch.abs(log_total - (logits - row_max) - entropy)
    if logits.shape[-1] % BLOCK:
        return shifted, row_max, log_total, None
    return shifted, row_max, log_total, shifted.view(logits.shape[0], -1, BLOCK).amin(dim=-1)


def _candidate_threshold(
    logits: torch.Tensor,
    shifted: torch.Tensor,
    block_minima: torch.Tensor | None,
    row_max: torch.Tensor,
    log_total: torch.Tensor,
    typical_p: torch.Tensor,
    min_tokens_to_keep: int,
    candidates: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows decided [batch], their thresholds [batch, 1]) from the top candidates."""
    top_shifted, top_indices = smallest(shifted, block_minima, candidates)
    masses = ((logits.gather(-1, top_indices) - row_max) - log_total).exp()  # [batch, candidates]
    cumulative = masses.cumsum(dim=-1)
    p = typical_p.unsqueeze(-1)
    last_kept = (cumulative < p).sum(dim=-1)  # [batch]
    decided = (
        (last_kept < candidates)
        & ~((cumulative - p).abs() < BOUNDARY_MARGIN).any(dim=-1)
        & (last_kept >= min_tokens_to_keep - 1)
    )
    return decided, top_shifted.gather(-1, last_kept.clamp(max=candidates - 1).unsqueeze(-1))


def smallest(scores: torch.Tensor, block_minima: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(scores, k, largest=False, sorted=True)` [batch, k], searching only k blocks.

    The k smallest scores all lie in the k blocks (of BLOCK consecutive tokens) whose
    minima are the smallest: a block holding one of them that is not among those k has
    a minimum at least that of each of the k, so those k minima are already k scores no
    larger. Two small top-k's (over vocab / BLOCK minima, then k * BLOCK scores) replace
    one over the vocabulary. Ties may pick other indices, as torch.topk's may.
    """
    if block_minima is None or k >= block_minima.shape[-1]:
        return torch.topk(scores, k, dim=-1, largest=False, sorted=True)
    _, blocks = torch.topk(block_minima, k, dim=-1, largest=False, sorted=False)  # [batch, k]
    in_blocks = scores.view(scores.shape[0], -1, BLOCK).gather(1, blocks.unsqueeze(-1).expand(-1, -1, BLOCK))
    values, positions = torch.topk(in_blocks.flatten(1), k, dim=-1, largest=False, sorted=True)  # [batch, k]
    return values, blocks.gather(1, positions // BLOCK) * BLOCK + positions % BLOCK


@CompiledOnCpu
def _remove_above(logits: torch.Tensor, shifted: torch.Tensor, threshold: torch.Tensor) -> None:
    # Measuring the kept entropy in this pass too was slower: inductor then writes the
    # result to a new buffer and copies it back.
    logits.masked_fill_(shifted > threshold, float("-inf"))
