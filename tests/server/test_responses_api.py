"""The Responses API's translation to chat and back, on hand-built bodies and chunks."""

from __future__ import annotations

import asyncio

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from entropy_serve.server.api.responses_api.events import EventStream
from entropy_serve.server.api.responses_api.reply import answer_of, response_object
from entropy_serve.server.api.responses_api.request import ResponsesRequest
from entropy_serve.server.api.responses_api.routes import parse_responses_request, renamed
from entropy_serve.server.errors import BadRequest

MODEL = "m"


def test_input_items_become_chat_messages_in_order():
    request = ResponsesRequest.model_validate(
        {
            "model": MODEL,
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city": "Rome"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny; rain."}]},
            ],
        }
    )
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    messages = request.chat_body(history)["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1:3] == history
    assert messages[3] == {"role": "user", "content": "weather in Paris and Rome?"}
    # Two calls in a row are one assistant message, as chat templates expect.
    assert messages[4]["role"] == "assistant" and [c["id"] for c in messages[4]["tool_calls"]] == ["c1", "c2"]
    assert messages[5] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert messages[6] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}
    assert messages[7] == {"role": "assistant", "content": "Sunny; rain."}


def test_fields_translate_to_chats_and_extensions_pass_through():
    body = ResponsesRequest.model_validate(
        {
            "model": MODEL,
            "input": "hi",
            "max_output_tokens": 9,
            "temperature": 0.5,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
            "include": ["message.output_text.logprobs"],
            "top_logprobs": 3,
            "stream": True,
            "return_entropy": True,
            "typical_p": 0.4,
        }
    ).chat_body([])
    assert body["max_completion_tokens"] == 9 and body["temperature"] == 0.5
    assert body["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    assert body["stream_options"] == {"include_usage": True}
    assert (body["return_entropy"], body["typical_p"]) == (True, 0.4)
    assert "input" not in body and "max_output_tokens" not in body


@pytest.mark.parametrize(
    ("format_", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": True},
            {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True}},
        ),
    ],
)
def test_text_format_becomes_response_format(format_, expected):
    body = ResponsesRequest.model_validate({"model": MODEL, "input": "x", "text": {"format": format_}}).chat_body([])
    assert body.get("response_format") == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reasoning", {"effort": "high"}),
        ("background", True),
        ("truncation", "auto"),
        ("include", ["file_search_call.results"]),
    ],
)
def test_fields_we_cannot_honour_are_400s_naming_them(field, value):
    with pytest.raises(BadRequest) as raised:
        parse_responses_request({"model": MODEL, "input": "x", field: value})
    assert raised.value.param == field


def test_neutral_values_of_unsupported_fields_pass():
    parse_responses_request(
        {"model": MODEL, "input": "x", "background": False, "truncation": "disabled", "reasoning": None}
    )


def test_input_must_be_text():
    with pytest.raises(ValidationError):
        ResponsesRequest.model_validate(
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]}
        )


def test_chat_errors_name_the_responses_field():
    error = renamed(BadRequest("max_completion_tokens: must be at most 10", param="max_completion_tokens"))
    assert (error.param, error.message) == ("max_output_tokens", "max_output_tokens: must be at most 10")


def chat_reply(**message) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **message}, "logprobs": None}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            "strategy": {"name": "self_consistency"},
        }
    )


def test_whole_reply_with_tool_calls_and_extensions():
    request = ResponsesRequest.model_validate({"model": MODEL, "input": "x"})
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    answer = answer_of(chat_reply(content=None, tool_calls=calls))
    response = response_object(request, response_id="resp_1", created_at=1, answer=answer)
    assert [item.type for item in response.output] == ["function_call"]
    assert (response.output[0].call_id, response.output[0].name) == ("call_1", "f")
    assert response.model_extra["strategy"] == {"name": "self_consistency"}
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 3)
    assert answer.chat_message()["tool_calls"] == calls


def chunk(content=None, tool_calls=None, finish_reason=None, entropy=None, usage=None) -> ChatCompletionChunk:
    choices = []
    if content is not None or tool_calls is not None or finish_reason is not None:
        choice = {"index": 0, "delta": {"content": content, "tool_calls": tool_calls}, "finish_reason": finish_reason}
        if entropy is not None:
            choice["entropy"] = entropy
        choices.append(choice)
    return ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": choices,
            "usage": usage,
        }
    )


def run_stream(request: ResponsesRequest, chunks: list[ChatCompletionChunk]) -> tuple[list, EventStream]:
    async def source():
        for item in chunks:
            yield item

    async def collect():
        stream = EventStream(request, "resp_1", 1)
        return [event async for event in stream.events(source())], stream

    return asyncio.run(collect())


def test_stream_of_text_with_entropy_ends_with_the_whole_response():
    request = ResponsesRequest.model_validate({"model": MODEL, "input": "x", "stream": True})
    events, stream = run_stream(
        request,
        [
            chunk(
                content="Hel",
                entropy={
                    "model_entropy_nats": [1.0],
                    "sampled_entropy_nats": [1.0],
                    "temperature": [1.0],
                    "self_certainty_nats": [2.0],
                },
            ),
            chunk(
                content="lo",
                finish_reason="length",
                entropy={
                    "model_entropy_nats": [0.5],
                    "sampled_entropy_nats": [0.5],
                    "temperature": [1.0],
                    "self_certainty_nats": [3.0],
                    "summary": {"num_tokens": 2},
                },
            ),
            chunk(usage={"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}),
        ],
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "Hello" and final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.model_extra["entropy"]["model_entropy_nats"] == [1.0, 0.5]
    assert final.model_extra["entropy"]["summary"] == {"num_tokens": 2}
    assert final.usage.total_tokens == 6
    assert events[2].item.id == final.output[0].id
    assert stream.answer.chat_message() == {"role": "assistant", "content": "Hello"}


def test_streamed_tool_call_arguments_arrive_in_pieces():
    request = ResponsesRequest.model_validate({"model": MODEL, "input": "x", "stream": True})
    start = [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}]
    more = [{"index": 0, "function": {"arguments": '{"a": '}}]
    last = [{"index": 0, "function": {"arguments": "1}"}}]
    events, _ = run_stream(
        request, [chunk(tool_calls=start), chunk(tool_calls=more), chunk(tool_calls=last, finish_reason="tool_calls")]
    )
    types = [e.type for e in events]
    assert types[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-3].arguments == '{"a": 1}'
    final = events[-1].response
    assert [(item.type, item.call_id, item.arguments) for item in final.output] == [
        ("function_call", "call_9", '{"a": 1}')
    ]


def test_a_stream_that_says_nothing_still_has_its_message():
    request = ResponsesRequest.model_validate({"model": MODEL, "input": "x", "stream": True})
    events, _ = run_stream(request, [chunk(content="", finish_reason="stop")])
    final = events[-1].response
    assert final.status == "completed" and [item.type for item in final.output] == ["message"]
    assert final.output_text == ""
