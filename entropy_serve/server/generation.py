"""From a validated request to engine jobs: render, bound, build parameters.

Order of operations for every request:
1. render the prompt(s) to token ids (chat template for chat), so lengths are known;
2. check each prompt against the configured bound and the context length, and resolve
   `max_tokens` (default: what is left of the context), all as HTTP 400s;
3. build vLLM SamplingParams once (`SamplingRequest.to_sampling_params`), then one
   EngineJob per engine request: one per prompt, or, for requests our samplers run
   with n > 1, one per sample (each needs its own key for its entropies; seeds follow
   vLLM's own n > 1 rule, seed + sample index);
4. submission.py runs the jobs.
Strategies also continue a prompt from tokens already generated for it
(`prepare_continuations`: entropy_fork's branches), with the same checks and jobs.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass

from vllm import SamplingParams

from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine import EngineHolder
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from entropy_serve.server.sampling import check_sampler_request, engine_params, sampler_labels, uses_our_sampler


@dataclass(frozen=True)
class EngineJob:
    prompt_index: int
    first_choice: int  # choice index of the job's first sample within its prompt
    token_ids: list[int]
    params: SamplingParams
    key: str  # engine request id, and the key its entropies are published under
    reports_entropy: bool


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    created: int
    model: str
    jobs: list[EngineJob]
    num_prompts: int
    n: int
    num_top_logprobs: int | None
    stream: bool
    include_usage: bool
    return_entropy: bool
    sampler_labels: list[str]


class Generator:
    def __init__(self, holder: EngineHolder, config: ServerConfig):
        self.holder = holder
        self.config = config

    # -- 1-3: render, bound, build parameters -------------------------------------

    def prepare_completion(self, request: CompletionRequest) -> PreparedRequest:
        self.holder.require_engine()  # 503 before touching the tokenizer of an engine not yet loaded
        return self._prepare(request, "cmpl", self._completion_prompts(request))

    def prepare_chat(self, request: ChatCompletionRequest) -> PreparedRequest:
        self.holder.require_engine()
        tokenizer = self.holder.tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            raise BadRequest("this model has no chat template; use /v1/completions")
        try:
            text = tokenizer.apply_chat_template(
                request.chat_messages(), add_generation_prompt=True, tokenize=False
            )
        except Exception as error:  # templates raise their own errors (e.g. role order)
            raise BadRequest(f"messages: the chat template rejected them: {error}", param="messages") from error
        # The template already holds the special tokens (BOS etc.): add none twice.
        prompt = tokenizer.encode(text, add_special_tokens=False)
        return self._prepare(request, "chatcmpl", [prompt])

    def _completion_prompts(self, request: CompletionRequest) -> list[list[int]]:
        prompt = request.prompt
        if isinstance(prompt, str):
            return [self.holder.tokenizer.encode(prompt)]
        if all(isinstance(p, int) for p in prompt):
            return [self._checked_token_ids(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [self.holder.tokenizer.encode(p) for p in prompt]
        return [self._checked_token_ids(p) for p in prompt]

    def _checked_token_ids(self, token_ids: list[int]) -> list[int]:
        vocab_size = len(self.holder.tokenizer)
        if not token_ids:
            raise BadRequest("prompt: token id lists must not be empty", param="prompt")
        bad = [t for t in token_ids if not 0 <= t < vocab_size]
        if bad:
            raise BadRequest(
                f"prompt: token ids must be in [0, {vocab_size}), got {bad[:5]}", param="prompt"
            )
        return list(token_ids)

    def prepare(self, request: SamplingRequest) -> PreparedRequest:
        """Either endpoint's request (strategies run both)."""
        if isinstance(request, ChatCompletionRequest):
            return self.prepare_chat(request)
        return self.prepare_completion(request)

    def prepare_continuations(
        self,
        request: SamplingRequest,
        prompt_ids: list[int],
        prefixes: list[list[int]],
        max_tokens: int,
        seeds: list[int | None],
    ) -> PreparedRequest:
        """Continue a prompt from each prefix of tokens already generated for it,
        `request.n` samples each, with the request's sampler. `max_tokens` and
        `min_tokens` count from the prompt, as for the samples the prefixes came from:
        each continuation gets what its prefix left of them. Prefix p's samples are
        seeded seeds[p] + i."""
        self.holder.require_engine()
        check_sampler_request(request, self.holder.entropy_profile)
        request_id = f"cont-{uuid.uuid4().hex}"
        jobs = []
        for p, (prefix, seed) in enumerate(zip(prefixes, seeds, strict=True)):
            if len(prefix) >= max_tokens:
                raise ValueError(f"prefix {p}: {len(prefix)} tokens leave nothing of max_tokens={max_tokens}")
            token_ids = prompt_ids + prefix
            budget = self._resolve_max_tokens(max_tokens - len(prefix), len(token_ids))
            owed = request.model_copy(update={"seed": seed, "min_tokens": max(0, request.min_tokens - len(prefix))})
            jobs += self._jobs(owed, request_id, p, token_ids, owed.to_sampling_params(budget))
        return self._prepared(request, request_id, jobs, len(prefixes))

    def _prepare(self, request: SamplingRequest, kind: str, prompts: list[list[int]]) -> PreparedRequest:
        if request.strategy is None and request.n > self.config.max_n:  # a strategy's samples: --max-leaves
            raise BadRequest(f"n: at most {self.config.max_n} is allowed, got {request.n}", param="n")
        check_sampler_request(request, self.holder.entropy_profile)
        longest = max(len(p) for p in prompts)
        params = request.to_sampling_params(self._resolve_max_tokens(request.requested_max_tokens(), longest))
        request_id = f"{kind}-{uuid.uuid4().hex}"
        jobs = [job for p, token_ids in enumerate(prompts) for job in self._jobs(request, request_id, p, token_ids, params)]
        return self._prepared(request, request_id, jobs, len(prompts))

    def _prepared(self, request: SamplingRequest, request_id: str, jobs: list[EngineJob], num_prompts: int) -> PreparedRequest:
        return PreparedRequest(
            request_id=request_id,
            created=int(time.time()),
            model=self.config.served_model_name,
            jobs=jobs,
            num_prompts=num_prompts,
            n=request.n,
            num_top_logprobs=request.num_top_logprobs(),
            stream=request.stream,
            include_usage=request.include_usage,
            return_entropy=request.return_entropy,
            sampler_labels=sampler_labels(request),
        )

    def _jobs(
        self, request: SamplingRequest, request_id: str, p: int, token_ids: list[int], params: SamplingParams
    ) -> list[EngineJob]:
        """Prompt p's engine jobs: one, or one per sample when our sampler runs n > 1."""
        ours = uses_our_sampler(request)
        fan_out = ours and params.n > 1
        jobs = []
        for i in range(params.n if fan_out else 1):
            key = f"{request_id}-{p}-{i}"
            job_params = params
            if fan_out:
                job_params = copy.copy(params)
                job_params.n = 1
                job_params.seed = None if params.seed is None else params.seed + i
            job_params = engine_params(request, job_params, key, self.holder.entropy_profile)
            jobs.append(EngineJob(p, i, token_ids, job_params, key, ours))
        return jobs

    def _resolve_max_tokens(self, requested: int | None, num_prompt_tokens: int) -> int:
        context = self.holder.max_model_len
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
