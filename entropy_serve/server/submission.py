"""Run a prepared request's engine jobs: stream deltas, or accumulate whole outputs.

Every job is submitted as deltas. `stream` merges the jobs' streams, renumbers each
output to its choice index within its prompt, and pairs it with the per-token entropies
of its new tokens (waiting for them on the entropy channel when the request asked for
them); `run` accumulates the same deltas into whole outputs. Prometheus is fed as the
tokens arrive.

Leaving `stream` early (client gone, task cancelled) makes vLLM abort every job still
running: nothing keeps generating for a client that left.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from vllm.exceptions import VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.utils.async_utils import merge_async_iterators
from vllm.v1.engine.exceptions import EngineDeadError

from entropy_serve.server import metrics
from entropy_serve.server.adapters.channel import TokenEntropy
from entropy_serve.server.engine import EngineHolder
from entropy_serve.server.errors import BadRequest, EngineUnavailable
from entropy_serve.server.generation import PreparedRequest


@dataclass
class Delta:
    prompt_index: int
    key: str  # the engine job's
    output: RequestOutput  # its outputs' `index` is the choice index within the prompt
    entropies: dict[int, list[TokenEntropy]] = field(default_factory=dict)  # choice -> new tokens'


@dataclass
class PromptResult:
    output: RequestOutput  # whole outputs, sorted by choice index
    entropies: dict[int, list[TokenEntropy]]  # choice -> every generated token's
    num_cached_tokens: int = 0  # prompt tokens vLLM's prefix cache served, over the prompt's jobs


async def stream(holder: EngineHolder, prepared: PreparedRequest) -> AsyncIterator[Delta]:
    engine = holder.require_engine()
    arrival = time.perf_counter()
    first_token_at: float | None = None
    unfinished = {job.key for job in prepared.jobs}
    num_streamed: dict[tuple[str, int], int] = {}  # (job, index) -> tokens so far
    streams = [engine.generate({"prompt_token_ids": job.token_ids}, job.params, job.key) for job in prepared.jobs]
    metrics.REQUESTS_RUNNING.inc()
    try:
        async for job_index, output in merge_async_iterators(*streams):
            job = prepared.jobs[job_index]
            delta = Delta(job.prompt_index, job.key, output)
            for piece in output.outputs:
                start = num_streamed.get((job.key, piece.index), 0)
                num_streamed[(job.key, piece.index)] = start + len(piece.token_ids)
                piece.index += job.first_choice
                if job.reports_entropy:
                    positions = range(start, start + len(piece.token_ids))
                    delta.entropies[piece.index] = await holder.entropy_store.take(job.key, positions)
            num_new_tokens = _account_tokens(prepared, delta)
            if first_token_at is None and num_new_tokens:
                first_token_at = time.perf_counter()
                metrics.TIME_TO_FIRST_TOKEN_S.observe(first_token_at - arrival)
            if output.finished:
                unfinished.discard(job.key)
                if job.first_choice == 0:  # n samples of one prompt read it once
                    metrics.PROMPT_TOKENS.inc(len(output.prompt_token_ids or ()))
            yield delta
        metrics.E2E_LATENCY_S.observe(time.perf_counter() - arrival)
    except EngineDeadError as error:
        raise EngineUnavailable(f"the engine died: {error}") from error
    except VLLMValidationError as error:  # checks vLLM makes only when adding a request
        raise BadRequest(str(error), param=error.parameter) from error
    except TimeoutError as error:  # an entropy record never arrived
        raise EngineUnavailable(str(error)) from error
    finally:
        metrics.REQUESTS_RUNNING.dec()
        if unfinished:  # left early: merge_async_iterators' cleanup aborted them
            metrics.ABORTED.inc()
        for job in prepared.jobs:
            holder.entropy_store.forget(job.key)


async def run(holder: EngineHolder, prepared: PreparedRequest) -> list[PromptResult]:
    """Every prompt's whole outputs, in prompt order."""
    results: dict[int, PromptResult] = {}
    counted_cache: set[str] = set()  # jobs whose prefix-cache hits are counted
    async for delta in stream(holder, prepared):
        pieces = delta.output.outputs
        result = results.get(delta.prompt_index)
        if result is None:  # the first delta of a prompt holds its whole outputs from now on
            delta.output.outputs = []
            result = results[delta.prompt_index] = PromptResult(delta.output, {})
        if delta.key not in counted_cache:
            counted_cache.add(delta.key)
            result.num_cached_tokens += delta.output.num_cached_tokens or 0
        by_index = {c.index: c for c in result.output.outputs}
        for piece in pieces:
            if piece.index in by_index:
                _append(by_index[piece.index], piece)
            else:
                result.output.outputs.append(_own_lists(piece))
        for index, entropies in delta.entropies.items():
            result.entropies.setdefault(index, []).extend(entropies)
    for result in results.values():
        result.output.outputs.sort(key=lambda c: c.index)
    return [results[i] for i in range(prepared.num_prompts)]


def _account_tokens(prepared: PreparedRequest, delta: Delta) -> int:
    num_new_tokens = sum(len(c.token_ids) for c in delta.output.outputs)
    metrics.GENERATION_TOKENS.inc(num_new_tokens)
    for label in prepared.sampler_labels:
        metrics.TOKENS_BY_SAMPLER.labels(sampler=label).inc(num_new_tokens)
    for entropies in delta.entropies.values():
        for token in entropies:
            metrics.TOKEN_ENTROPY_NATS.observe(token.model_entropy_nats)
            metrics.SAMPLING_TEMPERATURE.observe(token.temperature)
    return num_new_tokens


def _own_lists(output: CompletionOutput) -> CompletionOutput:
    output.token_ids = list(output.token_ids)
    output.logprobs = None if output.logprobs is None else list(output.logprobs)
    return output


def _append(total: CompletionOutput, piece: CompletionOutput) -> None:
    total.text += piece.text
    total.token_ids.extend(piece.token_ids)
    if piece.logprobs is not None:
        total.logprobs.extend(piece.logprobs)
    total.finish_reason = piece.finish_reason
    total.stop_reason = piece.stop_reason


def count_usage(results: list[PromptResult]) -> tuple[int, int]:
    """(prompt tokens, completion tokens); the n samples of a prompt share its tokens."""
    num_prompt = sum(len(r.output.prompt_token_ids or ()) for r in results)
    num_completion = sum(len(c.token_ids) for r in results for c in r.output.outputs)
    return num_prompt, num_completion
