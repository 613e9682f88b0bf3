"""From a validated request to its plan: which chain samples it, and its engine jobs.

Order of operations for every request:
1. the sampler plan (sampler_plan.py's `plan_sampler`), the output constraint and the
   grammar our adapter applies, if any (`Planner._decide`);
2. render the prompt(s) to token ids (rendering.py), so lengths are known;
3. check each prompt against the configured bound and the context length, and resolve
   `max_tokens` (default: what is left of the context), all as HTTP 400s;
4. build vLLM's SamplingParams once from 1 and 3, then one EngineJob per engine
   request: one per prompt, or, for requests our chain samples with n > 1, one per
   sample (each needs its own key for its entropies; seeds follow vLLM's own n > 1
   rule, seed + sample index);
5. submission.py runs the jobs.
Strategies also continue a prompt from tokens already generated for it
(`plan_continuations`: entropy_fork's branches), with the same checks and jobs.

Which chain samples a request, with what, and what vLLM is asked for are sampler_plan.py's pure
decisions; the Planner applies them to the engine's context. A structured-output constraint goes to
vLLM where vLLM samples (chain VLLM), else its grammar goes in the row spec, for our adapter (adapters/grammar.py).
"""

from __future__ import annotations

import copy
import dataclasses
import time
import uuid
from dataclasses import dataclass

from vllm import SamplingParams

from entropy_serve.samplers.chain import EntropyProfile
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.core.rendering import PromptEcho, Renderer
from entropy_serve.server.core.sampler_plan import (
    Chain,
    SamplerPlan,
    checked_constraint,
    engine_sampling_params,
    plan_sampler,
)
from entropy_serve.server.engine.adapters.spec import RowSpec
from entropy_serve.server.engine.holder import EngineHolder, seeds_drawn_by_adapter
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.constraints import OutputConstraint
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest, SamplingRequest
from entropy_serve.server.protocol.tool_calls import ToolReader


@dataclass(frozen=True)
class EngineJob:
    prompt_index: int
    first_sample: int  # index of the job's first sample among its prompt's n
    token_ids: list[int]
    params: SamplingParams
    key: str  # engine request id, and the key its entropies are published under
    grammar: str | None = None  # the grammar our adapter constrains it with (compiled before submission)


@dataclass(frozen=True)
class RequestPlan:
    request_id: str
    created: int
    model: str
    chat: bool  # replies are chat completions (else text completions)
    jobs: list[EngineJob]
    num_prompts: int
    n: int
    num_top_logprobs: int | None
    stream: bool
    include_usage: bool
    return_entropy: bool
    sampler: SamplerPlan
    constraint: OutputConstraint | None = None
    tools: ToolReader | None = None  # chat requests with tools: how the reply's tool calls are read
    echo: list[PromptEcho] | None = None  # per prompt, when completions' echo repeats it
    echo_only: bool = False  # max_tokens 0: the reply holds the prompt; the engine's one token is dropped
    return_prompt_logprobs: bool = False  # vLLM's `prompt_logprobs` field in the reply
    data_parallel_rank: int | None = None  # its jobs' data-parallel engine, else vLLM's pick (engine/data_parallel.py)

    @property
    def measures_entropy(self) -> bool:
        return self.sampler.chain in (Chain.OURS, Chain.GREEDY)

    def prompt_token_ids(self, prompt_index: int) -> list[int]:
        return next(job.token_ids for job in self.jobs if job.prompt_index == prompt_index)

    def choice_index(self, prompt_index: int, sample: int) -> int:
        """The reply's choice index of prompt `prompt_index`'s sample `sample` (OpenAI's order)."""
        return prompt_index * self.n + sample


