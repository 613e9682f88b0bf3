"""Pure ASGI middleware (no BaseHTTPMiddleware: it would hide client disconnects)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from entropy_serve.server import metrics
from entropy_serve.server.errors import error_body

FILE_UPLOAD_PATH = "/v1/files"


class ErrorCounter:
    """Count every response with status >= 400 by status code."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                metrics.ERRORS.labels(status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


class BodySizeLimit:
    """Refuse request bodies over `max_body_bytes` (file uploads: `max_file_bytes`) with a 413.

    A declared Content-Length is checked before reading anything; a chunked body is
    read up to the limit, then handed on whole (the app's later receive() calls go to
    the client again, so disconnects are still seen).
    """

    def __init__(self, app, max_body_bytes: int, max_file_bytes: int | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes or max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_file_bytes if scope["path"] == FILE_UPLOAD_PATH else self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > limit:
                return await self._refuse(scope, receive, send, limit)
            return await self.app(scope, receive, send)

        body, more_body = bytearray(), True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":  # client left while sending
                return
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
            if len(body) > limit:
                return await self._refuse(scope, receive, send, limit)
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay_receive, send)

    async def _refuse(self, scope, receive, send, limit: int):
        message = f"request body is larger than the {limit} bytes allowed"
        response = JSONResponse(error_body(413, message, "invalid_request_error"), status_code=413)
        await response(scope, receive, send)
