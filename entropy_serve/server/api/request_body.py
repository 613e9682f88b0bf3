"""A request's JSON body, parsed within json_input.py's bounds: a 400 naming the field
when it is not JSON a client could mean."""

from __future__ import annotations

from fastapi import Request

from entropy_serve.json_input import MalformedJSON, parse_json
from entropy_serve.server.errors import BadRequest


async def json_body(raw: Request) -> object:
    try:
        return parse_json(await raw.body())
    except MalformedJSON as error:
        raise BadRequest(f"malformed JSON body: {error}", param=error.field) from None
