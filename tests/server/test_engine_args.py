"""What a CPU engine is started with: chunked prefill with a per-step budget, except for an
engine that reports processed log-probabilities, which keeps vLLM's seeds (server/engine/holder.py)."""

from __future__ import annotations

from entropy_serve.model_store import prepare_default_model
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine.holder import CPU_STEP_TOKENS, engine_args, seeds_drawn_by_adapter


def config(**fields) -> ServerConfig:
    return ServerConfig(model=str(prepare_default_model()), served_model_name="m", max_model_len=4096, **fields)


def test_cpu_engines_prefill_long_prompts_in_chunks_beside_the_rest():
    args = engine_args(config())
    assert args.enable_chunked_prefill and args.max_num_batched_tokens == CPU_STEP_TOKENS == 512
    assert args.long_prefill_token_threshold == 256 and args.long_prefill_token_threshold_adaptive
    assert seeds_drawn_by_adapter(config())
    bigger = engine_args(config(max_num_batched_tokens=2048))
    assert (bigger.max_num_batched_tokens, bigger.long_prefill_token_threshold) == (2048, 1024)


def test_an_engine_reporting_processed_logprobs_keeps_vllms_seeds_and_whole_prompts():
    trainer = config(logprobs_mode="processed_logprobs")
    assert not seeds_drawn_by_adapter(trainer)
    args = engine_args(trainer)
    assert not args.enable_chunked_prefill and args.max_num_batched_tokens == 4096
