"""Chat's answer -> the Responses API's `Response` and its typed stream events.

A whole reply is read from the ChatCompletion; a stream from chat's chunks, one
event per change: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its text (`response.content_part.added`,
`response.output_text.delta`..., `.done`, `response.content_part.done`) or its
function call's arguments (`response.function_call_arguments.delta`..., `.done`),
`response.output_item.done`, and last `response.completed` (or `response.incomplete`
when max_output_tokens cut it) with the whole Response. Both paths build the final
Response with `response_object`, from the same `Answer` record.

Our extensions ride as extra fields, as on chat: `entropy` (the choice's: per-token
lists and summary) and `strategy` / `difficulty` on the Response; each log-probability
entry carries its token's `entropy` too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from entropy_serve.server.api.responses_api.request import ResponsesRequest

EVENT = TypeAdapter(ResponseStreamEvent)
ENTROPY_LISTS = ("model_entropy_nats", "sampled_entropy_nats", "temperature", "self_certainty_nats")


@dataclass
class Answer:
    """What chat answered, in the terms a Response needs."""

    text: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # {"call_id", "name", "arguments"}
    finish_reason: str | None = None
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    logprobs: list[dict] | None = None  # the Responses API's entries
    extensions: dict = field(default_factory=dict)  # entropy, strategy, difficulty

    def chat_message(self) -> dict:
        """The reply as the assistant message a later turn's history holds."""
        message: dict = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in self.tool_calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        return message


def answer_of(reply: ChatCompletion) -> Answer:
    choice = reply.choices[0]
    extensions = {key: value for key, value in (reply.model_extra or {}).items() if value is not None}
    if (choice.model_extra or {}).get("entropy") is not None:
        extensions["entropy"] = choice.model_extra["entropy"]
    return Answer(
        text=choice.message.content or "",
        tool_calls=[
            {"call_id": call.id, "name": call.function.name, "arguments": call.function.arguments}
            for call in choice.message.tool_calls or []
        ],
        finish_reason=choice.finish_reason,
        num_input_tokens=reply.usage.prompt_tokens if reply.usage else 0,
        num_output_tokens=reply.usage.completion_tokens if reply.usage else 0,
        logprobs=None if choice.logprobs is None else [logprob_entry(e.model_dump()) for e in choice.logprobs.content or []],
        extensions=extensions,
    )


def logprob_entry(chat_entry: dict) -> dict:
    """A chat logprob entry in the Responses API's shape (its `entropy` kept)."""
    entry = {key: chat_entry[key] for key in ("token", "bytes", "logprob")}
    entry["top_logprobs"] = [{key: top[key] for key in ("token", "bytes", "logprob")} for top in chat_entry["top_logprobs"]]
    if "entropy" in chat_entry:
        entry["entropy"] = chat_entry["entropy"]
    return entry


def answer_status(answer: Answer) -> str:
    return "incomplete" if answer.finish_reason == "length" else "completed"


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def response_object(
    request: ResponsesRequest, *, response_id: str, created_at: int, answer: Answer | None, items: list[dict] | None = None
) -> Response:
    """The Response: `answer` None is the in-progress Response a stream opens with."""
    status, incomplete = "in_progress", None
    if answer is not None:
        status = answer_status(answer)
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    fields = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "incomplete_details": incomplete,
        "error": None,
        "model": request.model,
        "instructions": request.instructions,
        "output": items if items is not None else (output_items(answer, status) if answer else []),
        "parallel_tool_calls": request.parallel_tool_calls,
        "tool_choice": request.response_tool_choice(),
        "tools": [tool.model_dump(exclude_none=True) for tool in request.tools or []],
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "metadata": request.metadata or {},
        "text": {"format": request.text.format.model_dump(by_alias=True, exclude_none=True)}
        if request.text and request.text.format
        else {"format": {"type": "text"}},
        "top_logprobs": request.top_logprobs,
        "usage": None,
    }
    if answer is not None:
        fields["usage"] = {
            "input_tokens": answer.num_input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": answer.num_output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.num_input_tokens + answer.num_output_tokens,
        }
        fields["completed_at"] = int(time.time())
        fields.update(answer.extensions)
    return Response.model_validate(fields)


def output_items(answer: Answer, status: str) -> list[dict]:
    """The message (when there is text, or nothing else) and then the function calls."""
    items = []
    if answer.text or not answer.tool_calls:
        items.append(message_item(status, answer.text, answer.logprobs))
    items.extend(function_call_item(call, "completed") for call in answer.tool_calls)
    return items


def text_part(text: str, logprobs: list[dict] | None) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(status: str, text: str = "", logprobs: list[dict] | None = None) -> dict:
    """The assistant's message; in progress, it has no content part yet."""
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex}",
        "role": "assistant",
        "status": status,
        "content": [] if status == "in_progress" else [text_part(text, logprobs)],
    }


def function_call_item(call: dict, status: str) -> dict:
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "call_id": call["call_id"],
        "name": call["name"],
        "arguments": call["arguments"],
        "status": status,
    }


