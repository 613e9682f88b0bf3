"""JSON from outside the process, parsed within bounds: request bodies, batch and score
lines, JSON written inside a field (tool-call arguments, vllm_xargs), and the model's own
constrained output.

Python's `json` has two limits that surface as the wrong exception: an integer longer
than the interpreter's int-string limit (4,300 digits) raises a bare ValueError while
parsing, and a value nested about a thousand levels deep raises RecursionError. Either
reached the HTTP layer as a 500. Here both are `MalformedJSON`, a ValueError with a
message for the client, and neither limit of the interpreter is raised:
- integers are bounded while parsing (`parse_int` sees the digits before `int()` does),
  so a long one costs nothing to refuse, and the message names the field it was in;
- nesting is bounded after parsing at `MAX_DEPTH`, far above any request (a JSON schema
  ten levels deep, as OpenAI allows, sits about 25 levels down in a body), so what is
  accepted is also safe for everything downstream that recurses (validation, grammar
  compilers, templates, serializers). A body deep enough to exhaust the parser's own
  recursion guard is refused the same way.
"""

from __future__ import annotations

import json
import re

MAX_DEPTH = 128
MAX_INTEGER_DIGITS = 1000  # a seed is at most 20; the interpreter refuses over 4,300


class MalformedJSON(ValueError):
    """Text that is not JSON, or JSON past this module's bounds; the message says which.
    `field` is the key the offending value was under, where one is known."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class _IntegerTooLong(Exception):
    def __init__(self, num_digits: int):
        self.num_digits = num_digits


def _bounded_int(digits: str) -> int:
    num_digits = len(digits) - digits.startswith("-")
    if num_digits > MAX_INTEGER_DIGITS:
        raise _IntegerTooLong(num_digits)
    return int(digits)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def parse_json(data: str | bytes) -> object:
    """The value `data` holds (bytes in UTF-8, -16 or -32, as `json.loads` reads them);
    MalformedJSON when it is not JSON, holds an integer over MAX_INTEGER_DIGITS digits, or
    nests deeper than MAX_DEPTH."""
    if isinstance(data, bytes):
        try:
            data = data.decode(json.detect_encoding(data), "surrogatepass")
        except UnicodeDecodeError as error:
            raise MalformedJSON(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    return _bounded(lambda: _DECODER.decode(data), data)


def decode_prefix(text: str, position: int) -> tuple[object, int]:
    """The value starting at `position` in `text` and the offset after it, as
    `JSONDecoder.raw_decode` (text after the value is left alone); bounded as parse_json."""
    return _bounded(lambda: _DECODER.raw_decode(text, position), text)


def _bounded(decode, text: str):
    try:
        result = decode()
    except json.JSONDecodeError as error:
        raise MalformedJSON(str(error)) from None
    except RecursionError:
        raise MalformedJSON(f"nested deeper than {MAX_DEPTH} levels") from None
    except _IntegerTooLong as error:
        field = _key_before_long_integer(text)
        where = f" in {field!r}" if field else ""
        raise MalformedJSON(
            f"an integer of {error.num_digits} digits{where}; at most {MAX_INTEGER_DIGITS} are accepted", field
        ) from None
    value = result[0] if isinstance(result, tuple) else result
    may_nest_deep = text.count("[") + text.count("{") > MAX_DEPTH  # a cheap bound first
    if may_nest_deep and _depth_exceeds(value, MAX_DEPTH):
        raise MalformedJSON(f"nested deeper than {MAX_DEPTH} levels")
    return result


def _key_before_long_integer(text: str) -> str | None:
    """The object key right before the first over-long integer, when it stands under one."""
    found = re.search(r'"((?:[^"\\]|\\.)*)"\s*:\s*-?\d{' + str(MAX_INTEGER_DIGITS + 1) + "}", text)
    return json.loads(f'"{found.group(1)}"') if found else None


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether lists and dicts nest more than `limit` levels in `value` (without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                pending.append((child, depth + 1))
    return False
