"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    from search_api.server import server_config

    server = uvicorn.Server(server_config(create_app(settings), settings, "127.0.0.1", 0))
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
    """A command that ran to its end: exit code, output, and the peak resident memory of it
    and the processes it waited for (its decode workers), from the kernel's accounting."""

    code: int
    stdout: str
    stderr: str
    peak_rss_bytes: int


def run_measured(command: list[str], env: Mapping[str, str], timeout_s: float) -> Finished:
    """Run ``command`` and measure its peak memory (``wait4``: this process only, not every
    child the test session ever had); killed after ``timeout_s``, which fails the test."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=dict(env))
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        assert code != -9, f"{command[:3]}... was still running after {timeout_s} s"
        out.seek(0)
        err.seek(0)
        return Finished(
            code,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_maxrss * 1024,
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
