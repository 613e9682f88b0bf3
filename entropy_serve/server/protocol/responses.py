"""Our records -> the `openai` package's own response types.

Building responses from `openai.types` makes their shape right by construction: a field
the SDK does not know cannot slip in, and one it requires cannot be missing. Our
extensions (`entropy` per choice; `strategy`, `difficulty` per reply) ride as extra
fields of those types, which the SDK exposes as `model_extra`. Every builder takes
keyword arguments; choices come as submission.Generated, whose `index` is already the
reply's choice index. Log-probabilities are formatted by logprobs.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    chat_completion,
    chat_completion_chunk,
)

from entropy_serve.server.core.planning import RequestPlan
from entropy_serve.server.core.submission import Generated, Result
from entropy_serve.server.engine.adapters.channel import TokenEntropy
from entropy_serve.server.protocol.logprobs import (
    chat_logprobs,
    completion_logprobs,
    prompt_logprobs_field,
    with_prompt,
)
from entropy_serve.server.protocol.tool_calls import StreamedDelta, ToolReader

OPENAI_FINISH_REASONS = {"stop", "length"}


def finish_reason(choice: Generated) -> str | None:
    """vLLM's reason in OpenAI's vocabulary (an abort is reported as a stop)."""
    if choice.finish_reason is None:
        return None
    return choice.finish_reason if choice.finish_reason in OPENAI_FINISH_REASONS else "stop"


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=num_prompt_tokens,
        completion_tokens=num_completion_tokens,
        total_tokens=num_prompt_tokens + num_completion_tokens,
    )


def completion(
    *,
    request_id: str,
    model: str,
    created: int,
    choices: Iterable[Generated],
    num_top_logprobs: int | None,
    usage: CompletionUsage | None = None,
    text_offsets: dict[int, int] | None = None,
    entropy: dict[int, dict] | None = None,
    prompt_logprobs: dict[int, list] | None = None,
    extensions: dict | None = None,
) -> Completion:
    """A Completion (also the shape of each streamed chunk).

    `text_offsets` gives, per choice index, the characters already streamed, so that
    logprobs' text_offset counts from the start of the whole completion; `entropy` and
    `prompt_logprobs`, per choice index, those fields; `extensions`, fields of the whole reply.
    """
    text_offsets, entropy, prompt_logprobs = text_offsets or {}, entropy or {}, prompt_logprobs or {}
    return Completion(
        id=request_id,
        object="text_completion",
        created=created,
        model=model,
        choices=[
            # model_construct: a streamed choice has finish_reason null until its last
            # chunk, as on OpenAI's wire, though the SDK type declares it required.
            CompletionChoice.model_construct(
                index=choice.index,
                text=choice.text,
                finish_reason=finish_reason(choice),
                logprobs=None
                if num_top_logprobs is None
                else completion_logprobs(
                    choice, num_top_logprobs, text_offsets.get(choice.index, 0), with_entropy=choice.index in entropy
                ),
                **({"entropy": entropy[choice.index]} if choice.index in entropy else {}),
                **({"prompt_logprobs": prompt_logprobs[choice.index]} if choice.index in prompt_logprobs else {}),
            )
            for choice in choices
        ],
        usage=usage,
        **(extensions or {}),
    )


def chat_completion_response(
    *,
    request_id: str,
    model: str,
    created: int,
    choices: Iterable[Generated],
    num_top_logprobs: int | None,
    usage: CompletionUsage,
    entropy: dict[int, dict] | None = None,
    extensions: dict | None = None,
    tools: ToolReader | None = None,
) -> ChatCompletion:
    """`tools`: the request's, when its reply's text is read for tool calls."""
    entropy = entropy or {}
    messages = {c.index: tools.read(c.text) if tools is not None else None for c in choices}
    return ChatCompletion(
        id=request_id,
        object="chat.completion",
        created=created,
        model=model,
        choices=[
            chat_completion.Choice(
                index=choice.index,
                message=chat_message(choice.text, messages[choice.index]),
                finish_reason=(messages[choice.index] and messages[choice.index].finish_reason)
                or finish_reason(choice),
                logprobs=None
                if num_top_logprobs is None
                else chat_completion.ChoiceLogprobs(
                    content=chat_logprobs(choice, num_top_logprobs, with_entropy=choice.index in entropy)
                ),
                **({"entropy": entropy[choice.index]} if choice.index in entropy else {}),
            )
            for choice in choices
        ],
        usage=usage,
        **(extensions or {}),
    )


def chat_message(text: str, read) -> ChatCompletionMessage:
    """The reply's message: the text, or what the tool reader read from it."""
    if read is None:
        return ChatCompletionMessage(role="assistant", content=text)
    return ChatCompletionMessage(role="assistant", content=read.content, tool_calls=read.tool_calls or None)


