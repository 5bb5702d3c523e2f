"""Ingestion through the real stack (scripts/stack.sh): images per minute with 1 and 2 workers.

    python -m benchmarks.airflow_stack [--workers 1,2] [--files 192] [--batch-size 24]

For each worker count the script brings up a fresh stack (PostgreSQL, Redis, the OpenSearch
node, Airflow 3 with the CeleryExecutor and that many Celery workers, the search API), builds
a library of camera-size JPEGs (benchmarks.datasets.build_library), unpauses and triggers the
ingest DAG through Airflow's REST API, waits for it and tears the stack down. The rate is the
run's embedded images over its wall time, from the first task's start to the last task's end:
scheduling, Celery hand-offs and every task's start-up (imports, model load) included, which
is what a user waits for. Each mapped batch's time and worker come from the task instances.

``Stack`` and ``AirflowApi`` are what tests/test_stack_e2e.py drives the stack with: a folder
that ``scripts/stack.sh`` manages, and Airflow's REST API (``/api/v2``), never the DAG files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil

from benchmarks.common import base_parser, data_dir, print_table, write_results
from benchmarks.datasets import LibraryConfig, build_library

NAME = "airflow_stack"
REPO = Path(__file__).resolve().parents[1]
STACK_SH = REPO / "scripts" / "stack.sh"
FINISHED = {"success", "failed"}


class StackError(RuntimeError):
    """``scripts/stack.sh`` failed; the message carries the end of its output."""


@dataclass
class Stack:
    """The stack in ``folder``, managed by scripts/stack.sh with ``environ`` on top of this
    process's environment (ports, library, Airflow settings for the services)."""

    folder: Path
    environ: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(
            ["bash", str(STACK_SH), *args, "--dir", str(self.folder)],
            env={**os.environ, **self.environ},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise StackError(
                f"scripts/stack.sh {' '.join(args)} exited {done.returncode}: "
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        return done.stdout

    def up(self) -> None:
        """Start whatever is not running (the first time: everything)."""
        self.run("up")

    def down(self) -> None:
        self.run("down", timeout=300)

    def env(self) -> dict[str, str]:
        """The services' environment (``scripts/stack.sh env``), unquoted."""
        values = {}
        for line in self.run("env").splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0] if value else ""
        return values

    def state(self) -> dict[str, str]:
        """Ports and generated secrets the stack chose (its ``stack.env``)."""
        text = (self.folder / "stack.env").read_text()
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.state()['AIRFLOW_PORT']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.state()['API_PORT']}"

    @property
    def opensearch_url(self) -> str:
        return f"http://127.0.0.1:{self.state()['OPENSEARCH_PORT']}"

    def kill(self, service: str) -> list[int]:
        """``kill -9`` a service and every process of its session at once (a worker's task
        processes too, which sit in process groups of their own): a crash, not a shutdown."""
        leader = int((self.folder / "run" / f"{service}.pid").read_text())
        victims = [p for p in psutil.process_iter() if _session(p.pid) == leader]
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)
        return [p.pid for p in victims]

    def stop_node(self) -> None:
        """Stop the OpenSearch node and keep its data (``stack.sh up`` starts it again)."""
        subprocess.run(
            ["bash", str(REPO / "scripts" / "opensearch.sh"), "stop", "--name", "stack", "--keep"],
            env={**os.environ, "LOOKALIKE_NODE_RUN": str(self.folder / "opensearch")},
            check=True,
            capture_output=True,
            timeout=120,
        )


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


class AirflowApi:
    """Airflow 3's REST API as the UI's admin user (a JWT from ``/auth/token``)."""

    def __init__(self, url: str, password: str, username: str = "admin") -> None:
        token = httpx.post(
            f"{url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        token.raise_for_status()
        self.http = httpx.Client(
            base_url=f"{url}/api/v2",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=60,
        )

    def _get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def unpause(self, dag_id: str) -> None:
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        """A manual run with ``conf`` as its params; returns its run id."""
        response = self.http.post(
            f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)}
        )
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def wait(self, dag_id: str, run_id: str, timeout_s: float = 600, poll_s: float = 1) -> str:
        """The run's final state (``success`` or ``failed``)."""
        deadline = time.monotonic() + timeout_s
        while (state := self.run(dag_id, run_id)["state"]) not in FINISHED:
            if time.monotonic() > deadline:
                states = {
                    (t["task_id"], t["map_index"]): t["state"] for t in self.tasks(dag_id, run_id)
                }
                raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout_s}s: {states}")
            time.sleep(poll_s)
        return state

    def tasks(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones once per map index)."""
        found = self._get(
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", limit=1000
        )
        return found["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        """Every attempt of one task instance, with the host that ran it."""
        where = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        path = f"{where}/{map_index}/tries" if map_index >= 0 else f"{where}/tries"
        return self._get(path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        return self._get(f"{path}/xcomEntries/return_value", deserialize=True)["value"]

    def log(self, dag_id: str, run_id: str, task_id: str, attempt: int, map_index: int = -1) -> str:
        """One attempt's task log as text, one event per line."""
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
        content = self._get(f"{path}/logs/{attempt}", map_index=map_index)["content"]
        return "\n".join(str(entry.get("event", "")) for entry in content)


