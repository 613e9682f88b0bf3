"""What both engine adapters do each step, once they know which rows are ours.

1. rows whose spec says `shape` get the whole sampler chain (samplers/chain.py), on a
   gathered copy written back in place (the other rows' logits are never touched), or
   on the logits themselves when every row is ours; a row with a grammar is masked
   inside the chain, after its model entropy is measured (grammar.py);
1b. shaped rows with a seed get their token drawn here, with that seed
   (samplers/draw.py): the row becomes one finite logit, which vLLM then samples;
2. the other rows of ours (greedy ones: vLLM takes their argmax) get their model
   entropy measured, then their grammar mask, if any, so vLLM's argmax obeys it; their
   sampled distribution is one-hot (entropy 0, temperature 0);
3. every row's of ours (position, entropies, temperature, self-certainty) is published
   to the server.

Imports torch and our samplers only (the channel's ZeroMQ and the grammar's xgrammar
where a step needs them), so the GPU lane (tests/gpu/) runs this row logic on machines
with CUDA PyTorch and no engine installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from entropy_serve.samplers.chain import HAPO, EntropyProfile, RowParams, apply_chain
from entropy_serve.samplers.draw import draw_
from entropy_serve.samplers.entropy import entropy_and_self_certainty
from entropy_serve.server.engine.adapters.spec import RowSpec

if TYPE_CHECKING:
    from entropy_serve.samplers.penalties import TokenHistory
    from entropy_serve.server.engine.adapters.channel import EntropyPublisher, Record

# This runs in vLLM's engine process, where only vLLM's logger tree has handlers.
logger = logging.getLogger(f"vllm.{__name__}")


class RowPlan:
    """The stacked parameters of one batch composition; rebuilt only when rows change."""

    def __init__(self, rows: list[int], specs: list[RowSpec], device: torch.device):
        shaped = [i for i, s in enumerate(specs) if s.shape]
        measured = [i for i, s in enumerate(specs) if not s.shape]
        self.rows = rows
        self.specs = specs
        self.shaped_index = shaped  # positions in `specs` (and in a bitmask of them)
        self.greedy_index = measured
        self.shaped_rows = torch.tensor([rows[i] for i in shaped], dtype=torch.int64, device=device)
        self.shaped_specs = [specs[i] for i in shaped]
        self.shaped_params = RowParams.stack([s.params for s in self.shaped_specs], device) if shaped else None
        self.shaped_penalized = self.shaped_params is not None and self.shaped_params.has_penalties()
        # positions in shaped_rows of the rows the adapter draws, and their seeds
        self.seeded_index = [j for j, s in enumerate(self.shaped_specs) if s.seed is not None]
        self.seeded = torch.tensor(self.seeded_index, dtype=torch.int64, device=device)
        self.seeds = [self.shaped_specs[j].seed for j in self.seeded_index]
        self.greedy_rows = torch.tensor([rows[i] for i in measured], dtype=torch.int64, device=device)
        self.greedy_specs = [specs[i] for i in measured]


def process_rows(
    logits: torch.Tensor,
    plan: RowPlan,
    positions: dict[int, int],
    publisher: EntropyPublisher,
    profile: EntropyProfile | None,
    bitmask: torch.Tensor | None = None,
    history: Callable[[list[int]], TokenHistory] | None = None,
) -> torch.Tensor:
    """Shape and measure our rows of `logits` [batch, vocab] in place; `positions`: row ->
    output index; `bitmask`: grammar masks [len(plan.specs), words], in plan.specs' order;
    `history`: batch rows -> their TokenHistory, for rows with penalties."""
    records: list[Record] = []
    if bitmask is not None:
        from entropy_serve.server.engine.adapters.grammar import apply_bitmask
    if plan.shaped_params is not None:
        # Every row ours (rows are distinct, so in order 0..batch-1): shaped in place.
        every_row = len(plan.shaped_specs) == logits.shape[0] and logits.dtype == torch.float32
        # index_select / index_copy_ rather than indexing: a third of the time on CPU.
        sub = logits if every_row else logits.index_select(0, plan.shaped_rows).float()
        constrain = None
        if bitmask is not None:
            shaped_mask = bitmask[plan.shaped_index]
            constrain = lambda rows: apply_bitmask(rows, shaped_mask)  # noqa: E731
        shaped_rows = plan.shaped_rows.tolist()
        if plan.shaped_penalized and history is None:
            raise ValueError("this adapter cannot apply penalties (it has no token history)")
        tokens = history(shaped_rows) if plan.shaped_penalized else None
        result = apply_chain(sub, plan.shaped_params, profile, constrain, tokens)
        if plan.seeded_index:
            drawn = sub.index_select(0, plan.seeded)
            draw_(drawn, plan.seeds, [positions[shaped_rows[j]] for j in plan.seeded_index])
            sub.index_copy_(0, plan.seeded, drawn)
        if not every_row:
            logits.index_copy_(0, plan.shaped_rows, sub.to(logits.dtype))
        values = torch.stack(
            [result.model_entropy, result.sampled_entropy, result.temperature, result.model_self_certainty], dim=-1
        ).tolist()
        for row, spec, (h_model, h_sampled, t, certainty) in zip(shaped_rows, plan.shaped_specs, values):
            records.append((spec.key, positions[row], h_model, h_sampled, t, certainty))
    if plan.greedy_specs:
        every_row = len(plan.greedy_specs) == logits.shape[0]
        # Measured in place when every row is ours and none is masked (no copy at all).
        greedy = logits if every_row and bitmask is None else logits.index_select(0, plan.greedy_rows)
        h_model, certainty = (values.tolist() for values in entropy_and_self_certainty(greedy))
        if bitmask is not None:
            apply_bitmask(greedy, bitmask[plan.greedy_index])
            logits.index_copy_(0, plan.greedy_rows, greedy)
        for row, spec, h, c in zip(plan.greedy_rows.tolist(), plan.greedy_specs, h_model, certainty):
            records.append((spec.key, positions[row], h, 0.0, 0.0, c))
    publisher.publish(records)
    return logits


def warm_up(vocab_size: int, device: torch.device) -> None:
    """Run the chain on a batch of one and of two rows (torch.compile compiles once per
    shape specialisation: 26 s in all on a 2-core machine, a few seconds from inductor's
    disk cache), so that the compiling happens while the engine starts, not in a
    client's first steps."""
    started = time.perf_counter()
    profile = EntropyProfile(log_entropy_pivot=0.0, log_entropy_spread=1.0)
    generator = torch.Generator(device=device).manual_seed(0)
    for num_rows in (1, 2):
        logits = torch.randn(num_rows, vocab_size, generator=generator, device=device)
        apply_chain(logits, RowParams.uniform(num_rows, device, method=HAPO, typical_p=0.9), profile)
    logger.info("entropy-serve: samplers ready in %.1f s", time.perf_counter() - started)
