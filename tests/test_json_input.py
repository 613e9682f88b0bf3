"""JSON from outside parsed within bounds: over-long integers and deep nesting are
MalformedJSON (a ValueError with a message for the client), never the interpreter's
ValueError or RecursionError."""

from __future__ import annotations

import json

import pytest

from entropy_serve.json_input import MAX_DEPTH, MAX_INTEGER_DIGITS, MalformedJSON, decode_prefix, parse_json

LONG = "1" * 5000  # past the interpreter's 4,300-digit int-string limit


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_plain_json_parses_as_json_loads_does():
    text = '{"a": [1, -2, 3.5, "x\\u00e9", null, true], "b": {"c": NaN}}'
    assert json.dumps(parse_json(text)) == json.dumps(json.loads(text))
    assert parse_json(text.encode("utf-16")) == parse_json(text)
    assert parse_json('"\\ud800"') == "\ud800"  # a lone surrogate is for the text check to name


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (f'{{"model": "m", "n": {LONG}}}', "n"),
        (f'{{"unknown_field": {{"deeper": -{LONG}}}}}', "deeper"),
        (f'{{"a": [1, {LONG}]}}', None),  # in an array: no key stands right before it
    ],
)
def test_an_integer_past_the_bound_names_its_field(text, field):
    with pytest.raises(MalformedJSON, match=f"an integer of 5000 digits.*at most {MAX_INTEGER_DIGITS}") as raised:
        parse_json(text)
    assert raised.value.field == field
    assert (f"in {field!r}" in str(raised.value)) == (field is not None)


def test_an_integer_at_the_bound_is_kept():
    assert parse_json("9" * MAX_INTEGER_DIGITS) == int("9" * MAX_INTEGER_DIGITS)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_nesting_past_the_bound_is_refused(depth):
    with pytest.raises(MalformedJSON, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_json(nested(depth))
    with pytest.raises(MalformedJSON, match="nested deeper"):
        parse_json('{"messages": [' + '{"a": ' * depth + "1" + "}" * depth + "]}")


def test_nesting_at_the_bound_is_kept():
    value = parse_json(nested(MAX_DEPTH))
    for _ in range(MAX_DEPTH - 1):
        (value,) = value
    assert value == []


@pytest.mark.parametrize(("data", "words"), [(b'{"model": ', "Expecting value"), (b"\xff\xfe\xfd", "not UTF-8 text")])
def test_text_that_is_not_json(data, words):
    with pytest.raises(MalformedJSON, match=words):
        parse_json(data)


def test_decode_prefix_reads_one_value_and_is_bounded():
    assert decode_prefix('[{"a": 1}, {"b"', 1) == ({"a": 1}, 9)
    with pytest.raises(MalformedJSON, match="5000 digits"):
        decode_prefix(f"[{LONG}]", 1)