def run_seconds(tasks: list[dict[str, Any]]) -> float:
    """Wall time from the first task's start to the last task's end."""
    starts = [_time(t["start_date"]) for t in tasks if t["start_date"]]
    ends = [_time(t["end_date"]) for t in tasks if t["end_date"]]
    return (max(ends) - min(starts)).total_seconds()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def measure(workers: int, library: Path, batch_size: int, folder: Path) -> dict[str, Any]:
    """One fresh stack with ``workers`` Celery workers, one ingest of ``library``."""
    stack = Stack(
        folder,
        {
            "LOOKALIKE_STACK_WORKERS": str(workers),
            "LOOKALIKE_STACK_AIRFLOW_PORT": "0",
            "LOOKALIKE_STACK_API_PORT": "0",
            "LOOKALIKE_LIBRARY": str(library),
            "LOOKALIKE_INGEST_SCHEDULE": "none",
            "LOOKALIKE_ENV_FILE": str(REPO / ".env.example"),
        },
    )
    started = time.perf_counter()
    try:
        stack.up()
        up_s = time.perf_counter() - started
        password = stack.env()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
        api = AirflowApi(stack.airflow_url, _admin_password(Path(password)))
        api.unpause("lookalike_ingest")
        run_id = api.trigger(
            "lookalike_ingest", {"source": str(library), "manifest": None, "batch_size": batch_size}
        )
        state = api.wait("lookalike_ingest", run_id, timeout_s=3600, poll_s=2)
        tasks = api.tasks("lookalike_ingest", run_id)
        summary = api.xcom("lookalike_ingest", run_id, "summary") if state == "success" else {}
    finally:
        stack.down()
    batches = [t for t in tasks if t["task_id"] == "embed_batch"]
    seconds = run_seconds(tasks)
    embedded = summary.get("new", 0) + summary.get("updated", 0)
    return {
        "workers": workers,
        "state": state,
        "images": embedded,
        "batches": len(batches),
        "run_s": round(seconds, 1),
        "images_per_min": round(60 * embedded / seconds, 1),
        "batch_s": sorted(round(t["duration"], 1) for t in batches),
        "batches_per_worker": {
            host: sum(t["hostname"] == host for t in batches)
            for host in sorted({t["hostname"] for t in batches})
        },
        "stack_up_s": round(up_s, 1),
    }


def _admin_password(passwords_file: Path) -> str:
    return json.loads(passwords_file.read_text())["admin"]


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="Worker counts, comma-separated.")
    parser.add_argument("--files", type=int, default=192, help="Images in the library.")
    parser.add_argument("--batch-size", type=int, default=24, help="Images per mapped task.")
    args = parser.parse_args(argv)
    library = build_library(
        data_dir(args.data_dir) / "stack-library", LibraryConfig(files=args.files)
    )
    source = library.root / "files"
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory(prefix="lookalike-bench-stack-") as tmp:
            os.chmod(tmp, 0o755)  # the stack's PostgreSQL runs as its own user under root
            rows.append(measure(workers, source, args.batch_size, Path(tmp) / "stack"))
    print_table(
        "ingest through Airflow (CeleryExecutor) into OpenSearch",
        ["workers", "images", "batches", "run s", "images/min", "batches per worker"],
        [
            (
                r["workers"],
                r["images"],
                r["batches"],
                r["run_s"],
                r["images_per_min"],
                r["batches_per_worker"],
            )
            for r in rows
        ],
    )
    write_results(
        NAME,
        {"files": args.files, "batch_size": args.batch_size, "runs": rows},
        args.results,
    )


if __name__ == "__main__":
    main()
