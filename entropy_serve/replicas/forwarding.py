"""What travels between Ray Serve's ingress and a replica's server, as plain data.

A request goes to a replica as a `Forwarded` (method, path, headers, body) with its
prompt's text beside it: Ray's PrefixCacheAffinityRouter reads a `prompt` attribute of
the call's arguments to send requests that share a prefix to the replica whose prefix
cache holds it. The reply comes back as a stream: first a `Head` (status, headers), then
the body in chunks as the replica's server sends them, so streamed completions stream
through.

When the replica's server goes away (its engine died, the replica was killed), a request
that has not started answering gets a 503 in OpenAI's error shape, and a stream that had
started ends with one `data: {"error": ...}` event and no `[DONE]`, as the server's own
drain ends streams it has to cut (server/api/drain.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from entropy_serve.server.errors import error_body

# Not forwarded: hop-by-hop headers, and the length, which the streamed reply sets itself.
DROPPED_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}
UNAVAILABLE = 503


@dataclass(frozen=True)
class Forwarded:
    method: str
    path: str  # with its query string
    headers: list[tuple[str, str]]
    body: bytes
    prompt: str  # the text the router keys on: the prompt's (`routing_text`)


@dataclass(frozen=True)
class Head:
    status: int
    headers: list[tuple[str, str]]


def kept_headers(headers) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers if name.lower() not in DROPPED_HEADERS]


def prompt_text(body: bytes) -> str:
    """The prompt's text of a completions, chat or Responses body, in order (what a
    prefix cache would hold first); '' for any other body."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    if isinstance(data.get("messages"), list):
        return "".join(_text(message.get("content")) for message in data["messages"] if isinstance(message, dict))
    for field in ("prompt", "input"):  # completions; the Responses API
        if field in data:
            return _text(data[field])
    return ""


def routing_text(body: bytes, method: str, path: str) -> str:
    """What Ray's prefix router reads: the prompt's text, or, for a request without one
    (`GET /v1/models`, files), its method and path. Never empty: the router divides by
    its length (ray 2.60: an empty prompt raises inside it and the request never routes)."""
    return prompt_text(body) or f"{method} {path}"


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(item) for item in value)
    if isinstance(value, dict):
        return _text(value.get("text", value.get("content")))
    return ""


def unavailable(message: str) -> tuple[Head, bytes]:
    """The reply to a request the replica could not answer at all."""
    body = json.dumps(error_body(UNAVAILABLE, message, "service_unavailable")).encode()
    return Head(UNAVAILABLE, [("content-type", "application/json")]), body


def stream_cut(message: str) -> bytes:
    """The last event of a stream the replica could not finish."""
    return b"data: " + json.dumps(error_body(UNAVAILABLE, message, "service_unavailable")).encode() + b"\n\n"
