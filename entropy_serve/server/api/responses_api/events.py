"""Chat's chunk stream -> the Responses API's typed events (see reply.py's module doc for
their order); the final Response is built by reply.response_object, as a whole reply's is."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import aclosing

from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from entropy_serve.server.api.responses_api.reply import (
    ENTROPY_LISTS,
    EVENT,
    Answer,
    answer_status,
    function_call_item,
    logprob_entry,
    message_item,
    response_object,
    text_part,
)
from entropy_serve.server.api.responses_api.request import ResponsesRequest


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
        async with aclosing(aiter(chunks)) as chunk_iterator:
            async for chunk in chunk_iterator:
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
        return len(self.items) - 1, self.event(
            "response.output_item.added", output_index=len(self.items) - 1, item=item
        )

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
                "response.content_part.added",
                item_id=self.message["id"],
                output_index=output_index,
                content_index=0,
                part=text_part("", None),
            )
            events += [added, part_added]
        self.answer.text += text
        events.append(
            self.event(
                "response.output_text.delta",
                item_id=self.message["id"],
                output_index=self.items.index(self.message),
                content_index=0,
                delta=text,
                logprobs=entries,
            )
        )
        return events

    def _tool_call(self, call) -> list[ResponseStreamEvent]:
        events = []
        if call.index not in self.calls:
            name = call.function.name if call.function and call.function.name else ""
            item = function_call_item(
                {"call_id": call.id or f"call_{uuid.uuid4().hex}", "name": name, "arguments": ""}, "in_progress"
            )
            self.calls[call.index] = item
            events.append(self._open(item)[1])
        item = self.calls[call.index]
        delta = call.function.arguments if call.function and call.function.arguments else ""
        if delta:
            item["arguments"] += delta
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.items.index(item),
                    delta=delta,
                )
            )
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
            {key: item[key] for key in ("call_id", "name", "arguments")}
            for item in self.items
            if item["type"] == "function_call"
        ]
        for output_index, item in enumerate(self.items):
            if item is self.message:
                part = text_part(self.answer.text, self.answer.logprobs)
                item.update(status=status, content=[part])
                common = dict(item_id=item["id"], output_index=output_index, content_index=0)
                events.append(
                    self.event("response.output_text.done", **common, text=part["text"], logprobs=part["logprobs"])
                )
                events.append(self.event("response.content_part.done", **common, part=part))
            else:
                item["status"] = "completed"
                events.append(
                    self.event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=output_index,
                        arguments=item["arguments"],
                        name=item["name"],
                    )
                )
            events.append(self.event("response.output_item.done", output_index=output_index, item=item))
        self.final = response_object(
            self.request, response_id=self.response_id, created_at=self.created_at, answer=self.answer, items=self.items
        )
        events.append(self.event(f"response.{self.final.status}", response=self.final))
        return events
