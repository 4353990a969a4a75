"""ASGI guards in front of Gradio: a request-body cap, the library files served, well-formed API calls.

Body cap (BodyLimit).

The upload route has its own cap (launch(max_file_size=...)), but an image can also arrive inside
the JSON of an event, as a `data:` URL. The handler refuses one over the upload cap before
decoding it (webui.handlers.query_source), yet by then the body has been read, parsed and held in
the queue: a few concurrent 250 MB payloads cost gigabytes while they wait. This ASGI middleware
refuses such bodies at the door with 413: by their Content-Length, or, for a chunked body, as soon
as the bytes received pass the cap. The upload routes are left to Gradio's own cap.

Library files (LibraryFiles). launch() must allow the library folder (Gradio copies result images
from there into its cache), and Gradio's file route then serves everything in it: `.env`,
`.git/config`, notes, thumbnails. This guard lets the route serve, from the library folder, only the
images the index holds (by their manifest entries, handlers.library_file); it also refuses URLs on
that route, which would make the server fetch them. Everything else is Gradio's to decide.

API calls (ApiGuard). Gradio answers an unknown endpoint, a private endpoint called by name, an
unknown fn_index or an example index out of range with HTTP 500 and a traceback in the log. This
guard refuses them first with 404 or 422 and one short log line. It also keeps queued events in
the queue: the direct routes (/run, /api) serve only unqueued events, so no client can step past
the queue's concurrency and size limits.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Awaitable, Callable, Iterator

import anyio
import gradio as gr
from starlette.middleware import Middleware

from retrieval.search import LookalikeIndex

from .handlers import MAX_UPLOAD_BYTES, NOT_AN_UPLOAD, QueryFiles, echo, library_file, payload_problem

log = logging.getLogger(__name__)

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
        await refuse(send, 413, {"error": f"the request is {size / 2 ** 20:.0f} MB; the limit is "
                                          f"{self.max_bytes / 2 ** 20:.0f} MB (an image, uploaded or pasted, may be "
                                          f"{MAX_UPLOAD_BYTES >> 20} MB)"})


async def refuse(send: Send, status: int, content: dict[str, str]) -> None:
    """A short JSON answer, sent before Gradio sees the request."""
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def route_path(scope: Scope) -> str:
    """The request's path below the app's root path (what Gradio's routes match)."""
    path, root = scope.get("path", ""), scope.get("root_path") or ""
    return path[len(root):] if root and path.startswith(root) else path


# -- library files ---------------------------------------------------------------------------------
FILE_ROUTE = re.compile(r"/gradio_api/file[=/](.*)", re.DOTALL)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


class LibraryFiles:
    """On Gradio's file route: from the library folder, only the images the index holds; no URLs."""

    def __init__(self, app: Callable[..., Awaitable[None]], index: LookalikeIndex) -> None:
        self.app, self.index = app, index
        self.roots = {os.path.abspath(index.data_dir), os.path.realpath(index.data_dir)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = FILE_ROUTE.fullmatch(route_path(scope)) if scope["type"] == "http" else None
        if match and not self.may_serve(match.group(1)):
            log.info("refused a file request: %s", echo(match.group(1)))
            await refuse(send, 403, {"detail": "File not allowed."})   # as Gradio says it for any other file
            return
        await self.app(scope, receive, send)

    def may_serve(self, target: str) -> bool:
        """False for a URL and for a file in the library folder that is not an indexed image."""
        if _SCHEME.match(target):
            return False
        path = os.path.abspath(target)
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            return False
        inside = any(p == root or p.startswith(root.rstrip(os.sep) + os.sep)
                     for p in (path, real) for root in self.roots)
        return not inside or library_file(self.index, path)


# -- API calls -------------------------------------------------------------------------------------
API_ROUTE = re.compile(r"/gradio_api/(?:(call/v2|call|run|api)/([^/]*)/?|(queue/join))")
RESULT_ROUTE = re.compile(r"/gradio_api/(?:call/v2|call)/[^/]*/([^/]*)/?|/gradio_api/(queue/data)")
PARSE_INLINE_BYTES = 2 ** 20   # a larger body is parsed and checked in a worker thread, off the event loop
MAX_DEPTH = 32                 # JSON nesting Gradio's own recursive walks would choke on
NO_ENDPOINT = (404, "no such endpoint; see the app's API page for the ones it offers")
Problem = tuple[int, str]


class ApiGuard:
    """Refuse API calls Gradio would answer with a 500 and a traceback, queued events on the direct
    routes, and query images that are not uploads; pass everything else through unchanged (the
    body is replayed as received)."""

    def __init__(self, app: Callable[..., Awaitable[None]], files: QueryFiles) -> None:
        self.app, self.files = app, files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blocks = _blocks(scope)
        path = route_path(scope)
        call = API_ROUTE.fullmatch(path) if blocks and scope.get("method") == "POST" else None
        result = RESULT_ROUTE.fullmatch(path) if blocks and scope.get("method") == "GET" else None
        if result and not _result_waiting(blocks, result.group(1), scope):
            await self._refuse(send, path, (404, "no such event: it finished and was collected, or never was"))
            return
        if not call:
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        if body is None:
            return   # the client went away
        route, name = call.group(1) or call.group(3), call.group(2)
        check = lambda: call_problem(blocks, route, name, body, self.files)   # noqa: E731
        problem = check() if len(body) <= PARSE_INLINE_BYTES else await anyio.to_thread.run_sync(check)
        if problem:
            await self._refuse(send, path, problem)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send, path: str, problem: Problem) -> None:
        log.info("refused an API call to %s: %s", echo(path), problem[1])
        await refuse(send, problem[0], {"error": problem[1]})


def _blocks(scope: Scope) -> Any:
    app = scope.get("app")
    try:
        return app.get_blocks() if app is not None and hasattr(app, "get_blocks") else None
    except Exception:   # Gradio raises when the app has no Blocks yet
        return None


async def _read(receive: Receive) -> bytes | None:
    """The whole request body (BodyLimit, outside, has already capped it), or None on disconnect."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _result_waiting(blocks: Any, event_id: str | None, scope: Scope) -> bool:
    """Whether Gradio holds messages for this event (or session): its result routes raise a 404
    inside an already started stream otherwise, which logs a traceback. Mirrors routes.py."""
    queue = blocks._queue
    if event_id is None:   # /queue/data?session_hash=...
        from urllib.parse import parse_qs
        session = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash") or [""])[0]
    else:
        event = queue.event_ids_to_events.get(event_id)
        session = event.session_hash if event is not None else next(
            (s for s, ids in queue.pending_event_ids_session.items() if event_id in ids), event_id)
    return session in queue.pending_messages_per_session


def call_problem(blocks: Any, route: str, name: str | None, body: bytes, files: QueryFiles) -> Problem | None:
    """Why this call is refused, as (HTTP status, message), or None. Named routes take public (and
    undocumented) endpoints only; the browser's own calls name a function by its index
    (fn_index), private ones included."""
    try:
        payload = json.loads(body)
    except RecursionError:
        return 422, "the request is nested too deeply"
    except ValueError:
        return None   # not JSON: Gradio's own validation answers 422
    if not isinstance(payload, dict):
        return None
    shown = ("public",) if route == "call/v2" else ("public", "undocumented")   # v2 reads the API page
    named = {fn.api_name: fn for fn in blocks.fns.values() if fn.api_name and fn.api_visibility in shown}
    fn_index = payload.get("fn_index") if route in ("run", "api", "queue/join") else None
    if fn_index is not None:
        fn = blocks.fns.get(fn_index) if isinstance(fn_index, int) and not isinstance(fn_index, bool) else None
    else:
        fn = named.get(name) if route != "queue/join" else None
    if fn is None:
        return NO_ENDPOINT
    if route in ("run", "api") and fn.queue:
        return 404, "this endpoint runs through the queue: call it with /gradio_api/call/NAME (gradio_client does)"
    try:
        return _inputs_problem(fn, payload.get("data"), route, files) or _event_problem(payload.get("event_data"), files)
    except _TooDeep:
        return 422, "the request is nested too deeply"


def _inputs_problem(fn: Any, data: Any, route: str, files: QueryFiles) -> Problem | None:
    """The values of an event: as many as it takes; an example index the page lists; a query image
    that is an upload (or a library image); and no file anywhere else that is not an upload."""
    if route == "call/v2" or not isinstance(data, list):
        return None   # v2 takes named values; a non-list is Gradio's validation's (422)
    sizes = {len(fn.inputs), len([b for b in fn.inputs if not getattr(b, "skip_api", False)])}
    if len(data) not in sizes:
        return 422, f"this endpoint takes {' or '.join(map(str, sorted(sizes)))} values, got {len(data)}"
    for block, value in zip(fn.inputs, data):
        if isinstance(block, gr.Dataset) and value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(block.samples)):
            return 422, f"no such example: {echo(value)}"
        if isinstance(block, gr.Image):
            problem = payload_problem(value, files, uploads_only=_file_data(value))
            if problem:
                return 422, problem
        elif any(not files.check(d["path"], uploads_only=True) for d in _files_in(value, meta_only=True)):
            return 422, NOT_AN_UPLOAD
    return None


def _event_problem(event_data: Any, files: QueryFiles) -> Problem | None:
    """A click's data (a gallery item) may name only a file the page got from the server."""
    if any(not files.check(d["path"], uploads_only=True) for d in _files_in(event_data, meta_only=False)):
        return 422, NOT_AN_UPLOAD
    return None


class _TooDeep(Exception):
    pass


def _file_data(value: Any) -> bool:
    """A FileData payload, as Gradio recognises one (gradio_client.utils.is_file_obj_with_meta)."""
    return (isinstance(value, dict) and isinstance(value.get("path"), str)
            and isinstance(value.get("meta"), dict) and value["meta"].get("_type") == "gradio.FileData")


def _files_in(value: Any, *, meta_only: bool, depth: int = 0) -> Iterator[dict[str, Any]]:
    """The file payloads inside a JSON value (FileData ones only, with `meta_only`)."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    if isinstance(value, dict):
        if _file_data(value) or not meta_only and isinstance(value.get("path"), str):
            yield value
            return
        for item in value.values():
            yield from _files_in(item, meta_only=meta_only, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _files_in(item, meta_only=meta_only, depth=depth + 1)


def guards(index: LookalikeIndex) -> list[Middleware]:
    """For launch(app_kwargs={"middleware": guards(index)}): the body cap first, then the rest."""
    return [Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES), Middleware(LibraryFiles, index=index),
            Middleware(ApiGuard, files=QueryFiles.for_index(index))]


def body_limit() -> list[Middleware]:
    """For launch(app_kwargs={"middleware": body_limit()}): the body cap alone."""
    return [Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)]
