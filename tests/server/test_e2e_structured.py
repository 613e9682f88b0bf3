"""Structured outputs and tool calls end to end, through the official `openai` client.

The shared server runs with `--enable-auto-tool-choice --tool-call-parser hermes`.
SmolLM2 was not trained to call tools: forced choices (required, named) make it, and
for `auto` a structured_outputs regex makes it write a hermes-format call, which the
parser must then find.
"""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest
from conftest import MODEL
from pydantic import BaseModel

pytestmark = pytest.mark.e2e  # drives a real server process

PERSON = [{"role": "user", "content": "Give me a person as JSON with name and age."}]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather of a city", "parameters": CITY},
    },
    {"type": "function", "function": {"name": "get_time", "description": "Local time of a city", "parameters": CITY}},
]
GET_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


class Person(BaseModel):
    name: str
    age: int


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


@pytest.mark.parametrize("extra", [{}, {"return_entropy": True}, {"typical_p": 0.9, "temperature": 0.8, "seed": 1}])
def test_json_schema_output_parses_and_validates_under_every_chain(client, extra):
    """vLLM's grammar (no extra), and ours: greedy measured, and our sampler chain."""
    reply = client.chat.completions.create(
        model=MODEL,
        messages=PERSON,
        max_tokens=80,
        temperature=extra.pop("temperature", 0),
        response_format=json_schema_format(PERSON_SCHEMA),
        extra_body=extra,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON_SCHEMA)
    assert reply.choices[0].finish_reason == "stop"


def test_json_object_whole_and_streamed_agree(client):
    fields = dict(model=MODEL, messages=PERSON, max_tokens=80, temperature=0, response_format={"type": "json_object"})
    whole = client.chat.completions.create(**fields).choices[0].message.content
    chunks = client.chat.completions.create(**fields, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole and isinstance(json.loads(whole), dict)


def test_parse_helper_with_a_pydantic_model(client):
    reply = client.chat.completions.parse(
        model=MODEL, messages=PERSON, max_tokens=80, temperature=0, response_format=Person
    )
    assert isinstance(reply.choices[0].message.parsed, Person)


def test_structured_outputs_extra_on_completions(client):
    choice = client.completions.create(
        model=MODEL,
        prompt="Is the sky blue? Answer:",
        max_tokens=5,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert choice.choices[0].text in ("yes", "no")
    chunks = client.completions.create(
        model=MODEL,
        prompt="A year:",
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"structured_outputs": {"regex": "(19|20)[0-9]{2}"}},
    )
    year = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert len(year) == 4 and year[:2] in ("19", "20") and year.isdigit()


def test_entropy_under_a_grammar(client):
    """The first token's model entropy is the unconstrained model's (the same logits as
    without the grammar); the sampled entropy is of at most ten digits; once the digit is
    written only the stop token is left (sampled entropy 0)."""
    fields = dict(
        model=MODEL, messages=[{"role": "user", "content": "Pick a number."}], max_tokens=3, temperature=1.0, seed=1
    )
    free = (
        client.chat.completions.create(**fields, extra_body={"return_entropy": True}).choices[0].model_extra["entropy"]
    )
    digit = client.chat.completions.create(
        **fields, extra_body={"return_entropy": True, "structured_outputs": {"regex": "[0-9]"}}
    )
    entropy = digit.choices[0].model_extra["entropy"]
    assert digit.choices[0].message.content.isdigit()
    assert math.isclose(entropy["model_entropy_nats"][0], free["model_entropy_nats"][0], rel_tol=1e-5)
    assert 0.0 < entropy["sampled_entropy_nats"][0] <= math.log(10) + 1e-6
    assert entropy["sampled_entropy_nats"][0] < entropy["model_entropy_nats"][0]
    assert len(entropy["sampled_entropy_nats"]) == 2 and entropy["sampled_entropy_nats"][1] < 1e-6


def test_named_tool_call_arguments_follow_the_schema(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice=GET_WEATHER, max_tokens=60, temperature=0
    )
    message = reply.choices[0].message
    (call,) = message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_") and message.content is None
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    assert reply.choices[0].finish_reason == "stop"  # OpenAI's reason for a forced function


def test_streamed_named_tool_call_reassembles_to_the_whole_one(client):
    fields = dict(model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice=GET_WEATHER, max_tokens=60, temperature=0)
    whole = client.chat.completions.create(**fields).choices[0].message.tool_calls[0]
    deltas = [
        d
        for chunk in client.chat.completions.create(**fields, stream=True)
        if chunk.choices
        for d in chunk.choices[0].delta.tool_calls or ()
    ]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and len(deltas) > 1
    assert {d.index for d in deltas} == {0}
    assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice(client, stream):
    fields = dict(
        model=MODEL,
        messages=WEATHER,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=100,
        temperature=0,
        parallel_tool_calls=False,
    )
    if stream:
        chunks = [c for c in client.chat.completions.create(**fields, stream=True) if c.choices]
        calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
        names, arguments, finish = (
            [d.function.name for d in calls],
            [d.function.arguments for d in calls],
            chunks[-1].choices[0].finish_reason,
        )
    else:
        reply = client.chat.completions.create(**fields)
        calls = reply.choices[0].message.tool_calls
        names, arguments, finish = (
            [c.function.name for c in calls],
            [c.function.arguments for c in calls],
            reply.choices[0].finish_reason,
        )
    assert finish == "tool_calls" and len(names) == 1 and names[0] in ("get_weather", "get_time")
    jsonschema.validate(json.loads(arguments[0]), CITY)


def test_tool_round_trip(client):
    first = client.chat.completions.create(
        model=MODEL, messages=WEATHER, tools=TOOLS, tool_choice=GET_WEATHER, max_tokens=60, temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees Celsius."},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=40, temperature=0
    )
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


AUTO_CALL = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'


def test_auto_finds_the_models_tool_call_through_vllms_parser(client):
    fields = dict(
        model=MODEL,
        messages=WEATHER,
        tools=TOOLS,
        max_tokens=60,
        temperature=0,
        extra_body={"structured_outputs": {"regex": AUTO_CALL}},
    )
    reply = client.chat.completions.create(**fields)
    (call,) = reply.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert reply.choices[0].finish_reason == "tool_calls" and not reply.choices[0].message.content
    chunks = [c for c in client.chat.completions.create(**fields, stream=True) if c.choices]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_without_a_call_is_plain_content(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], tools=TOOLS, max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content and reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_self_consistency_votes_over_parsed_json(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=PERSON,
        max_tokens=60,
        temperature=0.8,
        seed=3,
        response_format=json_schema_format(PERSON_SCHEMA),
        extra_body={"strategy": {"name": "self_consistency", "n": 4}},
    )
    winner = json.loads(reply.choices[0].message.content)
    jsonschema.validate(winner, PERSON_SCHEMA)
    votes = reply.model_extra["strategy"]["votes"]
    assert json.dumps(winner, sort_keys=True, separators=(",", ":")) == next(iter(votes))


@pytest.mark.parametrize(
    "fields, param",
    [
        (
            {"response_format": {"type": "json_object"}, "extra_body": {"structured_outputs": {"regex": "a"}}},
            "structured_outputs",
        ),
        ({"extra_body": {"structured_outputs": {"regex": "(unclosed"}}}, "structured_outputs"),
        ({"extra_body": {"structured_outputs": {"regex": "(unclosed"}, "return_entropy": True}}, "structured_outputs"),
        ({"response_format": {"type": "json_object"}, "extra_body": {"min_tokens": 3}}, "min_tokens"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=PERSON, max_tokens=4, **fields)
    assert raised.value.body["param"] == param
