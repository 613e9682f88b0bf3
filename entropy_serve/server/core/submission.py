"""Run a plan's engine jobs: stream each step's new tokens, or accumulate whole choices.

Every job is submitted as deltas. `stream` merges the jobs' streams and turns each of
vLLM's outputs into our own records (vLLM's objects are read, never changed): a
`Generated` per choice, under its choice index in the reply (computed once, by the
plan), paired with the per-token entropies of its new tokens (waiting for them on the
entropy channel when the adapter measures the request). `run` accumulates the same
records into whole choices. Prometheus is fed as the tokens arrive.

Every job of a plan goes to the plan's data-parallel engine, when it names one (a
strategy request's: engine/data_parallel.py), or to the engine that compiles its grammar.

Leaving `stream` early (client gone, task cancelled) makes vLLM abort every job still
running: nothing keeps generating for a client that left.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from vllm.exceptions import VLLMValidationError
from vllm.outputs import RequestOutput
from vllm.utils.async_utils import merge_async_iterators
from vllm.v1.engine.exceptions import EngineDeadError

from entropy_serve.server import metrics
from entropy_serve.server.core.planning import EngineJob, RequestPlan
from entropy_serve.server.engine.adapters.channel import EntropyStore, TokenEntropy
from entropy_serve.server.engine.holder import EngineHolder
from entropy_serve.server.errors import BadRequest, EngineUnavailable


@dataclass
class Generated:
    """One choice's tokens: those new in a step (`stream`), or all of them (`run`)."""

    index: int  # the choice index in the reply
    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict] | None  # vLLM's per-token {token id: Logprob}, when asked for
    finish_reason: str | None = None  # vLLM's vocabulary; responses.py maps it to OpenAI's
    stop_reason: int | str | None = None
    entropies: list[TokenEntropy] = field(default_factory=list)  # per token, when measured

    def extend(self, more: Generated) -> None:
        self.text += more.text
        self.token_ids.extend(more.token_ids)
        if more.logprobs is not None:
            self.logprobs = (self.logprobs or []) + list(more.logprobs)
        self.entropies.extend(more.entropies)
        self.finish_reason = more.finish_reason
        self.stop_reason = more.stop_reason


@dataclass
class Step:
    """What one engine output of one job brought."""

    job_key: str
    prompt_index: int
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens vLLM's prefix cache served (first output of a job)
    choices: list[Generated]
    # vLLM's per prompt token {token id: Logprob} (None for the first token), when asked
    # for; only in a job's first output.
    prompt_logprobs: list[dict | None] | None = None


@dataclass
class Result:
    """A whole plan's outcome: every choice whole, in choice-index order."""

    prompt_token_ids: list[list[int]]  # per prompt
    choices: list[Generated]
    num_cached_tokens: int = 0  # over every job
    prompt_logprobs: list[list[dict | None] | None] = field(default_factory=list)  # per prompt, when asked for

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompt_token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)


async def stream(engine: EngineHolder, store: EntropyStore, plan: RequestPlan) -> AsyncIterator[Step]:
    llm = engine.require_engine()
    arrival = time.perf_counter()
    first_token_at: float | None = None
    unfinished = {job.key for job in plan.jobs}
    num_streamed: dict[tuple[str, int], int] = {}  # (job, vLLM's sample index) -> tokens so far
    if plan.measures_entropy:
        for job in plan.jobs:
            store.open(job.key)
    grammars = {job.grammar for job in plan.jobs if job.grammar}
    rank = plan.data_parallel_rank
    if rank is None and grammars:  # run where the grammar is compiled (engine/data_parallel.py)
        rank = engine.engine_for_grammar()
    streams = [
        llm.generate({"prompt_token_ids": job.token_ids}, job.params, job.key, data_parallel_rank=rank)
        for job in plan.jobs
    ]
    metrics.REQUESTS_RUNNING.inc()
    try:
        await engine.grammars.compiled(llm, store, grammars, rank)
        async with aclosing(merge_async_iterators(*streams)) as outputs:  # closed here, not by the GC
            async for job_index, output in outputs:
                job = plan.jobs[job_index]
                step = await _step(plan, job, output, store, num_streamed)
                num_new_tokens = _account_tokens(plan, step)
                if first_token_at is None and num_new_tokens:
                    first_token_at = time.perf_counter()
                    metrics.TIME_TO_FIRST_TOKEN_S.observe(first_token_at - arrival)
                if output.finished:
                    unfinished.discard(job.key)
                    if job.first_sample == 0:  # n samples of one prompt read it once
                        metrics.PROMPT_TOKENS.inc(step.num_prompt_tokens)
                yield step
        metrics.E2E_LATENCY_S.observe(time.perf_counter() - arrival)
    except EngineDeadError as error:
        raise EngineUnavailable(f"the engine died: {error}") from error
    except VLLMValidationError as error:  # checks vLLM makes only when adding a request
        raise BadRequest(str(error), param=error.parameter) from error
    except TimeoutError as error:  # an entropy record never arrived
        raise EngineUnavailable(str(error)) from error
    finally:
        metrics.REQUESTS_RUNNING.dec()
        if unfinished:  # left early: closing merge_async_iterators aborted them in the engine
            metrics.ABORTED.inc()
        for job in plan.jobs:
            store.forget(job.key)