def chat_chunk(
    *,
    request_id: str,
    model: str,
    created: int,
    choices: list[chat_completion_chunk.Choice],
    usage: CompletionUsage | None = None,
) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id=request_id,
        object="chat.completion.chunk",
        created=created,
        model=model,
        choices=choices,
        usage=usage,
    )


def chat_delta_choice(
    *,
    choice: Generated,
    num_top_logprobs: int | None,
    first: bool,
    entropy: dict | None = None,
    tool_delta: StreamedDelta | None = None,
) -> chat_completion_chunk.Choice:
    """One streamed choice: the new text since the last chunk (the role on the first), or,
    for a request with tools, what its ToolStreamer made of it (`tool_delta`)."""
    logprobs = None
    if num_top_logprobs is not None:
        logprobs = chat_completion_chunk.ChoiceLogprobs(
            content=chat_logprobs(choice, num_top_logprobs, with_entropy=entropy is not None)
        )
    role = "assistant" if first else None
    if tool_delta is None:
        delta = chat_completion_chunk.ChoiceDelta(role=role, content=choice.text)
    else:
        delta = chat_completion_chunk.ChoiceDelta(
            role=role, content=tool_delta.content, tool_calls=tool_delta.tool_calls
        )
    return chat_completion_chunk.Choice(
        index=choice.index,
        delta=delta,
        finish_reason=(tool_delta and tool_delta.finish_reason) or finish_reason(choice),
        logprobs=logprobs,
        **({"entropy": entropy} if entropy is not None else {}),
    )


def entropy_field(tokens: list[TokenEntropy], summary: bool) -> dict:
    """The `entropy` extension of a choice: per generated token, plus a summary when whole.

    model_entropy_nats: entropy of the model's own distribution at each token;
    sampled_entropy_nats: entropy of the distribution the token was drawn from (after
    temperature and filters; 0 for greedy); temperature: the temperature used;
    self_certainty_nats: KL(uniform || the model's distribution) at each token (CISC's
    confidence: large where the model is sure).
    """
    field = {
        "model_entropy_nats": [t.model_entropy_nats for t in tokens],
        "sampled_entropy_nats": [t.sampled_entropy_nats for t in tokens],
        "temperature": [t.temperature for t in tokens],
        "self_certainty_nats": [t.self_certainty_nats for t in tokens],
    }
    if summary:
        field["summary"] = {
            "num_tokens": len(tokens),
            "mean_model_entropy_nats": _mean(field["model_entropy_nats"]),
            "max_model_entropy_nats": max(field["model_entropy_nats"], default=0.0),
            "mean_sampled_entropy_nats": _mean(field["sampled_entropy_nats"]),
            "mean_temperature": _mean(field["temperature"]),
            "mean_self_certainty_nats": _mean(field["self_certainty_nats"]),
        }
    return field


def generation_reply(plan: RequestPlan, result: Result, extensions: dict | None = None) -> Completion | ChatCompletion:
    """An ordinary generation's whole reply: completions' echo and vLLM's prompt
    logprobs (per choice on completions, per reply on chat, as vLLM places them) applied."""
    choices = result.choices
    if plan.echo is not None:
        choices = [
            with_prompt(
                c,
                echo=plan.echo[c.prompt_index],
                prompt_ids=result.prompt_token_ids[c.prompt_index],
                prompt_logprobs=result.prompt_logprobs[c.prompt_index],
                echo_only=plan.echo_only,
            )
            for c in choices
        ]
    extensions = dict(extensions or {})
    choice_prompt_logprobs = None
    if plan.return_prompt_logprobs:
        fields = [prompt_logprobs_field(positions) for positions in result.prompt_logprobs]
        if plan.chat:
            extensions["prompt_logprobs"] = fields[0]
        else:
            choice_prompt_logprobs = {c.index: fields[c.prompt_index] for c in choices}
    return whole_reply(
        plan=plan,
        choices=choices,
        usage=usage(result.num_prompt_tokens, 0 if plan.echo_only else result.num_completion_tokens),
        return_entropy=plan.return_entropy,
        extensions=extensions,
        prompt_logprobs=choice_prompt_logprobs,
    )


def whole_reply(
    *,
    plan: RequestPlan,
    choices: list[Generated],
    usage: CompletionUsage,
    return_entropy: bool,
    extensions: dict | None = None,
    prompt_logprobs: dict[int, list] | None = None,
) -> Completion | ChatCompletion:
    """The whole (non-streamed) reply of `plan`'s endpoint, each choice with its
    `entropy` field (summary included) when `return_entropy`."""
    if plan.chat:
        build = functools.partial(chat_completion_response, tools=plan.tools)
    else:
        build = functools.partial(completion, prompt_logprobs=prompt_logprobs)
    return build(
        request_id=plan.request_id,
        model=plan.model,
        created=plan.created,
        choices=choices,
        num_top_logprobs=plan.num_top_logprobs,
        usage=usage,
        entropy={c.index: entropy_field(c.entropies, summary=True) for c in choices} if return_entropy else None,
        extensions=extensions,
    )


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0
