"""Repetition, frequency and presence penalties, as vLLM applies them.

For a row with output token counts c (over the tokens generated so far) and the set S
of tokens seen in its prompt or its output:
    repetition r: a logit x of a token in S becomes x / r if x > 0, else x * r
                  (Keskar et al. 2019, CTRL; vLLM's `apply_repetition_penalties`)
    frequency f:  x -= f * c        (OpenAI's definition, as vLLM's)
    presence p:   x -= p * [c > 0]
in this order, on the logits before temperature (vLLM 0.32,
`model_executor/layers/utils.apply_penalties`). Neutral values: r = 1, f = p = 0.

Our adapter applies them only to rows it draws with the request's own seed (chain.py's
vLLM order): vLLM applies its penalties after every logits processor, so it would apply
them to a distribution our adapter has already drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenHistory:
    """What penalties read, for a batch of rows."""

    output_counts: torch.Tensor  # [rows, vocab] float32: times each token was generated
    seen: torch.Tensor  # [rows, vocab] bool: in the prompt or the output

    @classmethod
    def of(
        cls,
        prompts: Sequence[Sequence[int]],
        outputs: Sequence[Sequence[int]],
        vocab_size: int,
        device: torch.device | None = None,
    ) -> TokenHistory:
        counts = torch.zeros(len(outputs), vocab_size, dtype=torch.float32, device=device)
        seen = torch.zeros(len(outputs), vocab_size, dtype=torch.bool, device=device)
        for row, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
            if output:
                ids = torch.tensor(list(output), dtype=torch.int64, device=device)
                counts[row].index_add_(0, ids, torch.ones(len(ids), device=device))
            if prompt:
                seen[row, torch.tensor(list(prompt), dtype=torch.int64, device=device)] = True
        return cls(counts, seen | (counts > 0))


def apply_penalties_(
    logits: torch.Tensor,
    history: TokenHistory,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> None:
    """Penalize `logits` [rows, vocab] in place; one penalty of each kind per row [rows]."""
    factor = torch.where(history.seen, repetition.unsqueeze(-1), torch.ones_like(logits))
    logits.copy_(torch.where(logits > 0, logits / factor, logits * factor))
    logits.sub_(frequency.unsqueeze(-1) * history.output_counts)
    logits.sub_(presence.unsqueeze(-1) * (history.output_counts > 0))
