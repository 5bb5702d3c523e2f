"""Region search quality: what region vectors change, in both directions, for every row.

    python -m benchmarks.regions                 # near-dup and category sets (a few minutes)

Every library image is embedded as ingestion does it (regions pooled from the one pass,
``LOOKALIKE_REGION_LEVELS``), every query image as an image search does it
(``pipeline.search.analyse_image``: regions cut out and embedded), both cached in the set's
folder. A pair's similarity under each mode is the Searcher's (``pipeline.search.similarity``,
checked against every store by the contract suite), computed here for all pairs at once with
numpy: the best of the whole-image cosine, the query against the document's regions (library),
and the query's regions against the document (query).

* near-dup rows: the quality benchmark's queries (each edit, the natural pairs) against its
  1,257 references; "inset -> reference" is the inset edit (the photo pasted at 40-60 % width
  into another photo) finding its original, with the distractors cut from that other photo
  ignored (they are in the query too: ``datasets.junk``);
* "reference -> scene": each original finding the scene it was pasted into, among those scenes
  and the 1,200 distractors;
* category rows: the leave-one-out sub-category and category retrieval of the quality
  benchmark (P@1, mAP);
* scenes: 2-4 Tux Paint cut-outs in each of 156 photos (``datasets.build_scenes``): "scene ->
  objects", each object in a scene finding its own reference among the 465 (the scene's other
  objects ignored), and "object -> scene", each reference finding its scene among the 156;
* cost: the category set's 465 files ingested into a fresh embedded store with and without
  region vectors, alternating, ``--rounds`` times each in the same run: images/s and the
  store's size on disk.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, data_dir, print_table, track, write_results
from benchmarks.datasets import (
    CategoryConfig,
    NearDupConfig,
    SceneConfig,
    build_category,
    build_near_dup,
    build_scenes,
    junk,
)
from benchmarks.embedding import memoised, predict_files
from benchmarks.metrics import category_scores, ranks_in, recall_at
from pipeline.embed import Embedder, get_embedder
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.search import analyse_image
from pipeline.settings import Settings, get_settings

MODES = ("off", "library", "query", "both")


Vectors = tuple[np.ndarray, np.ndarray]
"""Global ``(N, dim)`` and region ``(N, regions, dim)`` vectors of N images."""


def as_library(paths: list[Path], embedder: Embedder, cache_dir: Path) -> Vectors:
    """The files as ingestion stores them: batched, regions pooled from the one pass."""

    def compute() -> Vectors:
        if not embedder.regions:
            raise SystemExit("no region vectors: set LOOKALIKE_REGION_LEVELS above 0")
        predictions = list(predict_files(paths, embedder))
        return (
            np.concatenate([p.embeddings for p in predictions]),
            np.concatenate([p.regions for p in predictions]),
        )

    key = ["library", embedder.model_id, str(embedder.region_levels), *map(str, paths)]
    return memoised(cache_dir, key, compute)  # type: ignore[return-value]


def as_queries(paths: list[Path], embedder: Embedder, cache_dir: Path) -> Vectors:
    """The files as an image search sees them (``analyse_image``): regions cut out."""

    def compute() -> Vectors:
        found = [
            analyse_image(path.read_bytes(), embedder)
            for path in track(paths, f"analysing {len(paths)} query images")
        ]
        return (
            np.array([q.vector for q in found], np.float32),
            np.array([[r.vector for r in q.regions] for q in found], np.float32),
        )

    key = ["query", embedder.model_id, str(embedder.region_levels), *map(str, paths)]
    return memoised(cache_dir, key, compute)  # type: ignore[return-value]


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


def recall(
    scores: np.ndarray, targets: np.ndarray, ignore: np.ndarray | None = None
) -> dict[str, float]:
    """R@1 and R@10 of one right answer per query (ties count against it)."""
    ranks = ranks_in(scores, targets, ignore)
    return {"R@1": recall_at(ranks, 1), "R@10": recall_at(ranks, 10)}


def near_dup(root: Path, embedder: Embedder, seed: int) -> dict[str, dict[str, Any]]:
    manifest = build_near_dup(root / "near_dup", NearDupConfig(seed=seed))
    refs, queries = manifest.items["references"], manifest.items["queries"]
    ref_library = as_library(manifest.paths("references"), embedder, manifest.root)
    query_library = as_library(manifest.paths("queries"), embedder, manifest.root)
    query_queries = as_queries(manifest.paths("queries"), embedder, manifest.root)
    index = {r["id"]: i for i, r in enumerate(refs)}
    targets = np.array([index[q["target"]] for q in queries])
    inset = np.array([q["edit"] == "inset in another photo" for q in queries])
    natural = np.array([q["natural"] is not None for q in queries])
    ignore = junk(queries, refs)
    scores = similarities(query_queries, ref_library)
    rows: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        copies = ~inset & ~natural
        rows[mode] = {
            "copies (no inset)": recall(scores[mode][copies], targets[copies]),
            "natural pairs": recall(scores[mode][natural], targets[natural]),
            "inset -> reference": recall(scores[mode][inset], targets[inset], ignore[inset]),
        }
    # The other direction: each original finds the scene it was pasted into.
    distractors = np.array([r["kind"] != "original" for r in refs])
    scenes = tuple(
        np.concatenate([q[inset], r[distractors]])
        for q, r in zip(query_library, ref_library, strict=True)
    )
    paths = manifest.paths("references")
    originals = as_queries([paths[t] for t in targets[inset]], embedder, manifest.root)
    backwards = similarities(originals, scenes)  # type: ignore[arg-type]
    for mode in MODES:
        rows[mode]["reference -> scene"] = recall(backwards[mode], np.arange(int(inset.sum())))
    return rows


def category(root: Path, embedder: Embedder, seed: int) -> dict[str, dict[str, Any]]:
    manifest = build_category(root / "category", CategoryConfig(seed=seed))
    items = manifest.items["items"]
    paths = manifest.paths("items")
    scores = similarities(
        as_queries(paths, embedder, manifest.root), as_library(paths, embedder, manifest.root)
    )
    rows: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    for key in ("subcategory", "category"):
        labels = np.array([item[key] for item in items])
        sizes = Counter(labels)
        queries = np.array([sizes[label] >= 5 for label in labels])
        for mode in MODES:
            summary = category_scores(scores[mode], labels, queries).summary
            rows[mode][key] = {"P@1": summary["P@1"], "mAP": summary["mAP"]}
    return rows


def scenes(root: Path, embedder: Embedder, config: SceneConfig) -> dict[str, dict[str, Any]]:
    """Both directions on the multi-object scenes: every object in a scene finds its own
    reference (the scene's other objects are right answers too, so they are ignored), and
    every reference finds the one scene it is in."""
    manifest = build_scenes(root / "scenes", config)
    refs, scene_items = manifest.items["references"], manifest.items["scenes"]
    ref_paths, scene_paths = manifest.paths("references"), manifest.paths("scenes")
    index = {r["path"]: i for i, r in enumerate(refs)}
    scene_of = {s["path"]: i for i, s in enumerate(scene_items)}
    rows_of = np.array([scene_of[s["path"]] for s in scene_items for _ in s["objects"]])
    objects = np.array([index[o] for s in scene_items for o in s["objects"]])
    others = np.zeros((len(objects), len(refs)), bool)
    for row, scene in enumerate(rows_of):
        others[row, [index[o] for o in scene_items[scene]["objects"]]] = True
    others[np.arange(len(objects)), objects] = False
    forward = similarities(
        as_queries(scene_paths, embedder, manifest.root),
        as_library(ref_paths, embedder, manifest.root),
    )
    backward = similarities(
        as_queries(ref_paths, embedder, manifest.root),
        as_library(scene_paths, embedder, manifest.root),
    )
    in_scene = np.array([scene_of[r["scene"]] for r in refs])
    return {
        mode: {
            "scene -> objects": recall(forward[mode][rows_of], objects, others),
            "object -> scene": recall(backward[mode], in_scene),
        }
        for mode in MODES
    }


def cost(root: Path, embedder: Embedder, rounds: int) -> dict[str, Any]:
    """Ingest throughput and store size without and with region vectors, alternating."""
    folder = root / "category" / "items"
    plain = Embedder(embedder.spec, embedder.runtime, region_levels=0)
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
        "scenes": scenes(root, embedder, SceneConfig(seed=args.seed)),
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
    print_table(
        "multi-object scenes (2-4 Tux Paint cut-outs each)",
        ["mode", "scene->objects R@1", "R@10", "object->scene R@1", "R@10"],
        [
            [
                mode,
                *results["scenes"][mode]["scene -> objects"].values(),
                *results["scenes"][mode]["object -> scene"].values(),
            ]
            for mode in MODES
        ],
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
