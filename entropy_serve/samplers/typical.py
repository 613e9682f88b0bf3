"""Locally typical sampling (Meister, Pimentel, Wiher, Cotterell, 2023, TACL).

Keep the tokens whose surprisal -log p_i is closest to the entropy H, in order of
|(-log p_i) - H|, until their probability mass reaches `typical_p`; always keep at least
`min_tokens_to_keep`. The kept set is exactly the one transformers'
`TypicalLogitsWarper` keeps (same ordering, same threshold rule, ties included: every
token whose shifted score equals the last kept one's is kept too).
"""

from __future__ import annotations

import torch


def typical_mask(logits: torch.Tensor, typical_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Boolean mask [batch, vocab] of tokens to REMOVE; rows with typical_p >= 1 keep all.

    logits: [batch, vocab] fp32; typical_p: [batch] in (0, 1].
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
    remove = sorted_remove.scatter(-1, sorted_indices, sorted_remove)
    return remove & (typical_p < 1.0).unsqueeze(-1)


def apply_typical(logits: torch.Tensor, typical_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Set the removed tokens' logits to -inf, in place; returns `logits`."""
    return logits.masked_fill_(typical_mask(logits, typical_p, min_tokens_to_keep), float("-inf"))
