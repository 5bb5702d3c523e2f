"""What every benchmark script shares: arguments, machine facts, timing, tables, results files.

Speed figures on a shared machine are noisy, so every results file records the machine and its
load average before and after the run, and the scripts report ratios measured in one process
(e.g. files-to-vectors over model-only) next to absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

RESULTS_DIR = Path(__file__).parent / "results"
# The load when the script started, next to the one when it ended: was the machine busy?
_LOAD_AT_START = os.getloadavg()
# Wide enough for the tables when the output goes to a file (rich assumes 80 columns then).
console = Console(width=None if sys.stdout.isatty() else 180)
T = TypeVar("T")


def base_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: where its data is cached, the seed, the output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Cache directory for the built data sets (default: $LOOKALIKE_HOME/bench).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of every random choice.")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="Where to write the JSON results (default: benchmarks/results/<name>.json).",
    )
    return parser


def data_dir(arg: Path | None) -> Path:
    """The benchmark cache: ``--data-dir`` or ``$LOOKALIKE_HOME/bench`` (next to the model)."""
    if arg is not None:
        return arg
    from pipeline.settings import get_settings

    return get_settings().home / "bench"


def machine_info() -> dict[str, Any]:
    """The facts needed to compare figures between runs and machines."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    packages = {}
    for name in (
        "tensorflow-cpu",
        "tensorflow",
        "lancedb",
        "numpy",
        "pillow",
        "scikit-learn",
        "onnxruntime",
    ):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": round(ram_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "load_average_at_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "code": _code_version(),
        # Settings that change speed without changing code (thread counts, pipeline settings).
        "environment": {
            k: v for k, v in sorted(os.environ.items()) if k.startswith(("TF_NUM_", "LOOKALIKE_"))
        },
    }


def _code_version() -> str:
    """The commit measured, marked ``+dirty`` when the library has uncommitted changes."""
    root = Path(__file__).parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "pipeline"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit}{'+dirty' if dirty else ''}" or "unknown"


def write_results(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``payload`` with the machine facts and a timestamp as pretty JSON."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": "python -m benchmarks." + name + " " + " ".join(sys.argv[1:]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    console.print(f"results written to {path}")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table; floats are shown with 3 significant decimals."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr for long loops (hidden when not a terminal)."""
    stderr = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    with progress:
        yield from progress.track(items, total=total, description=description)


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean in milliseconds (p99 of a few hundred samples is near the
    worst)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "n": len(ms),
    }


@dataclass
class Usage:
    """CPU and memory of this process over a measured block."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def cores_busy(self) -> float:
        """CPU seconds per wall second: 2.0 means both cores of this machine were busy."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "cores_busy": round(self.cores_busy, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


class measure:
    """Wall time, CPU time (user + system, all threads, and ended child processes) and peak
    RSS of a block.

    Peak RSS comes from sampling with psutil every 50 ms when it is installed (it is not a
    project dependency): ``ru_maxrss`` alone is the peak of the whole process lifetime, which
    after model loading says little about the block itself. Without psutil that lifetime peak
    is reported instead.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.usage = Usage()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Usage:
        self._cpu0 = _cpu_seconds()
        self._wall0 = time.perf_counter()
        try:
            import psutil

            process = psutil.Process()
            self.usage.peak_rss_mb = process.memory_info().rss / 2**20

            def sample() -> None:
                while not self._stop.wait(self._interval):
                    rss = process.memory_info().rss / 2**20
                    self.usage.peak_rss_mb = max(self.usage.peak_rss_mb, rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        except ImportError:
            pass
        return self.usage

    def __exit__(self, *exc: object) -> None:
        self.usage.wall_s = time.perf_counter() - self._wall0
        self.usage.cpu_s = _cpu_seconds() - self._cpu0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.usage.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """CPU time of this process and of its child processes that have ended: an ingest run's
    decode workers end with it, so their decoding counts against the run that used them."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
