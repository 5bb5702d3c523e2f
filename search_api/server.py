"""Running the app under uvicorn with the server's own timeouts.

uvicorn closes idle keep-alive connections, but a client that connects and then sends its
request headers slowly, or never (slowloris), holds its connection for as long as it likes.
:class:`HeaderTimeoutProtocol` gives every request a deadline for its headers. In production,
put a reverse proxy in front as well (docs/api.md shows one): it buffers slow clients so that
they never reach the app at all.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pipeline.settings import Settings


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection whose request headers are not complete
    ``header_timeout_s`` after it opened or after the request's first byte arrived."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_deadline()
        super().on_headers_complete()

    def _start_deadline(self) -> None:
        self._cancel_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_config(
    app: FastAPI, settings: Settings, host: str, port: int, **options: Any
) -> uvicorn.Config:
    """How ``lookalike serve`` (and the tests) run ``app``: header and keep-alive timeouts
    from the settings, no ``Server`` header; ``options`` go to ``uvicorn.Config``."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=functools.partial(  # type: ignore[arg-type]
            HeaderTimeoutProtocol, header_timeout_s=settings.api_header_timeout_s
        ),
        timeout_keep_alive=settings.api_keep_alive_s,
        server_header=False,
        **options,
    )
