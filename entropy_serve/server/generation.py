"""From a validated request to engine outputs: render, bound, submit, account.

Order of operations for every request:
1. render the prompt(s) to token ids (chat template for chat), so lengths are known;
2. check each prompt against the configured bound and the context length, and resolve
   `max_tokens` (default: what is left of the context), all as HTTP 400s;
3. build vLLM SamplingParams once (`SamplingRequest.to_sampling_params`);
4. submit one engine request per prompt, always as deltas: streaming yields them as
   the engine produces them, non-streaming accumulates them into whole outputs;
5. count tokens, time to first token and latency into Prometheus as they happen.

Leaving an engine generator early (client gone, task cancelled) makes vLLM abort the
request in the engine: nothing keeps generating for a client that left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vllm import SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.utils.async_utils import merge_async_iterators
from vllm.exceptions import VLLMValidationError
from vllm.v1.engine.exceptions import EngineDeadError

from entropy_serve.server import metrics
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.engine import EngineHolder
from entropy_serve.server.errors import BadRequest, EngineUnavailable
from entropy_serve.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest


@dataclass(frozen=True)
class PreparedRequest:
    request_id: str
    created: int
    model: str
    prompts: list[list[int]]  # token ids, one engine request each
    params: SamplingParams
    num_top_logprobs: int | None
    stream: bool
    include_usage: bool


class Generator:
    def __init__(self, holder: EngineHolder, config: ServerConfig):
        self.holder = holder
        self.config = config

    # -- 1-3: render, bound, build parameters -------------------------------------

    def prepare_completion(self, request: CompletionRequest) -> PreparedRequest:
        self._engine()  # 503 before touching the tokenizer of an engine not yet loaded
        return self._prepare(request, "cmpl", self._completion_prompts(request))

    def prepare_chat(self, request: ChatCompletionRequest) -> PreparedRequest:
        self._engine()
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

    def _prepare(self, request: SamplingRequest, kind: str, prompts: list[list[int]]) -> PreparedRequest:
        if request.n > self.config.max_n:
            raise BadRequest(f"n: at most {self.config.max_n} is allowed, got {request.n}", param="n")
        longest = max(len(p) for p in prompts)
        max_tokens = self._resolve_max_tokens(request.requested_max_tokens(), longest)
        return PreparedRequest(
            request_id=f"{kind}-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.config.served_model_name,
            prompts=prompts,
            params=request.to_sampling_params(max_tokens),
            num_top_logprobs=request.num_top_logprobs(),
            stream=request.stream,
            include_usage=request.include_usage,
        )

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

    # -- 4-5: submit and account -------------------------------------------------

    async def stream(self, prepared: PreparedRequest) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, engine output delta) as the engine produces them, prompts merged."""
        engine = self._engine()
        arrival = time.perf_counter()
        first_token_at: float | None = None
        num_unfinished = len(prepared.prompts)
        streams = [
            engine.generate({"prompt_token_ids": prompt}, prepared.params, f"{prepared.request_id}-{i}")
            for i, prompt in enumerate(prepared.prompts)
        ]
        metrics.REQUESTS_RUNNING.inc()
        try:
            async for prompt_index, output in merge_async_iterators(*streams):
                num_new_tokens = sum(len(o.token_ids) for o in output.outputs)
                metrics.GENERATION_TOKENS.inc(num_new_tokens)
                if first_token_at is None and num_new_tokens:
                    first_token_at = time.perf_counter()
                    metrics.TIME_TO_FIRST_TOKEN_S.observe(first_token_at - arrival)
                if output.finished:
                    num_unfinished -= 1
                    metrics.PROMPT_TOKENS.inc(len(output.prompt_token_ids or ()))
                yield prompt_index, output
            metrics.E2E_LATENCY_S.observe(time.perf_counter() - arrival)
        except EngineDeadError as error:
            raise EngineUnavailable(f"the engine died: {error}") from error
        except VLLMValidationError as error:  # checks vLLM makes only when adding a request
            raise BadRequest(str(error), param=error.parameter) from error
        finally:
            metrics.REQUESTS_RUNNING.dec()
            if num_unfinished:  # left early: merge_async_iterators' cleanup aborted them
                metrics.ABORTED.inc()

    async def run(self, prepared: PreparedRequest) -> list[RequestOutput]:
        """The whole output of every prompt, in prompt order (deltas accumulated)."""
        finals: dict[int, RequestOutput] = {}
        async for prompt_index, delta in self.stream(prepared):
            if prompt_index not in finals:
                finals[prompt_index] = delta
                delta.outputs = [_own_lists(c) for c in delta.outputs]
                continue
            total = finals[prompt_index]
            total.finished = delta.finished
            by_index = {c.index: c for c in total.outputs}
            for piece in delta.outputs:
                if piece.index in by_index:
                    _append(by_index[piece.index], piece)
                else:
                    total.outputs.append(_own_lists(piece))
        for output in finals.values():
            output.outputs.sort(key=lambda c: c.index)
        return [finals[i] for i in range(len(prepared.prompts))]

    def _engine(self):
        if not self.holder.ready or self.holder.engine is None:
            raise EngineUnavailable(f"the engine is not ready ({self.holder.state.value})")
        return self.holder.engine


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


def count_usage(outputs: list[RequestOutput]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) over final outputs; n samples share a prompt."""
    num_prompt = sum(len(o.prompt_token_ids or ()) for o in outputs)
    num_completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return num_prompt, num_completion