class Planner:
    """Plans requests against the running engine (tokenizer, context length) and the config."""

    def __init__(
        self,
        config: ServerConfig,
        engine: EngineHolder,
        profile: EntropyProfile | None,
        draws_seeds: bool | None = None,
    ):
        """`draws_seeds`: whether our adapter draws seeded requests (default: where the
        engine needs it, engine.seeds_drawn_by_adapter)."""
        self.config = config
        self.engine = engine
        self.profile = profile
        self.draws_seeds = seeds_drawn_by_adapter(config) if draws_seeds is None else draws_seeds
        self.renderer = Renderer(engine.ready_tokenizer)
        self.render = self.renderer.render

    def plan(self, request: SamplingRequest, *, measure_entropy: bool = False) -> RequestPlan:
        """Either endpoint's request; `measure_entropy`: a strategy needs its entropies
        (the plan's `return_entropy` stays the client's)."""
        if request.strategy is None and request.n > self.config.max_n:  # a strategy's samples: --max-leaves
            raise BadRequest(f"n: at most {self.config.max_n} is allowed, got {request.n}", param="n")
        sampler, constraint, grammar = self._decide(request, measure_entropy)
        prompts = self.render(request)
        longest = max(len(p) for p in prompts)
        echoing = isinstance(request, CompletionRequest) and request.echo
        echo_only = echoing and request.echo_only
        # vLLM generates at least one token: an echo-only request's is dropped from the reply.
        max_tokens = self.resolve_max_tokens(1 if echo_only else request.requested_max_tokens(), longest)
        params = engine_sampling_params(request, sampler, max_tokens, constraint)
        request_id = f"{'chatcmpl' if isinstance(request, ChatCompletionRequest) else 'cmpl'}-{uuid.uuid4().hex}"
        jobs = [
            job
            for p, ids in enumerate(prompts)
            for job in self._jobs(
                sampler, request_id=request_id, p=p, token_ids=ids, params=params, seed=request.seed, grammar=grammar
            )
        ]
        plan = self._plan(
            request, request_id=request_id, jobs=jobs, num_prompts=len(prompts), sampler=sampler, constraint=constraint
        )
        return dataclasses.replace(
            plan,
            echo=self.renderer.echoes(request, prompts) if echoing else None,
            echo_only=echo_only,
            return_prompt_logprobs=request.prompt_logprobs is not None,
        )

    def plan_continuations(
        self,
        request: SamplingRequest,
        prompt_ids: list[int],
        prefixes: list[list[int]],
        max_tokens: int,
        seeds: list[int | None],
        *,
        measure_entropy: bool = False,
    ) -> RequestPlan:
        """Continue a prompt from each prefix of tokens already generated for it,
        `request.n` samples each, with the request's sampler. `max_tokens` and
        `min_tokens` count from the prompt, as for the samples the prefixes came from:
        each continuation gets what its prefix left of them. Prefix p's samples are
        seeded seeds[p] + i."""
        self.engine.require_engine()
        sampler, constraint, grammar = self._decide(request, measure_entropy)
        if constraint is not None and grammar is None:
            raise BadRequest(
                f"{constraint.field}: continuing a constrained generation needs our sampler", param=constraint.field
            )
        request_id = f"cont-{uuid.uuid4().hex}"
        jobs = []
        for p, (prefix, seed) in enumerate(zip(prefixes, seeds, strict=True)):
            if len(prefix) >= max_tokens:
                raise ValueError(f"prefix {p}: {len(prefix)} tokens leave nothing of max_tokens={max_tokens}")
            token_ids = prompt_ids + prefix
            budget = self.resolve_max_tokens(max_tokens - len(prefix), len(token_ids))
            owed = request.model_copy(update={"seed": seed, "min_tokens": max(0, request.min_tokens - len(prefix))})
            params = engine_sampling_params(owed, sampler, budget, constraint)
            jobs += self._jobs(
                sampler,
                request_id=request_id,
                p=p,
                token_ids=token_ids,
                params=params,
                seed=seed,
                grammar=grammar,
                grammar_prefix=prefix,
            )
        return self._plan(
            request, request_id=request_id, jobs=jobs, num_prompts=len(prefixes), sampler=sampler, constraint=constraint
        )

    # -- bounds and jobs -------------------------------------------------------------

    def resolve_max_tokens(self, requested: int | None, num_prompt_tokens: int) -> int:
        context = self.engine.max_model_len
        prompt_limit = min(self.config.max_prompt_tokens or context, context - 1)
        if num_prompt_tokens > prompt_limit:
            raise BadRequest(
                f"prompt: {num_prompt_tokens} tokens is longer than the {prompt_limit} allowed "
                f"(context length {context})",
                param="prompt",
                code="context_length_exceeded",
            )
        room = context - num_prompt_tokens
        tokens_limit = min(self.config.max_tokens_limit or context, room)
        if requested is None:
            return tokens_limit
        if requested > tokens_limit:
            raise BadRequest(
                f"max_tokens: {requested} is more than the {tokens_limit} allowed for a "
                f"{num_prompt_tokens}-token prompt (context length {context})",
                param="max_tokens",
            )
        return requested

    def _decide(
        self, request: SamplingRequest, measure_entropy: bool
    ) -> tuple[SamplerPlan, OutputConstraint | None, str | None]:
        """The request's sampler plan, output constraint, and the grammar our adapter applies."""
        sampler = plan_sampler(request, self.profile, self.draws_seeds, measure_entropy)
        constraint = checked_constraint(request)
        return sampler, constraint, self._grammar(sampler, constraint)

    def _grammar(self, sampler: SamplerPlan, constraint: OutputConstraint | None) -> str | None:
        """The grammar our adapter applies (None where vLLM applies the constraint, or none).
        Built where vLLM applies it too (but for structural tags, which only vLLM builds),
        so a constraint no grammar can hold is the same 400 naming its field on every chain."""
        if constraint is None:
            return None
        if sampler.vllm_constrains:
            if constraint.params.structural_tag is None:
                constraint.grammar_text()
            return None
        return constraint.grammar_text()

    def _jobs(
        self,
        sampler: SamplerPlan,
        *,
        request_id: str,
        p: int,
        token_ids: list[int],
        params: SamplingParams,
        seed: int | None,
        grammar: str | None = None,
        grammar_prefix: list[int] | None = None,
    ) -> list[EngineJob]:
        """Prompt p's engine jobs: one, or one per sample when our adapter sees the rows
        (sample i seeded seed + i, as vLLM seeds n > 1). `grammar_prefix`: tokens of the
        prompt the grammar must accept first (a continuation's prefix of an output it
        already constrained)."""
        if sampler.chain is Chain.VLLM:
            return [
                EngineJob(prompt_index=p, first_sample=0, token_ids=token_ids, params=params, key=f"{request_id}-{p}-0")
            ]
        jobs = []
        for i in range(params.n):
            key = f"{request_id}-{p}-{i}"
            spec = RowSpec(
                key=key,
                shape=sampler.chain in (Chain.OURS, Chain.SEEDED),
                params=sampler.params,
                grammar=grammar,
                grammar_prefix=list(grammar_prefix or ()) if grammar else [],
                seed=seed + i if sampler.draws_seed else None,
            )
            job_params = copy.copy(params)  # SamplingParams is a msgspec Struct: copy, then set
            job_params.n = 1
            job_params.seed = None if params.seed is None else params.seed + i
            job_params.extra_args = {**(params.extra_args or {}), **spec.to_extra_args()}
            jobs.append(
                EngineJob(
                    prompt_index=p, first_sample=i, token_ids=token_ids, params=job_params, key=key, grammar=grammar
                )
            )
        return jobs

    def _plan(
        self,
        request: SamplingRequest,
        *,
        request_id: str,
        jobs: list[EngineJob],
        num_prompts: int,
        sampler: SamplerPlan,
        constraint: OutputConstraint | None,
    ) -> RequestPlan:
        return RequestPlan(
            request_id=request_id,
            created=int(time.time()),
            model=self.config.served_model_name,
            chat=isinstance(request, ChatCompletionRequest),
            jobs=jobs,
            num_prompts=num_prompts,
            n=request.n,
            num_top_logprobs=request.num_top_logprobs(),
            stream=request.stream,
            include_usage=request.include_usage,
            return_entropy=request.return_entropy,
            sampler=sampler,
            constraint=constraint,
            tools=ToolReader.of(request, self.config, self.engine)
            if isinstance(request, ChatCompletionRequest)
            else None,
        )