class EventStream:
    """Chat's chunks -> the Responses API's events (see the module doc). Output items are
    numbered as they open; `answer` and `final` hold what was streamed, for the stored
    conversation."""

    def __init__(self, request: ResponsesRequest, response_id: str, created_at: int):
        self.request, self.response_id, self.created_at = request, response_id, created_at
        self.answer = Answer(logprobs=[] if request.wants_logprobs else None)
        self.sequence = 0
        self.items: list[dict] = []  # output items, in the order they opened
        self.message: dict | None = None
        self.calls: dict[int, dict] = {}  # chat's tool-call index -> its output item
        self.entropy: dict | None = None
        self.final: Response | None = None

    def event(self, type_: str, **fields) -> ResponseStreamEvent:
        event = EVENT.validate_python({"type": type_, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return event

    async def events(self, chunks: AsyncIterable[ChatCompletionChunk]) -> AsyncIterator[ResponseStreamEvent]:
        opening = response_object(self.request, response_id=self.response_id, created_at=self.created_at, answer=None)
        yield self.event("response.created", response=opening)
        yield self.event("response.in_progress", response=opening)
        async for chunk in chunks:
            if chunk.usage is not None:
                self.answer.num_input_tokens = chunk.usage.prompt_tokens
                self.answer.num_output_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                self._add_entropy((choice.model_extra or {}).get("entropy"))
                self.answer.finish_reason = choice.finish_reason or self.answer.finish_reason
                for event in self._text(choice):
                    yield event
                for call in choice.delta.tool_calls or []:
                    for event in self._tool_call(call):
                        yield event
        for event in self._close():
            yield event

    def _add_entropy(self, entropy: dict | None) -> None:
        """Chunks carry their tokens' entropies; the last one of the choice, its summary."""
        if entropy is None:
            return
        if self.entropy is None:
            self.entropy = {name: [] for name in ENTROPY_LISTS}
        for name in ENTROPY_LISTS:
            self.entropy[name].extend(entropy.get(name, []))
        if "summary" in entropy:
            self.entropy["summary"] = entropy["summary"]

    def _open(self, item: dict) -> tuple[int, ResponseStreamEvent]:
        self.items.append(item)
        return len(self.items) - 1, self.event("response.output_item.added", output_index=len(self.items) - 1, item=item)

    def _text(self, choice) -> list[ResponseStreamEvent]:
        entries = [logprob_entry(e.model_dump()) for e in choice.logprobs.content or []] if choice.logprobs else []
        if self.answer.logprobs is not None:
            self.answer.logprobs.extend(entries)
        text = choice.delta.content or ""
        if not text:
            return []
        events = []
        if self.message is None:
            self.message = message_item("in_progress")
            output_index, added = self._open(self.message)
            part_added = self.event(
                "response.content_part.added", item_id=self.message["id"], output_index=output_index, content_index=0,
                part=text_part("", None),
            )
            events += [added, part_added]
        self.answer.text += text
        events.append(self.event(
            "response.output_text.delta", item_id=self.message["id"], output_index=self.items.index(self.message),
            content_index=0, delta=text, logprobs=entries,
        ))
        return events

    def _tool_call(self, call) -> list[ResponseStreamEvent]:
        events = []
        if call.index not in self.calls:
            name = call.function.name if call.function and call.function.name else ""
            item = function_call_item({"call_id": call.id or f"call_{uuid.uuid4().hex}", "name": name, "arguments": ""}, "in_progress")
            self.calls[call.index] = item
            events.append(self._open(item)[1])
        item = self.calls[call.index]
        delta = call.function.arguments if call.function and call.function.arguments else ""
        if delta:
            item["arguments"] += delta
            events.append(self.event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=self.items.index(item), delta=delta
            ))
        return events

    def _close(self) -> list[ResponseStreamEvent]:
        """The items' done events, then the whole Response."""
        if self.entropy is not None:
            self.answer.extensions["entropy"] = self.entropy
        status = answer_status(self.answer)
        events = []
        if not self.items:  # nothing was said: an empty message, as a whole reply has
            self.message = message_item("in_progress")
            events.append(self._open(self.message)[1])
        self.answer.tool_calls = [
            {key: item[key] for key in ("call_id", "name", "arguments")} for item in self.items if item["type"] == "function_call"
        ]
        for output_index, item in enumerate(self.items):
            if item is self.message:
                part = text_part(self.answer.text, self.answer.logprobs)
                item.update(status=status, content=[part])
                common = dict(item_id=item["id"], output_index=output_index, content_index=0)
                events.append(self.event("response.output_text.done", **common, text=part["text"], logprobs=part["logprobs"]))
                events.append(self.event("response.content_part.done", **common, part=part))
            else:
                item["status"] = "completed"
                events.append(self.event(
                    "response.function_call_arguments.done", item_id=item["id"], output_index=output_index,
                    arguments=item["arguments"], name=item["name"],
                ))
            events.append(self.event("response.output_item.done", output_index=output_index, item=item))
        self.final = response_object(
            self.request, response_id=self.response_id, created_at=self.created_at, answer=self.answer, items=self.items
        )
        events.append(self.event(f"response.{self.final.status}", response=self.final))
        return events
