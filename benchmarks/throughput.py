"""Embedding speed: decoding (with and without JPEG draft mode), model-only batches, and
files-to-vectors through :func:`pipeline.ingest.ingest`, with CPU use and peak memory, for each
inference backend (ONNX Runtime, the default, and TensorFlow, the reference) side by side.

    python -m benchmarks.throughput                       # 256 camera-size JPEGs, both backends
    python -m benchmarks.throughput --configs 4x32,2x32,1x32,2x64 --backends onnx

Everything runs in one process on one library, so the ratios (draft vs full decode,
files-to-vectors vs model-only) hold even on a machine other jobs share, where absolute
rates move from run to run. Every files-to-vectors rate is divided by a model-only rate
measured in the same round, a minute earlier (see :func:`run`).

Each ``--configs`` entry is ``DECODE_WORKERSxBATCH_SIZE``, the two ingest settings that decide
how decoding overlaps inference (``LOOKALIKE_DECODE_WORKERS``, ``LOOKALIKE_BATCH_SIZE``); each
run ingests the whole library into a fresh embedded store.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from benchmarks.common import (
    base_parser,
    console,
    data_dir,
    measure,
    print_table,
    track,
    write_results,
)
from benchmarks.datasets import LibraryConfig, build_library
from pipeline.backbones import get_spec
from pipeline.decode import decode_image
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    from pipeline.embed import Embedder


def decode_speed(paths: list[Path], embedder: Embedder) -> dict[str, Any]:
    """Decode (and decode + preprocess) cost per image, JPEG draft mode on and off.

    Measured as this thread's CPU time, which other jobs on a shared machine barely change
    (wall time is recorded too), and which is what a decode worker takes from the cores the
    model also needs. Files are read into memory first: this times decoding, not the disk.
    """
    blobs = [p.read_bytes() for p in paths]
    sizes = [Image.open(p).size for p in paths]
    limit = get_settings().max_image_pixels
    result: dict[str, Any] = {}
    for label, min_size in (("draft", embedder.spec.resize_size), ("full", None)):
        decode_ms, total_ms, wall_ms = defaultdict(list), defaultdict(list), []
        for blob, size in track(list(zip(blobs, sizes, strict=True)), f"decode ({label})"):
            wall, start = time.perf_counter(), time.thread_time()
            image = decode_image(blob, max_pixels=limit, min_size=min_size).image
            decoded = time.thread_time()
            embedder.preprocess(image)
            key = f"{size[0]}x{size[1]}"
            decode_ms[key].append(1000 * (decoded - start))
            total_ms[key].append(1000 * (time.thread_time() - start))
            wall_ms.append(1000 * (time.perf_counter() - wall))
        result[label] = {
            "per_size_cpu_ms": {
                k: {
                    "decode": round(float(np.mean(v)), 1),
                    "decode+preprocess": round(float(np.mean(total_ms[k])), 1),
                }
                for k, v in decode_ms.items()
            },
            "decode_cpu_ms": round(float(np.mean(np.concatenate(list(decode_ms.values())))), 2),
            "decode+preprocess_cpu_ms": round(
                float(np.mean(np.concatenate(list(total_ms.values())))), 2
            ),
            "decode+preprocess_wall_ms": round(float(np.mean(wall_ms)), 2),
        }
    result["speedup_decode+preprocess"] = round(
        result["full"]["decode+preprocess_cpu_ms"] / result["draft"]["decode+preprocess_cpu_ms"],
        2,
    )
    return result


def model_speed(embedder: Embedder, batch_size: int, batches: int) -> dict[str, Any]:
    """Images/s of ``Embedder.predict`` alone on ready batches (the ceiling for ingestion)."""
    size = embedder.spec.image_size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), np.uint8)
    embedder.predict(batch)  # trace and warm up
    with measure() as usage:
        for _ in range(batches):
            embedder.predict(batch)
    images = batch_size * batches
    return {
        "batch_size": batch_size,
        "images": images,
        "images_per_s": round(images / usage.wall_s, 1),
        "cpu_ms_per_image": round(1000 * usage.cpu_s / images, 1),
        **usage.as_dict(),
    }


def ingest_speed(
    source: Path, embedder: Embedder, workers: int, batch_size: int, scratch: Path
) -> dict[str, Any]:
    """One full :func:`pipeline.ingest.ingest` of ``source`` into a fresh embedded store."""
    home = Path(tempfile.mkdtemp(prefix=f"ingest-{workers}x{batch_size}-", dir=scratch))
    settings = Settings(home=home, decode_workers=workers, batch_size=batch_size)
    with Library.open(settings) as library, measure() as usage:
        summary = ingest(source, library=library, embedder=embedder, settings=settings)
    images = summary.new + summary.updated
    stages = summary.stage_seconds
    steady_s = summary.duration_s - stages.get("optimize", 0.0)
    return {
        "config": f"{workers}x{batch_size}",
        "decode_workers": workers,
        "batch_size": batch_size,
        "images": images,
        "quarantined": len(summary.quarantined),
        "images_per_s": round(images / summary.duration_s, 1),
        "images_per_s_without_optimize": round(images / steady_s, 1),
        "stage_seconds": stages,
        "cpu_ms_per_image": round(1000 * usage.cpu_s / images, 1),
        **usage.as_dict(),
    }


def run(
    root: Path,
    embedders: dict[str, Embedder],
    library: LibraryConfig,
    configs: list[tuple[int, int]],
    rounds: int = 2,
    decode_files: int = 64,
    model_batches: int = 8,
) -> dict[str, Any]:
    """Decode, model-only and files-to-vectors figures for one library, in this process.

    Each round measures, for each backend in turn, model-only throughput and then ingests the
    library once per config, so every files-to-vectors rate has a model-only rate of its own
    backend measured minutes apart to be divided by, and the backends are compared within
    each round; a config's figure is its best round (the one other jobs disturbed least).
    """
    manifest = build_library(root / "library", library)
    paths = manifest.paths("files")
    first = next(iter(embedders.values()))  # decoding and preprocessing are the backends' own
    decode = decode_speed(paths[:decode_files], first)  # the sizes cycle: all are covered
    scratch = root / "ingest-runs"
    scratch.mkdir(parents=True, exist_ok=True)
    model_runs, runs = [], []
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for round_ in range(rounds):
            for backend, embedder in embedders.items():
                model = {"backend": backend, "round": round_}
                model |= model_speed(embedder, 32, model_batches)
                model_runs.append(model)
                for workers, batch_size in configs:
                    r = {"backend": backend, "round": round_}
                    r |= ingest_speed(
                        manifest.root / "files", embedder, workers, batch_size, Path(tmp)
                    )
                    r["vs_model_only"] = round(r["images_per_s"] / model["images_per_s"], 3)
                    r["vs_model_only_without_optimize"] = round(
                        r["images_per_s_without_optimize"] / model["images_per_s"], 3
                    )
                    # CPU time per image barely moves when other jobs take cores: robust.
                    r["cpu_ratio_vs_model_only"] = round(
                        model["cpu_ms_per_image"] / r["cpu_ms_per_image"], 3
                    )
                    runs.append(r)
    best = [
        max(
            (r for r in runs if r["config"] == f"{w}x{b}" and r["backend"] == backend),
            key=lambda r: r["vs_model_only"],
        )
        for backend in embedders
        for w, b in configs
    ]
    # A CPU-bound pipeline cannot beat the cores divided by the CPU time each image needs.
    cores = len(os.sched_getaffinity(0))
    decode_cpu = decode["draft"]["decode+preprocess_cpu_ms"]
    ceilings = {}
    for backend in embedders:
        model_cpu = min(m["cpu_ms_per_image"] for m in model_runs if m["backend"] == backend)
        ceilings[backend] = {
            "cores": cores,
            "model_cpu_ms_per_image": model_cpu,
            "decode_cpu_ms_per_image": decode_cpu,
            "images_per_s": round(1000 * cores / (model_cpu + decode_cpu), 1),
            "share_of_model_only": round(model_cpu / (model_cpu + decode_cpu), 3),
            "share_of_model_only_per_size": {
                size: {
                    mode: round(model_cpu / (model_cpu + ms[size]["decode+preprocess"]), 3)
                    for mode, ms in (
                        ("draft", decode["draft"]["per_size_cpu_ms"]),
                        ("full", decode["full"]["per_size_cpu_ms"]),
                    )
                }
                for size in decode["draft"]["per_size_cpu_ms"]
            },
        }
    return {
        "library": {
            "files": len(paths),
            "sizes": [f"{w}x{h}" for w, h in library.sizes],
            "megabytes": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
        },
        "decode": decode,
        "model_only": model_runs,
        "ingest_best": best,
        "ingest_all_rounds": runs,
        "cpu_bound_ceiling": ceilings,
    }


def print_report(result: dict[str, Any]) -> None:
    decode = result["decode"]
    draft, full = decode["draft"], decode["full"]
    print_table(
        f"Decode + preprocess, CPU ms per image, one thread (library: {result['library']})",
        ["size", "draft decode", "draft +prep", "full decode", "full +prep", "speed-up"],
        [
            [
                s,
                draft["per_size_cpu_ms"][s]["decode"],
                draft["per_size_cpu_ms"][s]["decode+preprocess"],
                full["per_size_cpu_ms"][s]["decode"],
                full["per_size_cpu_ms"][s]["decode+preprocess"],
                full["per_size_cpu_ms"][s]["decode+preprocess"]
                / draft["per_size_cpu_ms"][s]["decode+preprocess"],
            ]
            for s in draft["per_size_cpu_ms"]
        ]
        + [
            [
                "mean",
                draft["decode_cpu_ms"],
                draft["decode+preprocess_cpu_ms"],
                full["decode_cpu_ms"],
                full["decode+preprocess_cpu_ms"],
                decode["speedup_decode+preprocess"],
            ]
        ],
    )
    print_table(
        "Model only (Embedder.predict, batch 32), once per round and backend",
        ["backend", "round", "images/s", "CPU ms/image", "cores busy", "peak RSS MB"],
        [
            [
                m["backend"],
                m["round"],
                m["images_per_s"],
                m["cpu_ms_per_image"],
                m["cores_busy"],
                m["peak_rss_mb"],
            ]
            for m in result["model_only"]
        ],
    )
    print_table(
        "Files to vectors (pipeline.ingest into a fresh embedded store), best round per config; "
        "'vs model': over the model-only rate of the same round",
        [
            "backend",
            "workers x batch",
            "round",
            "images/s",
            "vs model",
            "w/o optimize",
            "vs model",
            "read_wait s",
            "embed s",
            "write s",
            "optimize s",
            "cores busy",
            "CPU ms/img",
            "CPU vs model",
            "peak RSS MB",
        ],
        [
            [
                r["backend"],
                r["config"],
                r["round"],
                r["images_per_s"],
                r["vs_model_only"],
                r["images_per_s_without_optimize"],
                r["vs_model_only_without_optimize"],
                r["stage_seconds"].get("read_wait"),
                r["stage_seconds"].get("embed"),
                r["stage_seconds"].get("write"),
                r["stage_seconds"].get("optimize"),
                r["cores_busy"],
                r["cpu_ms_per_image"],
                r["cpu_ratio_vs_model_only"],
                r["peak_rss_mb"],
            ]
            for r in result["ingest_best"]
        ],
    )
    for backend, ceiling in result["cpu_bound_ceiling"].items():
        console.print(
            f"CPU-bound ceiling ({backend}): {ceiling['cores']} cores / "
            f"({ceiling['model_cpu_ms_per_image']} ms model + "
            f"{ceiling['decode_cpu_ms_per_image']} ms decode+preprocess per image) = "
            f"{ceiling['images_per_s']} images/s, {ceiling['share_of_model_only']:.0%} of "
            "model-only"
        )
        print_table(
            f"Share of model-only throughput a CPU-bound pipeline can reach ({backend})",
            ["size", "with draft mode", "without"],
            [
                [s, v["draft"], v["full"]]
                for s, v in ceiling["share_of_model_only_per_size"].items()
            ],
        )


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=LibraryConfig.files)
    parser.add_argument(
        "--configs",
        default="4x32,2x32,1x32,2x64",
        help="Comma-separated DECODE_WORKERSxBATCH_SIZE ingest settings (first: the default).",
    )
    parser.add_argument("--rounds", type=int, default=2, help="Repeats of every measurement.")
    parser.add_argument("--decode-files", type=int, default=64)
    parser.add_argument("--model-batches", type=int, default=8)
    parser.add_argument(
        "--backends",
        default="onnx,tensorflow",
        help="Comma-separated inference backends to compare (LOOKALIKE_BACKEND values).",
    )
    args = parser.parse_args(argv)
    from pipeline.embed import Embedder

    configs = [(int(w), int(b)) for w, b in (c.split("x") for c in args.configs.split(","))]
    root = data_dir(args.data_dir)
    settings = get_settings()
    spec = get_spec(settings.model)
    embedders = {
        backend: Embedder.load(spec, settings.model_dir, settings.region_levels, backend)
        for backend in args.backends.split(",")
    }
    for backend, embedder in embedders.items():
        if embedder.backend != backend:  # Embedder.load fell back, and logged why
            parser.error(f"the {backend} backend is not available here")
    result = run(
        root,
        embedders,
        LibraryConfig(seed=args.seed, files=args.files),
        configs,
        rounds=args.rounds,
        decode_files=args.decode_files,
        model_batches=args.model_batches,
    )
    print_report(result)
    write_results("throughput", {"data_dir": root, **result}, args.results)


if __name__ == "__main__":
    main()