async def _step(
    plan: RequestPlan,
    job: EngineJob,
    output: RequestOutput,
    store: EntropyStore,
    num_streamed: dict[tuple[str, int], int],
) -> Step:
    """One engine output of `job` as our Step: its choices' new tokens with their entropies."""
    choices = []
    for piece in output.outputs:
        start = num_streamed.get((job.key, piece.index), 0)
        num_streamed[(job.key, piece.index)] = start + len(piece.token_ids)
        entropies = []
        if plan.measures_entropy:
            entropies = await store.take(job.key, range(start, start + len(piece.token_ids)))
        choices.append(
            Generated(
                index=plan.choice_index(job.prompt_index, job.first_sample + piece.index),
                prompt_index=job.prompt_index,
                text=piece.text,
                token_ids=list(piece.token_ids),
                logprobs=None if piece.logprobs is None else list(piece.logprobs),
                finish_reason=piece.finish_reason,
                stop_reason=piece.stop_reason,
                entropies=entropies,
            )
        )
    return Step(
        job_key=job.key,
        prompt_index=job.prompt_index,
        num_prompt_tokens=len(output.prompt_token_ids or ()),
        num_cached_tokens=output.num_cached_tokens or 0,
        choices=choices,
        prompt_logprobs=None if output.prompt_logprobs is None else list(output.prompt_logprobs),
    )


async def run(
    engine: EngineHolder, store: EntropyStore, plan: RequestPlan, watch: Callable[[Step], Awaitable[None]] | None = None
) -> Result:
    """Every choice whole. `watch` sees each step as it arrives (DeepConf stops traces
    from there: an aborted job ends with finish_reason "abort" and the tokens it had)."""
    choices: dict[int, Generated] = {}
    prompt_logprobs: dict[int, list[dict | None]] = {}
    num_cached_tokens = 0
    counted_cache: set[str] = set()  # jobs whose prefix-cache hits are counted
    async with aclosing(stream(engine, store, plan)) as steps:
        async for step in steps:
            if watch is not None:
                await watch(step)
            for piece in step.choices:
                if piece.index in choices:
                    choices[piece.index].extend(piece)
                else:
                    choices[piece.index] = piece
            if step.prompt_logprobs is not None:
                prompt_logprobs.setdefault(step.prompt_index, step.prompt_logprobs)
            if step.job_key not in counted_cache:
                counted_cache.add(step.job_key)
                num_cached_tokens += step.num_cached_tokens
    return Result(
        prompt_token_ids=[plan.prompt_token_ids(p) for p in range(plan.num_prompts)],
        choices=[choices[i] for i in sorted(choices)],
        num_cached_tokens=num_cached_tokens,
        prompt_logprobs=[prompt_logprobs.get(p) for p in range(plan.num_prompts)],
    )


def _account_tokens(plan: RequestPlan, step: Step) -> int:
    num_new_tokens = sum(len(c.token_ids) for c in step.choices)
    metrics.GENERATION_TOKENS.inc(num_new_tokens)
    for label in plan.sampler.labels:
        metrics.TOKENS_BY_SAMPLER.labels(sampler=label).inc(num_new_tokens)
    for choice in step.choices:
        for token in choice.entropies:
            metrics.TOKEN_ENTROPY_NATS.observe(token.model_entropy_nats)
            metrics.SAMPLING_TEMPERATURE.observe(token.temperature)
    return num_new_tokens
