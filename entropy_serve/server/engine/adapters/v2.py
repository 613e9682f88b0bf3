"""Adapter for model-runner-v2's logits-processor interface
(`vllm.v1.worker.gpu.sample.logits_processor`), the CUDA build's default.

Requests are keyed by persistent slot: `add_request` (re)initializes a slot, and each
`apply` maps logits rows to slots through `ctx.expanded_idx_mapping`. Like V1, `apply`
runs before vLLM's temperature, min-p and top-k/top-p.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcessor, LogitsProcRequestState

from entropy_serve.server.engine.adapters.channel import EntropyPublisher, engine_index
from entropy_serve.server.engine.adapters.grammar import GrammarRows
from entropy_serve.server.engine.adapters.rows import RowPlan, process_rows
from entropy_serve.server.engine.adapters.spec import RowSpec, profile_from_env


class EntropyLogitsProcessorV2(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        RowSpec.from_extra_args(sampling_params.extra_args)

    def __init__(self, vllm_config, req_states: LogitsProcRequestState) -> None:
        self.req_states = req_states
        self.slots: dict[int, RowSpec] = {}
        self.publisher = EntropyPublisher(engine_index(vllm_config))
        self.profile = profile_from_env()  # the server's, fixed for the engine's life
        self._plans: dict[tuple[int, ...], RowPlan] = {}
        self.grammars = GrammarRows.of(vllm_config) if vllm_config is not None else None  # None in unit tests

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        spec = RowSpec.from_extra_args(sampling_params.extra_args)
        self._plans.clear()
        previous = self.slots.get(req_idx)
        if previous is not None and self.grammars is not None:  # slots are recycled: the old request is gone
            self.grammars.forget(previous.key)
        if spec is None:
            self.slots.pop(req_idx, None)
            return False
        self.slots[req_idx] = spec
        if spec.compile_grammar and self.grammars is not None:
            self.grammars.prepare(spec.compile_grammar)
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not self.slots:
            return logits
        slot_of_row = ctx.expanded_idx_mapping.tolist()
        rows = [row for row, slot in enumerate(slot_of_row) if slot in self.slots]
        if not rows:
            return logits
        signature = tuple(slot_of_row[r] for r in rows)
        plan = self._plans.get(signature)
        if plan is None:
            plan = self._plans[signature] = RowPlan(rows, [self.slots[s] for s in signature], logits.device)
        # ctx.pos is the position of the fed token; the sampled one is the next,
        # at output index pos + 1 - prompt_len.
        input_positions = ctx.pos[rows].tolist()
        prompt_len = self.req_states.prompt_len.np
        positions = {row: pos + 1 - int(prompt_len[slot]) for row, slot, pos in zip(rows, signature, input_positions)}
        bitmask = None
        if self.grammars is not None:
            outputs = [
                self._output_ids(ctx, r, s, positions[r]) if self.slots[s].grammar else ()
                for r, s in zip(rows, signature)
            ]
            bitmask = self.grammars.bitmask(plan.specs, outputs)
        return process_rows(logits, plan, positions, self.publisher, self.profile, bitmask)

    def _output_ids(self, ctx: LogitsContext, row: int, slot: int, num_output: int) -> list[int]:
        """The tokens request `slot` has generated before this step: committed ones from
        all_token_ids, and the newest, which is this step's input token."""
        if num_output <= 0:
            return []
        prompt_len = int(self.req_states.prompt_len.np[slot])
        committed = self.req_states.all_token_ids.gpu[slot, prompt_len : prompt_len + num_output - 1].tolist()
        return committed + [int(ctx.input_ids[row])]
