"""`/v1/responses` through the openai SDK against the shared server: it answers as chat does."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from conftest import MODEL

pytestmark = pytest.mark.e2e  # drives a real server process

QUESTION = "What is the capital of France?"
WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def chat_text(client, messages, max_tokens) -> str:
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content


def test_a_response_says_what_chat_says(client):
    response = client.responses.create(
        model=MODEL, input=QUESTION, instructions="Answer briefly.", max_output_tokens=16, temperature=0
    )
    assert response.object == "response" and response.status in ("completed", "incomplete")
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    assert response.output_text == chat_text(client, messages, 16)
    assert response.usage.output_tokens > 0
    assert response.output[0].type == "message" and response.output[0].role == "assistant"


def test_a_stream_is_openais_event_sequence_ending_in_the_whole_response(client):
    events = list(
        client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=12, temperature=0, stream=True)
    )
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        types[-1],
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text == chat_text(client, [{"role": "user", "content": QUESTION}], 12)
    whole = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=12, temperature=0)
    assert whole.output_text == final.output_text and whole.usage.output_tokens == final.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_give_function_call_items(client, stream):
    created = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=WEATHER,
        tool_choice="required",
        max_output_tokens=64,
        temperature=0,
        stream=stream,
    )
    response = list(created)[-1].response if stream else created
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    # The tool's output goes back as an input item; the conversation goes on.
    follow_up = client.responses.create(
        model=MODEL,
        previous_response_id=response.id,
        max_output_tokens=16,
        temperature=0,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )
    assert follow_up.output_text


def test_json_schema_output_matches_it(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    response = client.responses.create(
        model=MODEL,
        input="Ann is 3 years old. Give her as JSON.",
        max_output_tokens=64,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
    )
    jsonschema.validate(json.loads(response.output_text), schema)


def test_previous_response_continues_the_stored_conversation(client):
    first = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=12, temperature=0)
    second = client.responses.create(
        model=MODEL, input="And of Germany?", previous_response_id=first.id, max_output_tokens=12, temperature=0
    )
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And of Germany?"},
    ]
    assert second.output_text == chat_text(client, messages, 12)
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=MODEL, input="x", previous_response_id=first.id)
    assert raised.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(client):
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_our_extensions_ride_on_the_response(client):
    response = client.responses.create(
        model=MODEL,
        input=QUESTION,
        max_output_tokens=8,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        extra_body={"return_entropy": True, "typical_p": 0.5, "seed": 3},
    )
    entropy = response.model_extra["entropy"]
    assert entropy["summary"]["num_tokens"] == response.usage.output_tokens == len(entropy["model_entropy_nats"])
    logprobs = response.output[0].content[0].logprobs
    assert [entry.model_extra["entropy"]["model_entropy_nats"] for entry in logprobs] == entropy["model_entropy_nats"]
    assert all(len(entry.top_logprobs) == 2 for entry in logprobs)
    voted = client.responses.create(
        model=MODEL,
        input="What is 2+3? Answer with the number.",
        max_output_tokens=8,
        extra_body={"strategy": {"name": "self_consistency", "n": 3}},
    )
    assert voted.model_extra["strategy"]["name"] == "self_consistency"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"background": True}, "background"),
        ({"extra_body": {"typical_p": 7}}, "typical_p"),  # our extension, validated as on chat
        ({"tools": [{"type": "web_search"}]}, "tools"),
    ],
)
def test_what_we_cannot_honour_is_a_400_naming_it(client, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="x", **fields)
    assert raised.value.body["param"] == param


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-nothing", input="x")
