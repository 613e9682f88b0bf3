"""Both engine adapters on hand-built batches: rows added, removed, moved; mixed requests."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

from entropy_serve.samplers.chain import EDT, EntropyProfile, RowParams, SamplerParams, apply_chain
from entropy_serve.samplers.draw import draw_
from entropy_serve.samplers.penalties import TokenHistory
from entropy_serve.server.engine.adapters.spec import RowSpec
from entropy_serve.server.engine.adapters.v1 import EntropyLogitsProcessorV1
from entropy_serve.server.engine.adapters.v2 import EntropyLogitsProcessorV2

VOCAB = 64
TYPICAL = RowSpec(key="typical", shape=True, params=SamplerParams(temperature=0.9, typical_p=0.3))
ADAPTIVE = RowSpec(key="edt", shape=True, params=SamplerParams(temperature=1.0, method=EDT, edt_theta=0.5, top_k=10))
GREEDY = RowSpec(key="greedy", shape=False)
MIN_P = RowSpec(key="min_p", shape=True, params=SamplerParams(min_p=0.2))


class Collector:
    def __init__(self):
        self.records = []

    def publish(self, records):
        self.records.extend(records)


def params(spec: RowSpec | None) -> SamplingParams:
    return SamplingParams(extra_args=spec.to_extra_args() if spec else None)


def logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def expected_rows(batch: torch.Tensor, specs: list[RowSpec]) -> torch.Tensor:
    shaped = batch.clone()
    result = apply_chain(shaped, RowParams.stack([s.params for s in specs]), EntropyProfile(0.0, 1.0))
    return shaped, result


def v1_processor() -> EntropyLogitsProcessorV1:
    processor = EntropyLogitsProcessorV1(None, torch.device("cpu"), False)
    processor.publisher = Collector()
    return processor


def update(added=(), removed=(), moved=(), size=4) -> BatchUpdate:
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def test_v1_rows_without_a_spec_are_untouched_and_cost_nothing():
    processor = v1_processor()
    processor.update_state(update(added=[(0, params(None), [1], []), (1, SamplingParams(), [1], [])]))
    batch = logits(2)
    assert processor.apply(batch.clone()).equal(batch)
    assert processor.publisher.records == []


def test_v1_mixed_batch_shapes_only_its_rows_and_reports_positions():
    processor = v1_processor()
    outputs = {i: [7] * i for i in range(4)}  # live output lists: row i has i tokens so far
    specs = [TYPICAL, None, ADAPTIVE, GREEDY]
    processor.update_state(update(added=[(i, params(s), [1], outputs[i]) for i, s in enumerate(specs)]))
    batch = logits(4)
    out = processor.apply(batch.clone())
    assert out[1].equal(batch[1])  # plain row
    assert out[3].equal(batch[3])  # greedy row: vLLM takes its argmax
    shaped, result = expected_rows(batch[[0, 2]], [TYPICAL, ADAPTIVE])
    assert out[[0, 2]].equal(shaped)
    records = {r[0]: r for r in processor.publisher.records}
    assert set(records) == {"typical", "edt", "greedy"}
    assert records["typical"][1] == 0 and records["edt"][1] == 2 and records["greedy"][1] == 3
    assert records["edt"][2:] == pytest.approx(
        (
            result.model_entropy[1].item(),
            result.sampled_entropy[1].item(),
            result.temperature[1].item(),
            result.model_self_certainty[1].item(),
        )
    )
    assert records["greedy"][3:5] == (0.0, 0.0)
    log_probs = torch.log_softmax(batch[3].double(), -1)
    assert records["greedy"][5] == pytest.approx(-math.log(batch.shape[-1]) - log_probs.mean().item(), abs=1e-4)
    # Output lists are live references: one more token moves the position on.
    outputs[0].append(5)
    processor.publisher.records.clear()
    processor.apply(batch.clone())
    assert {r[0]: r[1] for r in processor.publisher.records}["typical"] == 1


def test_v1_batch_of_only_our_rows_is_shaped_in_place():
    processor = v1_processor()
    specs = [ADAPTIVE, TYPICAL, MIN_P]
    processor.update_state(update(added=[(i, params(s), [1], []) for i, s in enumerate(specs)], size=3))
    batch = logits(3, seed=3)
    given = batch.clone()
    out = processor.apply(given)
    shaped, _ = expected_rows(batch, specs)
    assert out.equal(shaped) and out.data_ptr() == given.data_ptr()
    assert [r[0] for r in processor.publisher.records] == ["edt", "typical", "min_p"]


def test_v1_seeded_rows_are_drawn_with_their_penalties_and_seed():
    """A SEEDED row (sampler_plan.py): penalties from its prompt and output, vLLM's order,
    then one finite logit at the token the seed draws at its position."""
    seeded = RowSpec(
        key="seeded",
        shape=True,
        seed=7,
        params=SamplerParams(temperature=0.8, repetition_penalty=1.5, presence_penalty=0.5, vllm_order=1),
    )
    processor = v1_processor()
    prompt, output = [3, 4], [5, 5, 6]
    processor.update_state(update(added=[(0, params(TYPICAL), [1], []), (1, params(seeded), prompt, output)], size=2))
    batch = logits(2, seed=4)
    out = processor.apply(batch.clone())

    expected = batch[[1]].clone()
    apply_chain(expected, RowParams.stack([seeded.params]), history=TokenHistory.of([prompt], [output], VOCAB))
    token = draw_(expected.clone(), [7], [len(output)])[0]
    assert out[1].isfinite().sum() == 1 and out[1].argmax() == token
    assert out[0].equal(expected_rows(batch[[0]], [TYPICAL])[0][0])  # the other row shaped as ever
    (record,) = [r for r in processor.publisher.records if r[0] == "seeded"]
    assert record[1] == len(output)


def test_v1_remove_then_add_then_move_and_swap():
    processor = v1_processor()
    processor.update_state(
        update(added=[(0, params(TYPICAL), [1], []), (1, params(MIN_P), [1], []), (2, params(GREEDY), [1], [])])
    )
    # Row 0 finishes; a plain request takes its place; greedy moves 2 -> 0 (compaction)
    # after the plain one was added at 3; then rows 0 and 1 swap.
    processor.update_state(
        update(
            removed=[0],
            added=[(3, params(None), [1], [])],
            moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL), (0, 1, MoveDirectionality.SWAP)],
        )
    )
    assert {row: spec.key for row, (spec, *_) in processor.rows.items()} == {1: "greedy", 0: "min_p"}
    batch = logits(4, seed=1)
    out = processor.apply(batch.clone())
    shaped, _ = expected_rows(batch[[0]], [MIN_P])
    assert out[0].equal(shaped[0])
    assert out[1].equal(batch[1]) and out[3].equal(batch[3])
    assert sorted(r[0] for r in processor.publisher.records) == ["greedy", "min_p"]


def test_v1_added_request_replacing_ours_clears_the_row():
    processor = v1_processor()
    processor.update_state(update(added=[(0, params(TYPICAL), [1], [])]))
    processor.update_state(update(added=[(0, params(None), [1], [])]))
    batch = logits(1)
    assert processor.apply(batch.clone()).equal(batch)


def v2_processor(prompt_lens: list[int]) -> EntropyLogitsProcessorV2:
    req_states = SimpleNamespace(prompt_len=SimpleNamespace(np=np.array(prompt_lens)))
    processor = EntropyLogitsProcessorV2(None, req_states)
    processor.publisher = Collector()
    return processor


def context(slots: list[int], positions: list[int]) -> LogitsContext:
    mapping = torch.tensor(slots)
    return LogitsContext(
        expanded_idx_mapping=mapping,
        idx_mapping=mapping,
        idx_mapping_np=mapping.numpy(),
        expanded_local_pos=torch.zeros(len(slots), dtype=torch.int64),
        input_ids=torch.zeros(len(slots), dtype=torch.int64),
        pos=torch.tensor(positions),
        seq_lens_upper_bound_np=np.array(positions) + 1,
    )


def test_v2_slots_map_rows_and_positions():
    processor = v2_processor(prompt_lens=[5, 3, 8, 2])
    assert processor.add_request(2, params(TYPICAL))
    assert not processor.add_request(0, params(None))
    assert processor.add_request(3, params(GREEDY))
    # This step's rows, reordered: slot 3, slot 0, slot 2.
    batch = logits(3, seed=2)
    out = processor.apply(batch.clone(), context([3, 0, 2], positions=[4, 9, 10]))
    assert out[0].equal(batch[0]) and out[1].equal(batch[1])
    shaped, _ = expected_rows(batch[[2]], [TYPICAL])
    assert out[2].equal(shaped[0])
    records = {r[0]: r[1] for r in processor.publisher.records}
    # Output index of the token sampled now: pos + 1 - prompt_len.
    assert records == {"typical": 10 + 1 - 8, "greedy": 4 + 1 - 2}


def test_v2_recycled_slot_is_reinitialised():
    processor = v2_processor(prompt_lens=[1])
    processor.add_request(0, params(TYPICAL))
    processor.add_request(0, params(None))  # slot reused by a plain request
    batch = logits(1)
    assert processor.apply(batch.clone(), context([0], [3])).equal(batch)
    assert processor.publisher.records == []


@pytest.mark.parametrize("processor_class", [EntropyLogitsProcessorV1, EntropyLogitsProcessorV2])
def test_malformed_specs_are_rejected_at_admission(processor_class):
    with pytest.raises(ValueError, match="malformed"):
        processor_class.validate_params(SamplingParams(extra_args={"entropy_serve": {"key": "k", "bogus": 1}}))
    processor_class.validate_params(SamplingParams())
