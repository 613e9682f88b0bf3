"""A plan's engine steps as streamed chunks: `Completion`s or `ChatCompletionChunk`s.

Each step of the engine becomes one chunk holding the choices that advanced in it; with
`return_entropy`, each choice carries the entropies of its new tokens, and the chunk
that finishes a choice also carries the choice's summary. With
`stream_options.include_usage`, a last chunk holds only the usage. The HTTP layer
(app.py) writes them as server-sent events; in-process callers iterate them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing

from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

from entropy_serve.server.core import submission
from entropy_serve.server.core.planning import RequestPlan
from entropy_serve.server.core.submission import Generated
from entropy_serve.server.engine.adapters.channel import EntropyStore, TokenEntropy
from entropy_serve.server.engine.holder import EngineHolder
from entropy_serve.server.protocol import logprobs, responses


async def completion_chunks(engine: EngineHolder, store: EntropyStore, plan: RequestPlan) -> AsyncIterator[Completion]:
    reply = dict(request_id=plan.request_id, model=plan.model, created=plan.created)
    num_completion = 0
    num_prompt_by_index: dict[int, int] = {}
    text_offsets: dict[int, int] = {}  # choice index -> characters streamed so far
    prompt_logprobs: dict[int, list] = {}  # prompt index -> vLLM's, from its job's first output
    entropy = EntropyAccumulator(plan.return_entropy)
    async with aclosing(submission.stream(engine, store, plan)) as steps:
        async for step in steps:
            num_prompt_by_index.setdefault(step.prompt_index, step.num_prompt_tokens)
            if not plan.echo_only:
                num_completion += sum(len(c.token_ids) for c in step.choices)
            if step.prompt_logprobs is not None:
                prompt_logprobs.setdefault(step.prompt_index, step.prompt_logprobs)
            choices = step.choices
            if plan.echo is not None:  # the prompt comes first in a choice's first chunk
                choices = [_echoed(plan, c, prompt_logprobs, first=c.index not in text_offsets) for c in choices]
            yield responses.completion(
                **reply,
                choices=choices,
                num_top_logprobs=plan.num_top_logprobs,
                text_offsets=text_offsets,
                entropy=entropy.fields(choices),
            )
            for choice in choices:
                text_offsets[choice.index] = text_offsets.get(choice.index, 0) + len(choice.text)
    if plan.include_usage:
        usage = responses.usage(sum(num_prompt_by_index.values()), num_completion)
        yield responses.completion(**reply, choices=[], num_top_logprobs=None, usage=usage)


def _echoed(plan: RequestPlan, choice: Generated, prompt_logprobs: dict[int, list], first: bool) -> Generated:
    if first:
        return logprobs.with_prompt(
            choice,
            echo=plan.echo[choice.prompt_index],
            prompt_ids=plan.prompt_token_ids(choice.prompt_index),
            prompt_logprobs=prompt_logprobs.get(choice.prompt_index),
            echo_only=plan.echo_only,
        )
    if plan.echo_only:  # nothing after the prompt: a later piece is of the dropped token
        return dataclasses.replace(
            choice,
            text="",
            token_ids=[],
            logprobs=None if choice.logprobs is None else [],
            entropies=[],
            stop_reason=None,
            finish_reason=None if choice.finish_reason is None else "length",
        )
    return choice


async def chat_chunks(
    engine: EngineHolder, store: EntropyStore, plan: RequestPlan
) -> AsyncIterator[ChatCompletionChunk]:
    reply = dict(request_id=plan.request_id, model=plan.model, created=plan.created)
    started: set[int] = set()
    num_completion, num_prompt = 0, 0
    entropy = EntropyAccumulator(plan.return_entropy)
    tool_streamers = {}  # choice index -> ToolStreamer, for requests with tools
    async with aclosing(submission.stream(engine, store, plan)) as steps:
        async for step in steps:
            num_prompt = num_prompt or step.num_prompt_tokens
            fields = entropy.fields(step.choices)
            choices = []
            for choice in step.choices:
                num_completion += len(choice.token_ids)
                tool_delta = None
                if plan.tools is not None:
                    streamer = tool_streamers.setdefault(choice.index, plan.tools.streamer())
                    tool_delta = streamer.step(choice.text, choice.token_ids, finished=choice.finish_reason is not None)
                choices.append(
                    responses.chat_delta_choice(
                        choice=choice,
                        num_top_logprobs=plan.num_top_logprobs,
                        first=choice.index not in started,
                        entropy=fields.get(choice.index),
                        tool_delta=tool_delta,
                    )
                )
                started.add(choice.index)
            yield responses.chat_chunk(**reply, choices=choices)
    if plan.include_usage:
        yield responses.chat_chunk(**reply, choices=[], usage=responses.usage(num_prompt, num_completion))


class EntropyAccumulator:
    """Per-chunk entropy fields; the chunk that finishes a choice also gets its summary."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.so_far: dict[int, list[TokenEntropy]] = {}

    def fields(self, choices: list[Generated]) -> dict[int, dict]:
        if not self.enabled:
            return {}
        result = {}
        for choice in choices:
            self.so_far.setdefault(choice.index, []).extend(choice.entropies)
            result[choice.index] = responses.entropy_field(choice.entropies, summary=False)
            if choice.finish_reason is not None:
                result[choice.index]["summary"] = responses.entropy_field(self.so_far[choice.index], summary=True)[
                    "summary"
                ]
        return result
