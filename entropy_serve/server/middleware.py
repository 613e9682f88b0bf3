"""Pure ASGI middleware (no BaseHTTPMiddleware: it would hide client disconnects)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from entropy_serve.server import metrics
from entropy_serve.server.errors import PayloadTooLarge, error_body


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
    """ASGI middleware: refuse request bodies over `max_body_bytes` with a 413."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._refuse(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body is larger than the {self.max_body_bytes} bytes allowed"

    async def _refuse(self, scope, receive, send):
        response = JSONResponse(
            error_body(413, self._message(), "invalid_request_error"), status_code=413
        )
        await response(scope, receive, send)
