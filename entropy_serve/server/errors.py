"""Errors in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}.

Handlers raise the APIError subclasses below; `install_error_handlers` turns them, and
FastAPI's own validation and routing errors, into responses of that shape, so no client
ever sees a bare 422 or an HTML 500.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class BadRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(APIError):
    status_code = 401
    error_type = "invalid_request_error"


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    pass


class ClientDisconnected(APIError):
    """Nobody reads this response; 499 is the conventional "client closed request"."""

    status_code = 499
    error_type = "client_closed_request"


class EngineUnavailable(APIError):
    status_code = 503
    error_type = "service_unavailable"


def error_body(status_code: int, message: str, error_type: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status_code, error.message, error.error_type, error.param, error.code)
    return JSONResponse(body, status_code=error.status_code)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable message naming each bad field, and the first field's name."""
    parts, first_param = [], None
    for error in errors:
        location = _field_path(error.get("loc", ()))
        field = ".".join(location)
        first_param = first_param or (location[0] if location else None)
        message = error.get("msg", "invalid value").removeprefix("Value error, ")
        if not location:  # a check across fields names its field first: "tool_choice: needs tools"
            named = re.match(r"([a-z_]+): ", message)
            first_param = first_param or (named.group(1) if named else None)
        if error.get("type") == "json_invalid":
            message = f"malformed JSON body: {error.get('ctx', {}).get('error', message)}"
            field = ""
        elif field and "input" in error and error.get("type") != "missing":
            message = f"{message} (got {error['input']!r:.80})"
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts), first_param


def _field_path(location: tuple) -> list[str]:
    """The client's path to a field: without FastAPI's "body", nor the tag pydantic puts
    after a tagged union (`strategy.entropy_fork.trees` is the client's `strategy.trees`)."""
    path = [str(part) for part in location if part != "body"]
    if len(path) > 2 and path[0] == "strategy":
        del path[1]
    return path


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(error.errors()))
        return error_response(BadRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if error.status_code < 500 else "server_error"
        body = error_body(error.status_code, str(error.detail), error_type)
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error while handling a request")
        body = error_body(500, f"internal error: {type(error).__name__}", "server_error")
        return JSONResponse(body, status_code=500)
