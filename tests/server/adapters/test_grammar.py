"""Grammar masks in the adapters, on a hand-made vocabulary: the model entropy is the
unconstrained model's, the sampled entropy that of the masked distribution."""

from __future__ import annotations

import math

import numpy as np
import torch
import xgrammar as xgr
from test_adapters import VOCAB, Collector, context, logits, params, update, v1_processor, v2_processor
from vllm.sampling_params import StructuredOutputsParams

from entropy_serve.samplers.chain import SamplerParams
from entropy_serve.server.engine.adapters.grammar import GrammarRows
from entropy_serve.server.engine.adapters.spec import RowSpec, grammar_ready_key
from entropy_serve.server.protocol.constraints import OutputConstraint

DIGITS = list(range(10))  # token i is the digit i
EOS = VOCAB - 1
WORDS = [str(d) for d in DIGITS] + [chr(ord("a") + i) for i in range(26)] + ["{", "}", '"', ":", " "]
ENCODED = WORDS + [f"<x{i}>" for i in range(VOCAB - 1 - len(WORDS))] + ["</s>"]
TWO_DIGITS = OutputConstraint("structured_outputs", StructuredOutputsParams(regex="[0-9][0-9]")).grammar_text()


def hand_grammars() -> GrammarRows:
    info = lambda: xgr.TokenizerInfo(ENCODED, vocab_type=xgr.VocabType.RAW, vocab_size=VOCAB, stop_token_ids=[EOS])  # noqa: E731
    return GrammarRows(VOCAB, info)


def entropy_of(values: torch.Tensor) -> float:
    p = torch.softmax(values.double(), -1)
    return float(-(p * torch.log(p)).sum())


def test_shaped_row_model_entropy_is_unconstrained_and_sampled_entropy_is_of_the_masked_distribution():
    spec = RowSpec(key="digits", shape=True, params=SamplerParams(temperature=0.7), grammar=TWO_DIGITS)
    processor = v1_processor()
    processor.grammars = hand_grammars()
    output_ids: list[int] = []
    processor.update_state(update(added=[(0, params(spec), [1], output_ids)], size=1))
    batch = logits(1, seed=5)
    out = processor.apply(batch.clone())
    ((key, position, h_model, h_sampled, temperature, _),) = processor.publisher.records
    assert (key, position) == ("digits", 0) and math.isclose(temperature, 0.7, rel_tol=1e-6)
    assert math.isclose(h_model, entropy_of(batch[0]), rel_tol=1e-5)  # every token of the vocabulary
    assert math.isclose(h_sampled, entropy_of(batch[0, DIGITS] / 0.7), rel_tol=1e-5)  # the ten digits, after T
    assert torch.isinf(out[0, 10:]).all() and torch.isfinite(out[0, DIGITS]).all()
    # Two digits later the grammar is complete: only the stop token is left.
    output_ids += [3, 7]
    processor.publisher = Collector()
    out = processor.apply(logits(1, seed=6))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [EOS]
    ((_, position, h_model, h_sampled, _, _),) = processor.publisher.records
    assert position == 2 and h_model > 1.0 and h_sampled < 1e-6


def test_greedy_row_is_measured_unmasked_then_masked_for_the_argmax():
    spec = RowSpec(key="greedy", shape=False, grammar=TWO_DIGITS)
    processor = v1_processor()
    processor.grammars = hand_grammars()
    processor.update_state(update(added=[(0, params(spec), [1], [])], size=1))
    batch = logits(1, seed=7)
    batch[0, 20] = 50.0  # the model's favourite is a letter, which the grammar forbids
    out = processor.apply(batch.clone())
    ((_, _, h_model, h_sampled, _, _),) = processor.publisher.records
    assert math.isclose(h_model, entropy_of(batch[0]), rel_tol=1e-4, abs_tol=1e-6) and h_sampled == 0.0
    assert int(out[0].argmax()) == int(batch[0, DIGITS].argmax())


def test_rows_without_a_grammar_are_not_masked_and_removed_rows_drop_their_matcher():
    constrained = RowSpec(key="c", shape=True, grammar=TWO_DIGITS)
    free = RowSpec(key="f", shape=True)
    processor = v1_processor()
    processor.grammars = hand_grammars()
    processor.update_state(update(added=[(0, params(constrained), [1], []), (1, params(free), [1], [])], size=2))
    out = processor.apply(logits(2, seed=8))
    assert torch.isfinite(out[1]).all() and torch.isinf(out[0, 10:]).all()
    assert set(processor.grammars.matchers) == {"c"}
    processor.update_state(update(removed=[0], size=1))
    assert processor.grammars.matchers == {}


def test_continuation_prefix_is_accepted_before_the_output():
    spec = RowSpec(key="cont", shape=True, grammar=TWO_DIGITS, grammar_prefix=[4])
    processor = v1_processor()
    processor.grammars = hand_grammars()
    processor.update_state(update(added=[(0, params(spec), [1, 4], [])], size=1))
    out = processor.apply(logits(1, seed=9))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == DIGITS  # the second digit


def test_v2_reads_the_generated_tokens_from_the_request_state():
    spec = RowSpec(key="v2", shape=True, grammar=TWO_DIGITS)
    processor = v2_processor(prompt_lens=[3])
    processor.req_states.all_token_ids = type("Staged", (), {"gpu": torch.tensor([[1, 1, 1, 5, 0, 0]])})()
    processor.grammars = hand_grammars()
    processor.add_request(0, params(spec))
    ctx = context([0], positions=[3])  # the fed token (output 0) is this step's input id
    ctx = ctx.__class__(**{**ctx.__dict__, "input_ids": torch.tensor([5])})
    out = processor.apply(logits(1, seed=10), ctx)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == DIGITS
    out = processor.apply(
        logits(1, seed=11),
        ctx.__class__(**{**ctx.__dict__, "pos": torch.tensor([4]), "seq_lens_upper_bound_np": np.array([5])}),
    )
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [EOS]


def test_a_warm_up_row_compiles_its_grammar_off_the_step_and_says_when_it_is_ready():
    """The warm-up row (server/engine/grammar_warmup.py) is only measured; its grammar is compiled
    in the background, its readiness published from there, and the request that then
    uses the grammar finds it in the compiler's cache."""
    processor = v1_processor()
    processor.grammars = grammars = hand_grammars()
    ready = Collector()
    grammars.ready_publisher = ready
    warm_up = RowSpec(key="warm-up", shape=False, compile_grammar=TWO_DIGITS)
    processor.update_state(update(added=[(0, params(warm_up), [1], [])], size=1))
    out = processor.apply(logits(1, seed=2))
    assert torch.isfinite(out[0]).all()  # no mask on the warm-up row itself
    grammars._background.shutdown(wait=True)
    assert ready.records == [(grammar_ready_key(TWO_DIGITS), 0, 0.0, 0.0, 0.0, 0.0)]
    assert grammars.compiler().get_cache_size_bytes() > 0  # the real request's compile is a cache hit
