"""A request-body cap for the app's JSON routes, applied before a request reaches the queue.

The upload route has its own cap (launch(max_file_size=...)), but an image can also arrive inside
the JSON of an event, as a `data:` URL. The handler refuses one over the upload cap before
decoding it (webui.handlers.query_source), yet by then the body has been read, parsed and held in
the queue: a few concurrent 250 MB payloads cost gigabytes while they wait. This ASGI middleware
refuses such bodies at the door with 413: by their Content-Length, or, for a chunked body, as soon
as the bytes received pass the cap. The upload routes are left to Gradio's own cap.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from starlette.middleware import Middleware

from .handlers import MAX_UPLOAD_BYTES

# A data: URL of an image at the upload cap is 4/3 of it in base64, plus the event's other fields.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 2 * 2 ** 20
UPLOAD_PATHS = ("/upload", "/gradio_api/upload")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse HTTP request bodies over `max_bytes` (413), except on the upload routes."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").rstrip("/").endswith(UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send, seen)

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps({"error": f"the request is {size / 2 ** 20:.0f} MB; the limit is "
                                    f"{self.max_bytes / 2 ** 20:.0f} MB (an image, uploaded or pasted, may be "
                                    f"{MAX_UPLOAD_BYTES >> 20} MB)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def body_limit() -> list[Middleware]:
    """For launch(app_kwargs={"middleware": body_limit()})."""
    return [Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)]
