"""Prompts to token ids, as the engine will see them.

Chat: the model's chat template with the generation prompt (and the request's tools,
for templates that show them), tokenized without adding special tokens a second time.
Completions: a string, a list of strings, token ids or lists of token ids (ids checked
against the vocabulary). Template and id errors are
HTTP 400s naming the field; an engine not yet loaded is a 503 before any tokenizer is
touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest, SamplingRequest


@dataclass(frozen=True)
class PromptEcho:
    """A prompt as completions' `echo` repeats it: as the client wrote it (decoded when
    sent as token ids), and its first token's text (the one token with no logprob)."""

    text: str
    first_token: str


class Renderer:
    def __init__(self, tokenizer: Callable[[], Any]):
        """`tokenizer()`: the model's tokenizer, or a 503 while its engine is not ready
        (EngineHolder.ready_tokenizer), before anything is rendered."""
        self.tokenizer = tokenizer

    def render(self, request: SamplingRequest) -> list[list[int]]:
        """The request's prompt(s) as token ids, as the engine will see them."""
        self.tokenizer()  # 503 before touching the tokenizer of an engine not yet loaded
        if isinstance(request, ChatCompletionRequest):
            return [self._render_chat(request)]
        return self._completion_prompts(request)

    def echoes(self, request: CompletionRequest, prompts: list[list[int]]) -> list[PromptEcho]:
        """What `echo` repeats of each of `request`'s prompts (`prompts`: as `render` gave them)."""
        tokenizer = self.tokenizer()
        written = (
            request.prompt
            if isinstance(request.prompt, list) and isinstance(request.prompt[0], (str, list))
            else [request.prompt]
        )
        return [
            PromptEcho(
                text=text if isinstance(text, str) else tokenizer.decode(ids),
                first_token=tokenizer.decode(ids[:1]),
            )
            for text, ids in zip(written, prompts, strict=True)
        ]

    def _render_chat(self, request: ChatCompletionRequest) -> list[int]:
        tokenizer = self.tokenizer()
        if getattr(tokenizer, "chat_template", None) is None:
            raise BadRequest("this model has no chat template; use /v1/completions")
        try:
            text = tokenizer.apply_chat_template(
                request.chat_messages(), tools=request.template_tools(), add_generation_prompt=True, tokenize=False
            )
        except Exception as error:  # templates raise their own errors (e.g. role order)
            raise BadRequest(f"messages: the chat template rejected them: {error}", param="messages") from error
        # The template already holds the special tokens (BOS etc.): add none twice.
        return tokenizer.encode(text, add_special_tokens=False)

    def _completion_prompts(self, request: CompletionRequest) -> list[list[int]]:
        prompt = request.prompt
        tokenizer = self.tokenizer()
        if isinstance(prompt, str):
            return [tokenizer.encode(prompt)]
        if all(isinstance(p, int) for p in prompt):
            return [self._checked_token_ids(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [tokenizer.encode(p) for p in prompt]
        return [self._checked_token_ids(p) for p in prompt]

    def _checked_token_ids(self, token_ids: list[int]) -> list[int]:
        vocab_size = len(self.tokenizer())
        if not token_ids:
            raise BadRequest("prompt: token id lists must not be empty", param="prompt")
        bad = [t for t in token_ids if not 0 <= t < vocab_size]
        if bad:
            raise BadRequest(f"prompt: token ids must be in [0, {vocab_size}), got {bad[:5]}", param="prompt")
        return list(token_ids)
