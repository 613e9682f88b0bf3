"""Structured outputs and tool choices: from request fields to the one constraint."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from entropy_serve.server.config import ServerConfig
from entropy_serve.server.errors import BadRequest
from entropy_serve.server.protocol.constraints import required_tools_schema
from entropy_serve.server.protocol.messages import ChatMessage
from entropy_serve.server.protocol.requests import ChatCompletionRequest, CompletionRequest
from entropy_serve.server.protocol.tool_calls import ToolReader

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "now"}},
]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{**CHAT, **fields})


def test_response_format_json_schema_and_json_object():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    constraint = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    ).constraint()
    assert constraint.field == "response_format" and constraint.params.json == schema
    assert chat(response_format={"type": "json_object"}).constraint().params.json_object is True
    assert chat(response_format={"type": "text"}).constraint() is None
    with pytest.raises(ValidationError, match="json_schema: required"):
        chat(response_format={"type": "json_schema"})
    with pytest.raises(ValidationError):
        chat(response_format={"type": "json_schema", "json_schema": {"name": "bad name!", "schema": schema}})


def test_structured_outputs_extra_on_both_endpoints_takes_exactly_one_constraint():
    completion = CompletionRequest(model="m", prompt="x", structured_outputs={"choice": ["yes", "no"]})
    assert completion.constraint().params.choice == ["yes", "no"]
    assert chat(structured_outputs={"json": {"type": "object"}}).constraint().params.json == {"type": "object"}
    with pytest.raises(ValidationError, match="exactly one"):
        chat(structured_outputs={"regex": "a", "choice": ["a"]})
    with pytest.raises(ValidationError, match="exactly one"):
        chat(structured_outputs={"disable_any_whitespace": True})


def test_two_constraints_are_a_400_naming_the_second():
    request = chat(response_format={"type": "json_object"}, structured_outputs={"regex": "a+"})
    with pytest.raises(BadRequest, match="structured_outputs: cannot be combined with response_format") as raised:
        request.constraint()
    assert raised.value.param == "structured_outputs"


def test_grammar_text_builds_each_kind_and_refuses_what_xgrammar_cannot_build():
    for fields in (
        {"json": WEATHER},
        {"json_object": True},
        {"regex": "[0-9]+"},
        {"choice": ["a", "b"]},
        {"grammar": 'root ::= "x"'},
    ):
        assert "::=" in chat(structured_outputs=fields).constraint().grammar_text()
    with pytest.raises(BadRequest, match="structured_outputs: the constraint cannot be built") as raised:
        chat(structured_outputs={"regex": "(unclosed"}).constraint().grammar_text()
    assert raised.value.param == "structured_outputs"
    with pytest.raises(BadRequest, match="structural_tag needs vLLM's own sampler"):
        chat(structured_outputs={"structural_tag": "{}"}).constraint().grammar_text()


def test_forced_tool_choices_constrain_to_the_tool_schemas():
    named = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.tool_mode() == "named" and named.constraint().params.json == WEATHER
    assert named.constraint().field == "tool_choice"
    no_parameters = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "now"}})
    assert no_parameters.constraint().params.json == {"type": "object", "properties": {}}
    required = chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert required.constraint().params.json == required_tools_schema(required.tools, parallel=False)
    assert chat(tools=TOOLS).tool_mode() == "auto" and chat(tools=TOOLS).constraint() is None  # OpenAI's default
    assert chat(tools=TOOLS, tool_choice="none").tool_mode() is None


def test_required_schema_is_an_array_of_name_and_parameters():
    schema = required_tools_schema(chat(tools=TOOLS).tools, parallel=True)
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    first, second = schema["items"]["anyOf"]
    assert first["properties"]["name"] == {"type": "string", "enum": ["get_weather"]}
    assert first["properties"]["parameters"] == WEATHER and first["required"] == ["name", "parameters"]
    assert second["properties"]["parameters"] == {"type": "object", "properties": {}}
    assert required_tools_schema(chat(tools=TOOLS).tools, parallel=False)["maxItems"] == 1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"tool_choice": "required"}, "tool_choice: needs tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "pattern"),
        ({"tools": TOOLS, "tool_choice": "required", "strategy": "self_consistency"}, "not available with a strategy"),
    ],
)
def test_bad_tool_fields_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        chat(**fields)


def test_tool_messages_and_assistant_tool_calls_reach_the_template():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    request = chat(
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
    )
    user, assistant, tool = request.chat_messages()
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatMessage(role="tool", content="sunny")
    with pytest.raises(ValidationError, match="only assistant messages"):
        ChatMessage(role="user", content="x", tool_calls=[call])


def test_auto_needs_the_servers_tool_parser_flags():
    request = chat(tools=TOOLS)
    with pytest.raises(BadRequest, match="--enable-auto-tool-choice and --tool-call-parser") as raised:
        ToolReader.of(request, ServerConfig(model="m", served_model_name="m"), engine=None)
    assert raised.value.param == "tool_choice"


def test_named_and_required_replies_read_as_tool_calls():
    named = ToolReader.of(
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}), None, None
    )
    read = named.read('{"city": "Paris"}')
    assert read.content is None and read.finish_reason is None  # OpenAI keeps `stop` for a forced function
    assert [(c.function.name, c.function.arguments) for c in read.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    required = ToolReader.of(chat(tools=TOOLS, tool_choice="required"), None, None)
    read = required.read('[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "now", "parameters": {}}]')
    assert read.finish_reason == "tool_calls" and read.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in read.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("now", {}),
    ]
    assert len({c.id for c in read.tool_calls}) == 2
    cut_short = required.read('[{"name": "get_weather", "param')
    assert cut_short.tool_calls == [] and cut_short.content == '[{"name": "get_weather", "param'


def test_streamed_named_and_required_deltas_reassemble():
    named = ToolReader.of(
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}), None, None
    )
    streamer = named.streamer()
    pieces = ['{"ci', 'ty": "Pa', 'ris"}']
    deltas = [streamer.step(p, [i], finished=i == 2) for i, p in enumerate(pieces)]
    first = deltas[0].tool_calls[0]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    assert all(d.tool_calls[0].id is None and d.tool_calls[0].function.name is None for d in deltas[1:])
    assert "".join(d.tool_calls[0].function.arguments for d in deltas) == '{"city": "Paris"}'
    required = ToolReader.of(chat(tools=TOOLS, tool_choice="required"), None, None).streamer()
    assert required.step('[{"name": "now", ', [1], finished=False).tool_calls is None
    first = required.step('"parameters": {}}, {"name": "get_weather", "parameters": {"ci', [2], finished=False)
    assert [(d.index, d.function.name, d.function.arguments) for d in first.tool_calls] == [(0, "now", "{}")]
    assert first.tool_calls[0].id and first.finish_reason is None
    last = required.step('ty": "Oslo"}}]', [3], finished=True)
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in last.tool_calls] == [
        (1, "get_weather", {"city": "Oslo"})
    ]
    assert last.finish_reason == "tool_calls"
