"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from pipeline.settings import Settings

# The cat photo of the sample library and its transformed copies (pipeline.samples).
CAT_COPIES = {
    "chelsea",
    "chelsea_crop",
    "chelsea_flip",
    "chelsea_warm",
    "chelsea_small",
    "chelsea_q30",
}


def stem(uri: str) -> str:
    """``file:///…/copies/chelsea_crop.jpg`` -> ``chelsea_crop``."""
    return uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The search API on a free loopback port, in a thread; yields its base URL."""
    from search_api import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server failed to start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
