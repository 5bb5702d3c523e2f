"""Pure ASGI middleware: request metrics, a time limit, an upload size limit, security headers.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: they must see the request body as it
streams in (to stop an oversized upload before it is buffered) and the moment a response
starts (to time out slow requests without cutting off a download in progress).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.metrics import Metrics


class MetricsMiddleware:
    """Counts requests and times them by route *template* (``/assets/{asset_id}``), so asset
    ids never become label values and the number of time series stays bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server sends if the app fails before starting a response

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.in_progress.dec()
            # The router stores the matched route in the scope; unmatched paths share a label.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


class TimeoutMiddleware:
    """Answers 504 when no response has started within ``seconds``.

    The deadline covers reading the request (a slow upload), queueing for the model and the
    search. Once the response starts it is lifted, so a large original image can still stream
    to a slow client. Work already handed to a thread finishes in the background; its result is
    dropped.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.seconds)

        async def lift_deadline(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, lift_deadline)
        except TimeoutError:
            if not deadline.expired() or started:
                raise
            response = JSONResponse(
                {"detail": f"the request took longer than {self.seconds:g} s and was stopped"},
                status_code=504,
            )
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 for request bodies over ``max_bytes``, declared or streamed.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked
    body is counted as it arrives and refused as soon as it passes the limit, so an endless
    upload never fills memory or the temporary directory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, message: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body parsing; FastAPI turns it into the response.
                    raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counted_receive, send)


class SecurityHeadersMiddleware:
    """Adds ``headers`` to every response that does not set them itself: browsers must not
    sniff a served file into HTML or script, nor frame the page (clickjacking)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, add_headers)
