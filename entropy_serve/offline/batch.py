"""One line of OpenAI's batch input format -> one line of its output format.

Input line: {"custom_id", "method": "POST", "url": "/v1/chat/completions" or
"/v1/completions", "body"}, as OpenAI's Batch API and `vllm run-batch` read it. The
body is answered by the in-process service (server/core/service.py), so a line behaves as
the same body sent over HTTP.

Output line: {"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}. A request the server would refuse gets the server's status code and
its error body ({"error": {message, type, param, code}}), as OpenAI's batch output
does; so does a line that is not a request at all (not JSON, no custom_id, another
url or method), with a message naming the line. `error` stays null: it is for failures
that are not HTTP answers, and those (the engine died) stop the run instead, to be
answered by a rerun.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from openai.types import Completion
from openai.types.chat import ChatCompletion

from entropy_serve.offline.records import InputLine
from entropy_serve.offline.runner import Answered
from entropy_serve.server.core.service import Endpoint, Service
from entropy_serve.server.errors import APIError, BadRequest, error_body

ENDPOINTS = {"/v1/completions": Endpoint.COMPLETIONS, "/v1/chat/completions": Endpoint.CHAT_COMPLETIONS}
SERVER_ERROR = 500  # from here on, a status is the service's failure, not the line's


class LineError(APIError):
    """A line that is not a request this server answers, with the status HTTP would give."""

    error_type = "invalid_request_error"

    def __init__(self, status_code: int, message: str, param: str | None = None):
        super().__init__(message, param=param)
        self.status_code = status_code


def request_of(line: InputLine, urls: Collection[str] = tuple(ENDPOINTS)) -> tuple[Endpoint, object]:
    """The line's endpoint and body, or a LineError saying why it has none; `urls`: those
    a line may name (an online batch's lines all name its endpoint)."""
    if line.error is not None:
        raise LineError(400, line.error)
    value = line.value
    if not isinstance(value, dict):
        raise LineError(400, f"line {line.number}: must be a JSON object, got {type(value).__name__}")
    if line.custom_id is None:
        raise LineError(400, f"line {line.number}: custom_id: required, a string unique in the file", param="custom_id")
    method = value.get("method")
    if method != "POST":
        raise LineError(405, f"line {line.number}: method: only POST is allowed, got {method!r}", param="method")
    url = value.get("url")
    if url not in urls:
        raise LineError(
            404, f"line {line.number}: url: {url!r} is not served here; use {' or '.join(sorted(urls))}", param="url"
        )
    if "body" not in value:
        raise LineError(400, f"line {line.number}: body: required", param="body")
    body = value["body"]
    if isinstance(body, dict) and body.get("stream") is True:
        raise BadRequest("stream: a batch line is answered whole; leave stream out", param="stream")
    return ENDPOINTS[url], body


async def answer_line(service: Service, line: InputLine, urls: Collection[str] = tuple(ENDPOINTS)) -> Answered:
    """The line's output record; failures of the service itself (5xx) are raised."""
    try:
        endpoint, body = request_of(line, urls)
        reply = await service.answer(body, endpoint)
    except APIError as error:
        if error.status_code >= SERVER_ERROR:
            raise
        response = {
            "status_code": error.status_code,
            "request_id": f"batch-{uuid.uuid4().hex}",
            "body": error_body(error.status_code, error.message, error.error_type, error.param, error.code),
        }
        return Answered(record=_record(line, response), ok=False, num_tokens=0)
    assert isinstance(reply, Completion | ChatCompletion)  # stream was refused above
    response = {"status_code": 200, "request_id": reply.id, "body": reply.model_dump(mode="json", exclude_unset=True)}
    return Answered(
        record=_record(line, response), ok=True, num_tokens=reply.usage.completion_tokens if reply.usage else 0
    )


def _record(line: InputLine, response: dict) -> dict:
    return {"id": f"batch_req_{uuid.uuid4().hex}", **line.record_key_fields(), "response": response, "error": None}
