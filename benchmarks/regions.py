"""Region search quality: what region vectors change, in both directions, for every row.

    python -m benchmarks.regions                 # near-dup and category sets (a few minutes)

Every image is embedded once with its region vectors (``LOOKALIKE_REGION_LEVELS``, the R-MAC
grid of ``pipeline/regions.py``), as ingestion does. A pair's similarity under each mode is the
Searcher's (``pipeline.search.similarity``, checked against every store by the contract
suite), computed here for all pairs at once with numpy: the best of the whole-image cosine, the
query against the document's regions (library), and the query's regions against the document
(query).

* near-dup rows: the quality benchmark's queries (each edit, the natural pairs) against its
  1,257 references; "inset -> reference" is the inset edit (the photo pasted at 40-60 % width
  into another photo) finding its original;
* "reference -> scene": each original finding the scene it was pasted into, among those scenes
  and the 1,200 distractors;
* category rows: the leave-one-out sub-category and category retrieval of the quality
  benchmark (P@1, mAP);
* cost: the category set's 465 files ingested into a fresh embedded store with and without
  region vectors, alternating, ``--rounds`` times each in the same run: images/s and the
  store's size on disk.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, data_dir, print_table, track, write_results
from benchmarks.datasets import CategoryConfig, NearDupConfig, build_category, build_near_dup
from benchmarks.embedding import pixels
from pipeline.embed import Embedder, get_embedder
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.settings import Settings, get_settings

MODES = ("off", "library", "query", "both")


def embed(paths: list[Path], embedder: Embedder) -> tuple[np.ndarray, np.ndarray]:
    """Global ``(N, dim)`` and region ``(N, regions, dim)`` vectors of the files."""
    vectors, regions = [], []
    starts = range(0, len(paths), 32)
    with ThreadPoolExecutor(2) as pool:
        for start in track(starts, f"embedding {len(paths)} images", total=len(starts)):
            batch = np.stack(
                list(pool.map(lambda p: pixels(p, embedder), paths[start : start + 32]))
            )
            prediction = embedder.predict(batch)
            if prediction.regions is None:
                raise SystemExit("no region vectors: set LOOKALIKE_REGION_LEVELS above 0")
            vectors.append(prediction.embeddings)
            regions.append(prediction.regions)
    return np.concatenate(vectors), np.concatenate(regions)


def similarities(
    queries: tuple[np.ndarray, np.ndarray], docs: tuple[np.ndarray, np.ndarray]
) -> dict[str, np.ndarray]:
    """``(queries, docs)`` similarity matrices per mode, as the Searcher scores a pair."""
    (qg, qr), (dg, dr) = queries, docs
    whole = qg @ dg.T
    library = np.einsum("qd,nrd->qnr", qg, dr).max(axis=2)
    query = np.einsum("qrd,nd->qnr", qr, dg).max(axis=2)
    return {
        "off": whole,
        "library": np.maximum(whole, library),
        "query": np.maximum(whole, query),
        "both": np.maximum(whole, np.maximum(library, query)),
    }


def recall(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """R@1 and R@10 of one right answer per query (ties count against it)."""
    right = scores[np.arange(len(scores)), targets]
    ranks = (scores > right[:, None]).sum(axis=1)
    return {"R@1": float(np.mean(ranks < 1)), "R@10": float(np.mean(ranks < 10))}


def leave_one_out(scores: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """P@1 and mAP of every selected item querying all the others."""
    scores = scores.copy()
    np.fill_diagonal(scores, -np.inf)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    selected = queries & same.any(axis=1)
    order = np.argsort(-scores[selected], axis=1, kind="stable")[:, :-1]
    hits = np.take_along_axis(same[selected], order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    ap = (precision * hits).sum(axis=1) / hits.sum(axis=1)
    return {"P@1": float(hits[:, 0].mean()), "mAP": float(ap.mean())}


def near_dup(root: Path, embedder: Embedder, seed: int) -> dict[str, dict[str, Any]]:
    manifest = build_near_dup(root / "near_dup", NearDupConfig(seed=seed))
    refs, queries = manifest.items["references"], manifest.items["queries"]
    ref_vectors = embed(manifest.paths("references"), embedder)
    query_vectors = embed(manifest.paths("queries"), embedder)
    index = {r["id"]: i for i, r in enumerate(refs)}
    targets = np.array([index[q["target"]] for q in queries])
    inset = np.array([q["edit"] == "inset in another photo" for q in queries])
    natural = np.array([q["natural"] is not None for q in queries])
    scores = similarities(query_vectors, ref_vectors)
    rows: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        rows[mode] = {
            "copies (no inset)": recall(
                scores[mode][~inset & ~natural], targets[~inset & ~natural]
            ),
            "natural pairs": recall(scores[mode][natural], targets[natural]),
            "inset -> reference": recall(scores[mode][inset], targets[inset]),
        }
    # The other direction: each original finds the scene it was pasted into.
    distractors = np.array([r["kind"] != "original" for r in refs])
    scenes = tuple(
        np.concatenate([q[inset], r[distractors]])
        for q, r in zip(query_vectors, ref_vectors, strict=True)
    )
    originals = tuple(v[targets[inset]] for v in ref_vectors)
    backwards = similarities(originals, scenes)  # type: ignore[arg-type]
    for mode in MODES:
        rows[mode]["reference -> scene"] = recall(backwards[mode], np.arange(int(inset.sum())))
    return rows


def category(root: Path, embedder: Embedder, seed: int) -> dict[str, dict[str, Any]]:
    manifest = build_category(root / "category", CategoryConfig(seed=seed))
    items = manifest.items["items"]
    vectors = embed(manifest.paths("items"), embedder)
    scores = similarities(vectors, vectors)
    rows: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    for key in ("subcategory", "category"):
        labels = np.array([item[key] for item in items])
        sizes = Counter(labels)
        queries = np.array([sizes[label] >= 5 for label in labels])
        for mode in MODES:
            rows[mode][key] = leave_one_out(scores[mode], labels, queries)
    return rows


def cost(root: Path, embedder: Embedder, rounds: int) -> dict[str, Any]:
    """Ingest throughput and store size without and with region vectors, alternating."""
    folder = root / "category" / "items"
    plain = Embedder(embedder.spec, embedder.model, region_levels=0)
    runs: dict[str, list[dict[str, float]]] = {"off": [], "regions": []}
    for _ in range(rounds):
        for name, model in (("off", plain), ("regions", embedder)):
            with tempfile.TemporaryDirectory() as home:
                settings = Settings(home=Path(home))
                with Library.open(settings) as library:
                    started = time.perf_counter()
                    summary = ingest(folder, library=library, embedder=model, settings=settings)
                    seconds = time.perf_counter() - started
                size = sum(f.stat().st_size for f in settings.store_dir.rglob("*") if f.is_file())
                runs[name].append(
                    {"images_per_s": summary.new / seconds, "store_mib": size / 2**20}
                )
    best = {name: max(r["images_per_s"] for r in rs) for name, rs in runs.items()}
    return {
        "files": len(list(folder.iterdir())),
        "runs": runs,
        "best_images_per_s": best,
        "throughput_ratio": best["regions"] / best["off"],
        "store_mib": {name: rs[-1]["store_mib"] for name, rs in runs.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Ingest runs per variant (cost).")
    args = parser.parse_args(argv)
    root = data_dir(args.data_dir)
    embedder = get_embedder()
    results = {
        "model": embedder.model_id,
        "region_levels": get_settings().region_levels,
        "regions_per_image": len(embedder.region_boxes),
        "near_dup": near_dup(root, embedder, args.seed),
        "category": category(root, embedder, args.seed),
        "cost": cost(root, embedder, args.rounds),
    }
    rows = []
    for mode in MODES:
        nd, cat = results["near_dup"][mode], results["category"][mode]
        rows.append(
            [
                mode,
                nd["copies (no inset)"]["R@1"],
                nd["natural pairs"]["R@1"],
                nd["inset -> reference"]["R@1"],
                nd["inset -> reference"]["R@10"],
                nd["reference -> scene"]["R@1"],
                nd["reference -> scene"]["R@10"],
                cat["subcategory"]["P@1"],
                cat["subcategory"]["mAP"],
                cat["category"]["mAP"],
            ]
        )
    print_table(
        f"region search, {results['regions_per_image']} regions per image",
        [
            "mode",
            "copies R@1",
            "natural R@1",
            "inset->ref R@1",
            "R@10",
            "ref->scene R@1",
            "R@10",
            "sub P@1",
            "sub mAP",
            "category mAP",
        ],
        rows,
    )
    c = results["cost"]
    print_table(
        f"ingest cost, {c['files']} files, best of {args.rounds} runs each",
        ["variant", "images/s", "store MiB"],
        [[name, c["best_images_per_s"][name], c["store_mib"][name]] for name in ("off", "regions")],
    )
    write_results("regions", results, args.results)


if __name__ == "__main__":
    main()
