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
from dataclasses import dataclass, field

from openai.types.chat import ChatCompletion
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
        logprobs=None
        if choice.logprobs is None
        else [logprob_entry(e.model_dump()) for e in choice.logprobs.content or []],
        extensions=extensions,
    )


def logprob_entry(chat_entry: dict) -> dict:
    """A chat logprob entry in the Responses API's shape (its `entropy` kept)."""
    entry = {key: chat_entry[key] for key in ("token", "bytes", "logprob")}
    entry["top_logprobs"] = [
        {key: top[key] for key in ("token", "bytes", "logprob")} for top in chat_entry["top_logprobs"]
    ]
    if "entropy" in chat_entry:
        entry["entropy"] = chat_entry["entropy"]
    return entry


def answer_status(answer: Answer) -> str:
    return "incomplete" if answer.finish_reason == "length" else "completed"


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def response_object(
    request: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    answer: Answer | None,
    items: list[dict] | None = None,
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
