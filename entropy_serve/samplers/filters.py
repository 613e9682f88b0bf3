"""Truncation filters: top-k, top-p (nucleus), min-p, each equal to its transformers warper.

Each function takes logits [rows, vocab] (after temperature) and one parameter per row
[rows], and returns the boolean mask [rows, vocab] of tokens to REMOVE; none mutates its
input. Tokens already at -inf stay removed. The chain (chain.py) applies them in this
order, as transformers does: top-k, top-p, min-p, then typical (typical.py).
"""

from __future__ import annotations

import torch


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Top-k sampling (Fan, Lewis, Dauphin 2018, "Hierarchical Neural Story Generation").

    Keep the k most likely tokens; remove every token whose logit is below the row's
    k-th largest. Ties with the k-th value are kept, as in `TopKLogitsWarper`.
    top_k [rows] >= 1 (k larger than the vocabulary keeps everything).
    """
    k = top_k.clamp(max=logits.shape[-1])
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(-1, (k - 1).unsqueeze(-1))  # [rows, 1]
    return logits < kth


def top_p_mask(logits: torch.Tensor, top_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus sampling (Holtzman, Buys, Du, Forbes, Choi 2020, "The Curious Case of
    Neural Text Degeneration").

    Keep the smallest set of most likely tokens whose probability reaches `top_p`: in
    ascending order, remove tokens while the cumulative mass is <= 1 - top_p; always
    keep the `min_tokens_to_keep` most likely. As `TopPLogitsWarper`. top_p [rows] in (0, 1].
    """
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [rows, vocab], ascending
    sorted_remove = cumulative <= (1 - top_p).unsqueeze(-1)
    sorted_remove[..., -min_tokens_to_keep:] = False
    return sorted_remove.scatter(-1, sorted_indices, sorted_remove)


def min_p_mask(logits: torch.Tensor, min_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p sampling (Nguyen, Baker, Neo, Roush, Kirsch, Shwartz-Ziv 2024, "Turning Up
    the Heat: Min-p Sampling for Creative and Coherent LLM Outputs").

    Remove tokens with p_i < min_p * max_j p_j: the bar scales with the most likely
    token's probability, so confident rows are cut hard and flat rows barely. Always
    keep the `min_tokens_to_keep` most likely. As `MinPLogitsWarper`. min_p [rows] in [0, 1].
    """
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p.unsqueeze(-1) * probs.amax(dim=-1, keepdim=True)  # [rows, 1]
    remove = probs < threshold
    sorted_indices = torch.argsort(logits, descending=True, dim=-1)
    sorted_remove = remove.gather(-1, sorted_indices)
    sorted_remove[..., :min_tokens_to_keep] = False
    return sorted_remove.scatter(-1, sorted_indices, sorted_remove)
