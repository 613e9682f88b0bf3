"""Locally typical sampling (Meister, Pimentel, Wiher, Cotterell, 2023, TACL).

Keep the tokens whose surprisal -log p_i is closest to the entropy H, in order of
|(-log p_i) - H|, until their probability mass reaches `typical_p`; always keep at least
`min_tokens_to_keep`. The kept set is exactly the one transformers'
`TypicalLogitsWarper` keeps (same ordering, same threshold rule, ties included: every
token whose shifted score equals the last kept one's is kept too).

Order of operations, per row:
1. shifted scores |(-log p_i) - H| and log Z, one fused pass (compiled on CPU);
2. the cut: the kept set is every token whose shifted score is at most a threshold, the
   score at which the mass, in shifted order, reaches `typical_p`. That threshold only
   depends on the tokens up to that point, so we look at the tokens with the smallest
   shifted scores (a top-k, much cheaper than a sort, in growing stages); rows whose
   mass does not reach `typical_p` among them, or whose decision lies within float
   noise of `typical_p`, or where `min_tokens_to_keep` overrides the threshold, take
   the full sort, which replicates transformers operation for operation;
3. removal: tokens above their row's threshold become -inf (one fused pass).
"""

from __future__ import annotations

import torch

from entropy_serve.samplers.compiled import CompiledOnCpu
from entropy_serve.samplers.entropy import entropy_from_logprobs

# Top-k sizes tried in turn before a full sort: 256 settles nearly every row of a
# confident model, 4096 most of the rest (measured on SmolLM2 rows at T = 1.2).
CANDIDATE_STAGES = (256, 4096)
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
            sub_remove[exact_rows] = _sorted_mask(sub[exact_rows], typical_p[rows][exact_rows], min_tokens_to_keep)
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
        exact.masked_fill_(_sorted_mask(exact, typical_p[exact_rows], min_tokens_to_keep), float("-inf"))
    _remove_above(logits, shifted, threshold)  # exact rows have threshold +inf here
    if exact_rows.numel():
        logits[exact_rows] = exact


def _cut(
    logits: torch.Tensor, typical_p: torch.Tensor, min_tokens_to_keep: int, stages: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shifted scores [batch, vocab], thresholds [batch, 1], rows left to the full sort).

    A row's kept set is `shifted <= threshold`; rows left to the full sort have +inf.
    """
    shifted, log_normalizer = _shifted_scores(logits)
    threshold = torch.full_like(log_normalizer, float("inf"))
    pending = torch.arange(logits.shape[0], device=logits.device)
    for candidates in stages:
        if pending.numel() == 0 or candidates >= logits.shape[-1]:
            break
        every_row = pending.numel() == logits.shape[0]
        decided, row_threshold = _candidate_threshold(
            logits if every_row else logits[pending],
            shifted if every_row else shifted[pending],
            log_normalizer[pending],
            typical_p[pending],
            min_tokens_to_keep,
            candidates,
        )
        threshold[pending[decided]] = row_threshold[decided]
        pending = pending[~decided]
    return shifted, threshold, pending


@CompiledOnCpu
def _shifted_scores(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [batch, vocab] -> (|(-log p) - H| [batch, vocab], log Z [batch, 1])."""
    log_normalizer = torch.logsumexp(logits, dim=-1, keepdim=True)
    logprobs = logits - log_normalizer
    entropy = entropy_from_logprobs(logprobs).unsqueeze(-1)  # [batch, 1]
    return torch.abs(-logprobs - entropy), log_normalizer


def _candidate_threshold(
    logits: torch.Tensor,
    shifted: torch.Tensor,
    log_normalizer: torch.Tensor,
    typical_p: torch.Tensor,
    min_tokens_to_keep: int,
    candidates: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows decided [batch], their thresholds [batch, 1]) from the top candidates."""
    top_shifted, top_indices = torch.topk(shifted, candidates, dim=-1, largest=False, sorted=True)
    cumulative = (logits.gather(-1, top_indices) - log_normalizer).exp().cumsum(dim=-1)  # [batch, candidates]
    p = typical_p.unsqueeze(-1)
    last_kept = (cumulative < p).sum(dim=-1)  # [batch]
    decided = (
        (last_kept < candidates)
        & ~((cumulative - p).abs() < BOUNDARY_MARGIN).any(dim=-1)
        & (last_kept >= min_tokens_to_keep - 1)
    )
    return decided, top_shifted.gather(-1, last_kept.clamp(max=candidates - 1).unsqueeze(-1))


@CompiledOnCpu
def _remove_above(logits: torch.Tensor, shifted: torch.Tensor, threshold: torch.Tensor) -> None:
    logits.masked_fill_(shifted > threshold, float("-inf"))


def _sorted_mask(logits: torch.Tensor, typical_p: torch.Tensor, min_tokens_to_keep: int) -> torch.Tensor:
    """transformers' TypicalLogitsWarper, operation for operation (full sort)."""
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
