"""A chat reply's tool calls, read from the text the model generated.

How the text is read depends on the request's tool choice (protocol.ChatCompletionRequest.tool_mode):
- named: the grammar (constraints.py) made the whole output the function's arguments;
  one call to that function. finish_reason stays `stop`, as OpenAI's forced calls do.
- required: the grammar made the output a JSON array of {name, parameters}; one call
  per item; finish_reason `tool_calls`.
- auto: the model decides; vLLM's tool-call parser for the model's format (the server's
  `--tool-call-parser`, vLLM's flag and names) finds the calls, if any, and the text
  around them is the content; finish_reason `tool_calls` when there are calls.
Streaming: `ToolStreamer` turns each step's new text into OpenAI's chunk deltas:
argument pieces as they come for named calls and through the parser's own streaming for
auto; for required, each call whole as soon as its item of the array is complete.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from openai.types.chat import ChatCompletionMessageToolCall
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from entropy_serve.json_input import MalformedJSON, decode_prefix, parse_json
from entropy_serve.server.errors import BadRequest

if TYPE_CHECKING:
    from entropy_serve.server.config import ServerConfig
    from entropy_serve.server.engine.holder import EngineHolder
    from entropy_serve.server.protocol.requests import ChatCompletionRequest


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(name: str, arguments: str, call_id: str | None = None) -> ChatCompletionMessageToolCall:
    return ChatCompletionMessageToolCall(
        id=call_id or new_call_id(), type="function", function={"name": name, "arguments": arguments}
    )


@dataclass(frozen=True)
class ReadMessage:
    """What the reply's message holds: content, tool calls, and the finish reason they imply."""

    content: str | None
    tool_calls: list[ChatCompletionMessageToolCall]
    finish_reason: str | None  # `tool_calls` where the calls replace vLLM's reason, else None


@dataclass(frozen=True)
class ToolReader:
    mode: Literal["auto", "required", "named"]
    function_name: str | None  # named
    parallel: bool
    parser_name: str | None  # auto: vLLM's tool-call parser
    tokenizer: object = None
    vllm_request: object = None  # auto: vLLM's request object, which its parsers read

    @classmethod
    def of(cls, request: ChatCompletionRequest, config: ServerConfig, engine: EngineHolder) -> ToolReader | None:
        mode = request.tool_mode()
        if mode is None:
            return None
        if mode != "auto":
            name = request.tool_choice.function.name if mode == "named" else None
            return cls(mode=mode, function_name=name, parallel=request.parallel_tool_calls, parser_name=None)
        if not (config.enable_auto_tool_choice and config.tool_call_parser):
            raise BadRequest(
                'tool_choice: "auto" (the default with tools) needs the server started with '
                "--enable-auto-tool-choice and --tool-call-parser; `required` or a named function work with any model",
                param="tool_choice",
            )
        return cls(
            mode=mode,
            function_name=None,
            parallel=request.parallel_tool_calls,
            parser_name=config.tool_call_parser,
            tokenizer=engine.tokenizer,
            vllm_request=vllm_chat_request(request),
        )

    def read(self, text: str) -> ReadMessage:
        """A whole reply's message from its text."""
        if self.mode == "named":
            return ReadMessage(None, [tool_call(self.function_name, text)], None)
        if self.mode == "required":
            calls = required_calls(text)
            if calls is None:  # cut short (length): the array never closed
                return ReadMessage(text, [], None)
            return ReadMessage(None, calls, "tool_calls")
        info = self._parser().extract_tool_calls(text, self.vllm_request)
        if not info.tools_called:
            return ReadMessage(text, [], None)
        calls = [tool_call(c.function.name, c.function.arguments, c.id) for c in info.tool_calls]
        return ReadMessage(info.content or None, calls if self.parallel else calls[:1], "tool_calls")

    def streamer(self) -> ToolStreamer:
        return ToolStreamer(self, self._parser() if self.mode == "auto" else None)

    def _parser(self):
        from vllm.tool_parsers import ToolParserManager

        parser_class = ToolParserManager.get_tool_parser(self.parser_name)
        return parser_class(self.tokenizer, self.vllm_request.tools)


def required_calls(text: str) -> list[ChatCompletionMessageToolCall] | None:
    """`required`'s array [{name, parameters}] as tool calls; None when it does not parse."""
    try:
        items = parse_json(text)
    except MalformedJSON:
        return None
    return [tool_call(item["name"], json.dumps(item["parameters"], ensure_ascii=False)) for item in items]


def complete_items(text: str, start: int) -> tuple[list[dict], int]:
    """The items of a JSON array written so far in `text` that are complete from offset
    `start` on (skipping `[`, commas and whitespace), and the offset after the last one."""
    items = []
    position = start
    while True:
        while position < len(text) and text[position] in "[, \n\r\t":
            position += 1
        try:
            item, end = decode_prefix(text, position)
        except MalformedJSON:
            return items, position
        items.append(item)
        position = end


def vllm_chat_request(request: ChatCompletionRequest):
    """vLLM's own ChatCompletionRequest for the same body, which vLLM's tool parsers read."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VLLMChatRequest

    return VLLMChatRequest.model_validate(
        {
            "model": request.model,
            "messages": [{"role": "user", "content": ""}],  # the parsers read tools, not the history
            "tools": [tool.model_dump(exclude_none=True) for tool in request.tools],
            "tool_choice": "auto",
        }
    )


@dataclass
class StreamedDelta:
    content: str | None
    tool_calls: list[ChoiceDeltaToolCall] | None
    finish_reason: str | None  # `tool_calls` on the last delta of a choice that made calls


@dataclass
class ToolStreamer:
    """One streamed choice's tool-call deltas (see the module doc)."""

    reader: ToolReader
    parser: object = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    call_id: str = field(default_factory=new_call_id)
    num_calls: int = 0
    parsed_until: int = 0  # required: the offset after the last complete array item

    def step(self, delta_text: str, delta_ids: list[int], finished: bool) -> StreamedDelta:
        previous_text, previous_ids = self.text, list(self.token_ids)
        self.text += delta_text
        self.token_ids += delta_ids
        mode = self.reader.mode
        if mode == "named":
            first = not previous_text and bool(delta_text)
            function = (
                {"name": self.reader.function_name, "arguments": delta_text} if first else {"arguments": delta_text}
            )
            delta = ChoiceDeltaToolCall(
                index=0, id=self.call_id if first else None, type="function" if first else None, function=function
            )
            return StreamedDelta(None, [delta] if delta_text else None, None)
        if mode == "required":
            items, self.parsed_until = complete_items(self.text, self.parsed_until)
            deltas = []
            for item in items:
                call = tool_call(item["name"], json.dumps(item["parameters"], ensure_ascii=False))
                deltas.append(ChoiceDeltaToolCall(index=self.num_calls, **call.model_dump()))
                self.num_calls += 1
            return StreamedDelta(None, deltas or None, "tool_calls" if finished and self.num_calls else None)
        message = self.parser.extract_tool_calls_streaming(
            previous_text, self.text, delta_text, previous_ids, self.token_ids, delta_ids, self.reader.vllm_request
        )
        content, deltas = None, None
        if message is not None:
            content = message.content
            deltas = [ChoiceDeltaToolCall(**d.model_dump(exclude_none=True)) for d in message.tool_calls] or None
            if deltas and not self.reader.parallel:
                deltas = [d for d in deltas if d.index == 0] or None
            self.num_calls = max([self.num_calls, *[d.index + 1 for d in deltas or ()]])
        return StreamedDelta(content, deltas, "tool_calls" if finished and self.num_calls else None)
