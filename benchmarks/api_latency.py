"""Image-query latency through the search API, with several concurrent clients.

    python -m benchmarks.api_latency [--clients 1,4,8] [--requests 200]

What a user of the API waits for: upload, decode, embed, search, JSON. The script builds the
sample library into a temporary LOOKALIKE_HOME, ingests it with ``lookalike ingest``, starts
``lookalike serve`` on 127.0.0.1 (a separate process, as in production) and sends a bounded
number of multipart image queries from 1, 4 and 8 concurrent clients, then the same with JSON
"more like this asset" queries, which skip decoding and embedding: the difference is the cost
of the model. Image queries run twice, on a server that micro-batches concurrent queries (the
default) and on one that does not (``LOOKALIKE_API_BATCH_SIZE=1``), and the model-only rate at
the API's batch size is measured in this process first, in the same run, as the yardstick.
The clients run on the same machine as the server, so they take some of its CPU; loopback
only, nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import measure, percentiles, print_table, write_results

NAME = "api_latency"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients",
        default="1,4,8",
        help="Comma-separated numbers of concurrent clients (default: 1,4,8).",
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="Measured requests per level (default: 200)."
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="Unmeasured requests before each level."
    )
    parser.add_argument("--k", type=int, default=10, help="Hits per query (default: 10).")
    parser.add_argument(
        "--results", type=Path, default=None, help="JSON output (default: benchmarks/results/)."
    )
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="lookalike-api-bench-") as tmp:
        home = Path(tmp) / "home"
        env = _environment(home)
        samples = _ingest_samples(home, env)
        queries = sorted(p for p in (samples / "originals").iterdir() if p.is_file())
        images = [(p.name, p.read_bytes()) for p in queries]
        model_only = _model_only_rate()
        rows, embed, batches = [], {}, {}
        for variant, overrides in (
            ("batched", {}),
            ("unbatched", {"LOOKALIKE_API_BATCH_SIZE": "1"}),
        ):
            kinds = (
                ("image upload", "asset (no model)") if variant == "batched" else ("image upload",)
            )
            with _server({**env, **overrides}) as (base, ready):
                measured = asyncio.run(
                    _measure(base, images, levels, args.requests, args.warmup, args.k, kinds)
                )
                rows += [{"server": variant} | r for r in measured]
                embed[variant] = _embedding_stats(base)
                batches[variant] = _batch_sizes(base)

    print_table(
        f"API query latency, {ready['model']} ({model_only['backend']}), "
        f"{ready['documents']} assets, k={args.k} "
        f"(client-side, loopback; server = time inside the app); model only at batch "
        f"{model_only['batch_size']}: {model_only['images_per_s']} images/s",
        [
            "server",
            "query",
            "clients",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "req/s",
            "÷ model only",
            "server p50 ms",
            "errors",
        ],
        [
            (
                r["server"],
                r["query"],
                r["clients"],
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
                r["latency"]["mean_ms"],
                r["requests_per_s"],
                round(r["requests_per_s"] / model_only["images_per_s"], 3)
                if r["query"] == "image upload"
                else None,
                r["in_server"]["p50_ms"],
                r["errors"],
            )
            for r in rows
        ],
    )
    for variant, stats in embed.items():
        print(
            f"{variant}: query embedding inside the server (decode + model) mean "
            f"{stats['mean_ms']} ms over {stats['count']} images; images per model call "
            f"{batches[variant]}"
        )
    write_results(
        NAME,
        {
            "parameters": {
                "clients": levels,
                "requests_per_level": args.requests,
                "warmup_per_level": args.warmup,
                "k": args.k,
                "query_images": [name for name, _ in images],
            },
            "model": ready["model"],
            "backend": model_only["backend"],
            "documents": ready["documents"],
            "model_only": model_only,
            "levels": rows,
            "server_embedding": embed,
            "images_per_model_call": batches,
        },
        args.results,
    )


def _environment(home: Path) -> dict[str, str]:
    """The server's environment: a fresh home, no API key (other LOOKALIKE_* tuning passes
    through), and the converted model copied from the current home when there is one
    (converting it again would cost a minute)."""
    from pipeline.settings import get_settings

    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_API_KEY"}
    env["LOOKALIKE_HOME"] = str(home)
    cached = get_settings().model_dir
    if cached.is_dir():
        shutil.copytree(cached, home / "models")
    return env


def _model_only_rate(batches: int = 20) -> dict[str, Any]:
    """Images/s of the server's model (the same settings) alone at the API's batch size, in
    this process while no server runs: the rate micro-batched image queries are held to."""
    from pipeline.embed import get_embedder
    from pipeline.settings import get_settings

    embedder = get_embedder()
    size, batch_size = embedder.spec.image_size, get_settings().api_batch_size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), np.uint8)
    embedder.predict(batch)
    with measure() as usage:
        for _ in range(batches):
            embedder.predict(batch)
    return {
        "backend": embedder.backend,
        "batch_size": batch_size,
        "images_per_s": round(batch_size * batches / usage.wall_s, 1),
        **usage.as_dict(),
    }


@contextmanager
def _server(env: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``lookalike serve`` on a free loopback port, ready; stopped gracefully afterwards."""
    port = _free_port()
    server = subprocess.Popen(
        [_lookalike(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        yield base, _wait_ready(base, server)
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _lookalike() -> str:
    """The ``lookalike`` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("lookalike"))


def _ingest_samples(home: Path, env: dict[str, str]) -> Path:
    samples = home / "samples"
    started = time.perf_counter()
    subprocess.run([_lookalike(), "samples", str(samples)], env=env, check=True, stdout=2)
    ingest = subprocess.run(
        [_lookalike(), "ingest", str(samples), "--manifest", str(samples / "manifest.csv")],
        env=env,
        stdout=2,
    )
    if ingest.returncode not in (0, 3):  # 3: indexed, and quarantined the deliberately bad files
        raise subprocess.CalledProcessError(ingest.returncode, ingest.args)
    print(f"sample library ingested in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return samples


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(base: str, server: subprocess.Popen[str], timeout_s: float = 180) -> dict:
    """Poll /readyz until the model is loaded; fail with the server's output if it exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"lookalike serve exited:\n{server.stderr.read()}")
        try:
            response = httpx.get(f"{base}/readyz", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the server was not ready within {timeout_s:.0f} s")


async def _measure(
    base: str,
    images: list[tuple[str, bytes]],
    levels: list[int],
    requests: int,
    warmup: int,
    k: int,
    kinds: tuple[str, ...],
) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        first = await client.post("/search", json={"k": 1})
        asset_id = first.json()["hits"][0]["id"]

        def image_query(i: int) -> dict[str, Any]:
            name, data = images[i % len(images)]
            return {"files": {"image": (name, data)}, "data": {"k": str(k)}}

        def asset_query(i: int) -> dict[str, Any]:
            return {"json": {"asset_id": asset_id, "k": k, "offset": i % 3}}

        rows = []
        makers = {"image upload": image_query, "asset (no model)": asset_query}
        for query in kinds:
            make = makers[query]
            for clients in levels:
                await _run_level(client, make, warmup, clients)
                rows.append(
                    {"query": query, "clients": clients}
                    | await _run_level(client, make, requests, clients)
                )
        return rows


async def _run_level(
    client: httpx.AsyncClient, make: Any, requests: int, clients: int
) -> dict[str, Any]:
    """``requests`` queries shared by ``clients`` workers, each sending one at a time."""
    latencies: list[float] = []
    server_ms: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            response = await client.post("/search", **make(i))
            latencies.append(time.perf_counter() - started)
            if response.status_code == 200:
                server_ms.append(response.json()["took_ms"] / 1000)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "latency": percentiles(latencies),
        "in_server": percentiles(server_ms) if server_ms else {"p50_ms": None},
        "requests_per_s": round(requests / wall, 1),
        "errors": errors,
    }


def _histogram(base: str, name: str) -> tuple[float, int]:
    """Sum and count of one of the server's own Prometheus histograms."""
    values = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        for part in values:
            if line.startswith(f"{name}_{part} "):
                values[part] = float(line.split()[1])
    return values["sum"], int(values["count"])


def _batch_sizes(base: str) -> dict[str, float]:
    """Model calls and mean images per call of the server's query batches."""
    images, calls = _histogram(base, "lookalike_query_batch_size")
    return {"calls": calls, "mean": round(images / calls, 2) if calls else 0.0}


def _embedding_stats(base: str) -> dict[str, float]:
    """Mean decode + embed time per query image, inside the server."""
    seconds, count = _histogram(base, "lookalike_query_embedding_seconds")
    return {"count": count, "mean_ms": round(1000 * seconds / count, 2) if count else 0.0}


if __name__ == "__main__":
    main()
