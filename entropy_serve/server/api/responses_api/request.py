"""A `/v1/responses` body -> the chat-completions body that answers it.

The Responses API is answered by the chat path (service.py), so a response is exactly
what chat would say: the same validation, sampler plan, strategies, tools and JSON
constraints. This module types the Responses fields we honour, refuses the ones we
cannot (a 400 naming them unless neutral, as on chat), and translates: `input` items
(messages, function calls and their outputs) and `instructions` become messages, a
stored `previous_response_id`'s conversation goes first, `max_output_tokens`,
`tools`, `tool_choice`, `text.format`, `include`/`top_logprobs` become chat's fields.
Fields that are not the Responses API's own (our extensions: samplers,
`return_entropy`, `strategy`; vLLM's extras) pass through to chat unchanged, where
they are validated as on /v1/chat/completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from entropy_serve.server.protocol.field_kinds import refusing

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Chat's names of the fields this API calls otherwise: an error from the chat path names
# the field as the client wrote it.
CHAT_TO_RESPONSES_FIELDS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "top_logprobs": "top_logprobs",
}
NOT_SUPPORTED = {  # field -> its neutral values
    "background": (False,),
    "reasoning": (),
    "conversation": (),
    "prompt": (),
    "max_tool_calls": (),
    "truncation": ("disabled",),
    "context_management": (),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextContent(Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextContent]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[TextContent]

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(union_mode="left_to_right")]


class FunctionTool(Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def for_chat(self) -> dict:
        function = {"name": self.name, "parameters": self.parameters or {"type": "object", "properties": {}}}
        if self.description is not None:
            function["description"] = self.description
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


class NamedFunction(Strict):
    type: Literal["function"]
    name: str


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    def for_chat(self) -> dict | None:
        """Chat's response_format (None: plain text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        json_schema = {"name": self.name or "response", "schema": self.schema_ or {}}
        if self.description is not None:
            json_schema["description"] = self.description
        if self.strict is not None:
            json_schema["strict"] = self.strict
        return {"type": "json_schema", "json_schema": json_schema}


class TextOptions(Strict):
    format: TextFormat | None = None
    verbosity: Any = None


class ResponsesRequest(BaseModel):
    """The Responses API's fields; anything else is passed to chat (see the module doc)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextOptions | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    # OpenAI's fields that cannot change the output: accepted, typed loosely, never read.
    user: Any = None
    service_tier: Any = None
    safety_identifier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    # NOT_SUPPORTED: a 400 unless neutral.
    background: Any = None
    reasoning: Any = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: Any = None
    truncation: Any = None
    context_management: Any = None

    _not_supported = field_validator(*NOT_SUPPORTED)(refusing(NOT_SUPPORTED))

    @field_validator("include")
    @classmethod
    def _known_includes(cls, value: list[str] | None) -> list[str] | None:
        unknown = [name for name in value or [] if name != LOGPROBS_INCLUDE]
        if unknown:
            raise ValueError(f"only {LOGPROBS_INCLUDE!r} can be included here, got {unknown}")
        return value

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or []) or self.top_logprobs is not None

    def messages(self) -> list[dict]:
        """The new input as chat messages (an assistant's function calls in one message)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict] = []
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.text()})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls") is not None:
                    messages[-1]["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
        return messages

    def chat_body(self, history: list[dict]) -> dict:
        """The chat body answering this request after `history` (a stored conversation)."""
        body = dict(self.model_extra or {})  # ours and vLLM's: chat validates them
        instructions = [{"role": "system", "content": self.instructions}] if self.instructions is not None else []
        body.update(model=self.model, messages=[*instructions, *history, *self.messages()], stream=self.stream)
        optional = {
            "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "tools": [tool.for_chat() for tool in self.tools] if self.tools else None,
            "tool_choice": self._chat_tool_choice(),
            "response_format": self.text.format.for_chat() if self.text and self.text.format else None,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if self.tools:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.wants_logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs or 0)
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def response_tool_choice(self) -> str | dict:
        """As the Response reports it (OpenAI's default: auto)."""
        if isinstance(self.tool_choice, NamedFunction):
            return self.tool_choice.model_dump()
        return self.tool_choice or "auto"

    def _chat_tool_choice(self) -> str | dict | None:
        if isinstance(self.tool_choice, NamedFunction):
            return {"type": "function", "function": {"name": self.tool_choice.name}}
        return self.tool_choice
