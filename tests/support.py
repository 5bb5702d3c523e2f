"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from pipeline.document import IngestSummary
from pipeline.embed import Embedder
from pipeline.ingest import ingest
from pipeline.library import Library
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
    from search_api.server import server_config

    config = server_config(create_app(settings), settings, "127.0.0.1", 0, log_level="warning")
    server = uvicorn.Server(config)
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


LOOKALIKE = Path(sys.executable).with_name("lookalike")
# The capabilities that let root read any file: a process without them obeys file permissions.
_BYPASS_PERMISSIONS = "-dac_override,-dac_read_search"


def unprivileged(command: list[str]) -> list[str]:
    """``command`` as a process that file permissions apply to. CI runs as root, whom ``chmod
    000`` does not stop: there the command runs as root still (it owns the test's files) but
    without the capabilities that bypass permissions (``setpriv``, util-linux)."""
    if os.geteuid() != 0:
        return command
    return [
        "setpriv",
        f"--bounding-set={_BYPASS_PERMISSIONS}",
        f"--inh-caps={_BYPASS_PERMISSIONS}",
        "--",
        *command,
    ]


@dataclass(frozen=True)
class Finished:
    """A command that ran to its end: exit code, output, and the peak resident memory of the
    largest process among it and those it waited for (its decode workers)."""

    code: int
    stdout: str
    stderr: str
    peak_rss_bytes: int


# Runs the command and writes the peak memory of its process tree to the file named first.
# Measured by this small parent: a child forked from the test session would count the session's
# own memory (the kernel keeps the high-water mark across fork and exec).
_MEASURE = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(code if code >= 0 else 128 - code)"
)


def run_measured(command: list[str], env: Mapping[str, str], timeout_s: float) -> Finished:
    """Run ``command`` and measure its peak memory; killed (with everything it started) after
    ``timeout_s``, which fails the test."""
    with tempfile.TemporaryDirectory() as scratch:
        peak = Path(scratch) / "peak"
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(peak), *command],
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{command[:3]}... still ran after {timeout_s} s") from None
        return Finished(
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            int(peak.read_text()) * 1024,
        )


def cli_env(home: Path, model_dir: Path, **settings: object) -> dict[str, str]:
    """The environment of a ``lookalike`` process with its own home, sharing the converted
    model of the test session (``model_dir``) so that it is not converted again."""
    (home / "models").parent.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(model_dir)
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    env.update({f"LOOKALIKE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


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


def ingest_samples(library: Library, sample_manifest: Path, embedder: Embedder) -> IngestSummary:
    """The sample library into ``library`` with the session's model (a test's own home)."""
    return ingest(
        sample_manifest.parent,
        sample_manifest,
        library=library,
        embedder=embedder,
        settings=library.settings,
    )
