"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
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


class Searcher(threading.Thread):
    """Runs ``query`` in a loop until stopped, as the clients of a search service do while a
    rollout switches model versions, recording the model version of every answer (what
    ``query`` returns) and every failure (whatever it raises: each is a finding)."""

    def __init__(self, query: Callable[[], str], pause_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.query = query
        self.pause_s = pause_s
        self.models: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.models.append(self.query())
            except Exception as exc:  # every failure is a finding, whatever its type
                self.errors.append(repr(exc))
            time.sleep(self.pause_s)

    def wait_for(self, model: str, answers: int = 20, timeout_s: float = 60) -> None:
        """Until the last ``answers`` answers all came from ``model``."""
        deadline = time.monotonic() + timeout_s
        while self.models[-answers:].count(model) < answers and time.monotonic() < deadline:
            time.sleep(0.2)
