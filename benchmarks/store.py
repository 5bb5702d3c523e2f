"""Store speed and filtered-search correctness on synthetic clustered vectors.

    python -m benchmarks.store                     # embedded, 100k documents, 512-d (~4 min)
    python -m benchmarks.store --million           # adds 1M documents (~20 min, ~4 GB RAM)
    python -m benchmarks.store --store opensearch  # the embedded store and a real OpenSearch
                                                   # node side by side, in the same run

Everything goes through the store's real code path, ``upsert`` / ``optimize`` /
``search(SearchRequest)``, so the figures include what the store does around LanceDB or the
cluster (counting the documents a filter passes, the exact fallback for selective filters, row
conversion, fusion, the HTTP round trips):

* writes/s: ingestion-sized upserts (32 documents) into an empty and into a full table, and
  bulk upserts of 10,000 documents; then the time ``optimize()`` takes to build the indexes,
  and ``warm()`` to load the vector index, as the search API does before it serves;
* vector top-10 latency p50/p99 without a filter and with label filters passing 0.1, 1, 5 and
  20 % of the documents, recall@10 against exact numpy search over the documents the filter passes
  (plain, and ann-benchmarks' epsilon recall, which counts a hit within 1 % of the true 10th
  neighbour's distance), and how many queries got fewer than 10 hits (must be zero);
* the same filtered queries with the exact fallback switched off (``exact_search_max_rows=0``),
  to show what it costs and what it buys, and optionally (``--nprobes-sweep``) the vector
  queries with exactly that many IVF partitions probed, to show what probing more buys;
* text (BM25) and hybrid (vector + text, RRF) latency.

Vectors: ``--clusters`` Gaussian clusters (cosine to their centre about 0.7), queries drawn the
same way; filter labels are assigned at random, independent of the clusters.

``--store opensearch`` measures a node at ``--url`` or, without one, a node that
``scripts/opensearch.sh`` starts for the run (the Maven Central build: k-NN's lucene engine,
1 GB heap) and stops afterwards. The embedded store is measured first, on the same corpus and
queries, so the two columns compare like with like on the same machine and load.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    base_parser,
    console,
    data_dir,
    measure,
    percentiles,
    print_table,
    track,
    write_results,
)
from benchmarks.metrics import exact_top_k
from pipeline.document import AssetDocument, Label
from pipeline.library import Library
from pipeline.search import LabelFilter, Searcher, SearchRequest
from pipeline.settings import Settings
from pipeline.store.base import DocumentIndex

REPO = Path(__file__).resolve().parents[1]

MODEL_ID = "synthetic@1"
SMALL_BATCH = 32  # what ingestion upserts at a time (LOOKALIKE_BATCH_SIZE)
# Filters select by label presence (confidence >= 50; every assigned label has 60-99).
# 1 % and 20 % are the issue's; 0.1 % and 5 % show where the exact fallback stops paying.
FILTERS = {
    "0.1 %": ("sel01", 0.001),
    "1 %": ("sel1", 0.01),
    "5 %": ("sel5", 0.05),
    "20 %": ("sel20", 0.20),
}


@dataclass
class Corpus:
    """Synthetic documents: vectors, which filter labels each has, and words of its text."""

    vectors: np.ndarray
    centres: np.ndarray
    selected: dict[str, np.ndarray]  # label -> bool mask
    words: list[str]
    text_words: np.ndarray  # (n, 3) indices into ``words``


def vocabulary() -> list[str]:
    """Real words for titles: the words of the ImageNet class names the pipeline ships. Only
    plain words of four letters or more, so that the tokenizer keeps each one whole and no
    stop word ("and", "of") makes the expected number of text hits wrong."""
    from pipeline.label import load_table

    names = load_table()["classes"]
    return sorted({w.lower() for n, *_ in names for w in n.split() if w.isalpha() and len(w) > 3})


def make_corpus(n: int, dim: int, clusters: int, seed: int) -> Corpus:
    """``n`` unit vectors around ``clusters`` centres, generated in chunks (1M x 512 floats
    is 2 GB; the temporaries of one-shot generation would double it)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        vectors[start:stop] = _around(centres, stop - start, rng)
    selected = {}
    for label, share in FILTERS.values():
        mask = np.zeros(n, bool)
        mask[rng.choice(n, size=max(1, round(n * share)), replace=False)] = True
        selected[label] = mask
    words = vocabulary()
    # Zipf-like word frequencies, as in real titles: a few words are common, most are rare.
    weights = 1.0 / np.arange(1, len(words) + 1)
    text_words = rng.choice(len(words), size=(n, 3), p=weights / weights.sum())
    return Corpus(vectors, centres, selected, words, text_words)


def make_queries(corpus: Corpus, count: int, seed: int) -> np.ndarray:
    """Query vectors drawn like the corpus (same centres), but not in it."""
    return _around(corpus.centres, count, np.random.default_rng(seed + 1))


def _around(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near random centres: unit Gaussian noise per dimension puts them at
    cosine ~0.7 to their centre in 512-d, ~0.5 to their cluster mates, ~0 to other clusters."""
    points = centres[rng.integers(len(centres), size=count)]
    points += rng.standard_normal(points.shape, dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def document(corpus: Corpus, i: int, rng: np.random.Generator) -> AssetDocument:
    labels = [
        Label(name=label, confidence=float(rng.uniform(60, 99)))
        for label, mask in corpus.selected.items()
        if mask[i]
    ]
    title = " ".join(corpus.words[w] for w in corpus.text_words[i])
    return AssetDocument(
        id=f"d{i:08d}",
        uri=f"file:///library/{i}.jpg",
        sha256=f"{i:064x}",
        fingerprint=f"{i:064x}",
        width=1024,
        height=768,
        format="JPEG",
        title=title,
        labels=labels,
        metadata={"shard": str(i % 16)},
        embedding=corpus.vectors[i].tolist(),
        model="synthetic",
        model_version="1",
    )


def _batches(corpus: Corpus, start: int, stop: int, size: int) -> Iterator[list[AssetDocument]]:
    rng = np.random.default_rng(start)
    for lo in range(start, stop, size):
        yield [document(corpus, i, rng) for i in range(lo, min(stop, lo + size))]


def _timed_upserts(
    store: DocumentIndex, corpus: Corpus, start: int, stop: int, size: int, label: str
) -> dict[str, Any]:
    """Upsert documents ``start:stop`` in batches of ``size``; only the upserts are timed
    (building the documents is the caller's cost, not the store's)."""
    seconds = []
    total = -(-(stop - start) // size)
    for batch in track(_batches(corpus, start, stop, size), label, total=total):
        begin = time.perf_counter()
        store.upsert(batch)
        seconds.append(time.perf_counter() - begin)
    docs = stop - start
    return {
        "documents": docs,
        "batch_size": size,
        "docs_per_s": round(docs / sum(seconds), 1),
        "ms_per_upsert": round(1000 * float(np.mean(seconds)), 1),
    }


EPSILON = 0.01


def _query_condition(
    name: str,
    requests: list[SearchRequest],
    search: Callable[[SearchRequest], Any],
    truth: list[np.ndarray] | None,
    expected: list[int],
    vectors: np.ndarray | None = None,
    warmup: int = 5,
) -> dict[str, Any]:
    """Latency of ``requests`` (after a few warm-up queries), recall@k against ``truth``
    and the number of answers with fewer hits than ``expected``.

    With the corpus ``vectors``, also ann-benchmarks' epsilon recall: the share of the k
    hits no farther from the query than (1 + EPSILON) times the true k-th neighbour's cosine
    distance. It tells hits about as near as the true ones (which plain recall counts as
    misses) from real misses: on this corpus, whenever a filter leaves fewer than k of a
    query's cluster mates, the rest of its true top-k are documents of other clusters, all at
    cosine about 0 to it."""
    for request in requests[:warmup]:
        search(request)
    seconds, recalls, near, short = [], [], [], 0
    for i, request in enumerate(track(requests, name)):
        begin = time.perf_counter()
        response = search(request)
        seconds.append(time.perf_counter() - begin)
        ids = [int(hit.id[1:]) for hit in response.hits]
        short += len(ids) < expected[i]
        if truth is not None:
            wanted = set(truth[i].tolist())
            recalls.append(len(wanted & set(ids)) / max(1, len(wanted)))
        if truth is not None and vectors is not None and len(truth[i]):
            query = np.asarray(request.vector, np.float32)
            worst = 1 - float(vectors[truth[i][-1]] @ query)
            distances = 1 - vectors[ids] @ query if ids else np.empty(0)
            near.append(int((distances <= (1 + EPSILON) * worst).sum()) / len(truth[i]))
    return {
        "condition": name,
        **percentiles(seconds),
        "recall@k": round(float(np.mean(recalls)), 4) if recalls else None,
        f"epsilon_{EPSILON}_recall@k": round(float(np.mean(near)), 4) if near else None,
        "fewer_than_k": short,
    }


def run_size(
    n: int,
    root: Path,
    *,
    dim: int = 512,
    clusters: int = 1000,
    queries: int = 200,
    k: int = 10,
    bulk_batch: int = 10_000,
    small_batches: int = 20,
    seed: int = 0,
    settings_overrides: dict[str, Any] | None = None,
    nprobes_sweep: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Build a store of ``n`` documents under ``root`` and measure it (see the module doc).
    ``settings_overrides`` choose the store (``store="opensearch"``, ``cluster_urls``...)."""
    home = root / f"store-{n}"
    if home.exists():
        shutil.rmtree(home)
    settings = Settings(home=home, **(settings_overrides or {}))
    corpus = make_corpus(n, dim, clusters, seed)
    library = Library.open(settings)
    _drop(library)
    store = library.index(MODEL_ID)
    store.ensure(dim)
    search = Searcher(store, settings).search
    small = small_batches * SMALL_BATCH
    writes: dict[str, Any] = {}
    with measure() as load_usage:
        writes["small batches, empty table"] = _timed_upserts(
            store, corpus, 0, small, SMALL_BATCH, "upserts of 32 (empty table)"
        )
        writes["bulk"] = _timed_upserts(store, corpus, small, n - small, bulk_batch, "bulk upserts")
        writes["small batches, full table"] = _timed_upserts(
            store, corpus, n - small, n, SMALL_BATCH, "upserts of 32 (full table)"
        )
    with measure() as index_usage:
        store.optimize()
    with measure() as warm_usage:  # as the search API does once it opened the index
        store.warm()
    disk_mb = _size_mb(library, home)

    q = make_queries(corpus, queries, seed)
    rng = np.random.default_rng(seed + 3)
    text = [corpus.words[int(w)] for w in rng.choice(corpus.text_words[:, 0], size=queries)]
    word_counts = _word_counts(corpus)
    conditions: list[dict[str, Any]] = []
    filtered: dict[str, tuple[list[SearchRequest], list[np.ndarray], list[int]]] = {}
    truth = exact_top_k(corpus.vectors, q, None, k)
    requests = [SearchRequest(vector=v.tolist(), k=k) for v in q]
    conditions.append(
        _query_condition("vector", requests, search, truth, [k] * queries, corpus.vectors)
    )
    for share, (label, _) in FILTERS.items():
        mask = corpus.selected[label]
        truth = exact_top_k(corpus.vectors, q, mask, k)
        requests = [
            SearchRequest(
                vector=v.tolist(), k=k, labels_all=[LabelFilter(name=label, min_confidence=50)]
            )
            for v in q
        ]
        expected = [min(k, int(mask.sum()))] * queries
        filtered[share] = (requests, truth, expected)
        conditions.append(
            _query_condition(
                f"vector, filter {share}", requests, search, truth, expected, corpus.vectors
            )
        )
    text_requests = [SearchRequest(text=w, k=k) for w in text]
    text_expected = [min(k, word_counts[w]) for w in text]
    conditions.append(_query_condition("text", text_requests, search, None, text_expected))
    hybrid = [SearchRequest(vector=v.tolist(), text=w, k=k) for v, w in zip(q, text, strict=True)]
    conditions.append(_query_condition("hybrid (RRF)", hybrid, search, None, [k] * queries))
    requests, _, expected = filtered["1 %"]
    hybrid_filtered = [
        r.model_copy(update={"text": w}) for r, w in zip(requests, text, strict=True)
    ]
    conditions.append(
        _query_condition("hybrid, filter 1 %", hybrid_filtered, search, None, expected)
    )
    # The same vector queries with the exact fallback off, first with the configured probes,
    # then with exactly each of ``nprobes_sweep`` (``ann_candidates`` out of play):
    # what the fallback costs and buys, and what probing more or less buys.
    unfiltered = (
        [SearchRequest(vector=v.tolist(), k=k) for v in q],
        exact_top_k(corpus.vectors, q, None, k),
        [k] * queries,
    )
    sweep: list[int | None] = [None, *nprobes_sweep] if settings.store == "embedded" else []
    for nprobes in sweep:
        update: dict[str, Any] = {"exact_search_max_rows": 0}
        if nprobes is not None:
            update |= {"nprobes": nprobes, "ann_candidates": 1}
        tuned = settings.model_copy(update=update)
        without_library = Library.open(tuned)
        without_index = without_library.index(MODEL_ID)
        without_index.warm()
        without = Searcher(without_index, tuned)
        suffix = "no exact fallback" + (f", nprobes {nprobes}" if nprobes else "")
        cases = {"": unfiltered} if nprobes else {}
        cases.update({f", filter {share}": case for share, case in filtered.items()})
        for name, (requests, truth, expected) in cases.items():
            conditions.append(
                _query_condition(
                    f"vector{name}, {suffix}",
                    requests,
                    without.search,
                    truth,
                    expected,
                    corpus.vectors,
                )
            )
        without_library.close()
    _drop(library)
    library.close()
    return {
        "store": settings.store,
        "documents": n,
        "dim": dim,
        "clusters": clusters,
        "queries_per_condition": queries,
        "settings": {
            "ann_min_rows": settings.ann_min_rows,
            "exact_search_max_rows": settings.exact_search_max_rows,
            "nprobes": settings.nprobes,
            "ann_candidates": settings.ann_candidates,
            "ann_partition_rows": settings.ann_partition_rows,
            "refine_factor": settings.refine_factor,
        },
        "writes": writes,
        "load": load_usage.as_dict(),
        "optimize": index_usage.as_dict(),
        "warm": warm_usage.as_dict(),
        "disk_mb": round(disk_mb, 1),
        "queries": conditions,
    }


def _size_mb(library: Library, home: Path) -> float:
    """What the index takes on disk: the table files, or the cluster's primary store size."""
    if library.settings.store == "embedded":
        return sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) / 2**20
    name = library.index(MODEL_ID).name
    stats = library.backend.client.indices.stats(index=name, metric="store")
    return stats["_all"]["primaries"]["store"]["size_in_bytes"] / 2**20


def _drop(library: Library) -> None:
    """A cluster keeps indices across runs: start and end each measurement without them."""
    if library.settings.store != "embedded":
        client, name = library.backend.client, library.index(MODEL_ID).name
        if client.indices.exists(index=name):
            client.indices.delete(index=name)


NODE_SCRIPT = str(REPO / "scripts" / "opensearch.sh")


def start_node(heap: str = "1g") -> str:
    """A real OpenSearch node for the run (scripts/opensearch.sh); returns its URL."""
    done = subprocess.run(
        ["bash", NODE_SCRIPT, "start", "--name", "bench", "--heap", heap],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"could not start an OpenSearch node: {done.stderr.strip()[-1500:]}")
    return done.stdout.strip().splitlines()[-1]


def stop_node() -> None:
    subprocess.run(["bash", NODE_SCRIPT, "stop", "--name", "bench"], check=False)


def _word_counts(corpus: Corpus) -> dict[str, int]:
    """Documents whose title holds each word (a text query cannot return more)."""
    counts: dict[str, int] = {}
    for w in np.unique(corpus.text_words):
        counts[corpus.words[int(w)]] = int((corpus.text_words == w).any(axis=1).sum())
    return counts


def print_report(results: list[dict[str, Any]]) -> None:
    for r in results:
        n = f"{r['documents']:,}"
        print_table(
            f"Writes, {n} documents x {r['dim']}-d ({r['store']} store, upsert)",
            ["upserts", "documents", "batch", "docs/s", "ms per upsert"],
            [
                [name, w["documents"], w["batch_size"], w["docs_per_s"], w["ms_per_upsert"]]
                for name, w in r["writes"].items()
            ],
        )
        console.print(
            f"optimize(): {r['optimize']['wall_s']} s, peak RSS {r['optimize']['peak_rss_mb']} "
            f"MB; loading peak RSS {r['load']['peak_rss_mb']} MB (this process); "
            f"{r['disk_mb']} MB on disk; warm(): {r['warm']['wall_s']} s"
        )
        print_table(
            f"Top-{10} search, {n} documents, {r['store']} store ({r['queries_per_condition']} "
            f"queries each; recall against exact numpy search)",
            [
                "condition",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "mean ms",
                "recall@10",
                f"ε={EPSILON} recall@10",
                "fewer than k",
            ],
            [
                [
                    c["condition"],
                    c["p50_ms"],
                    c["p95_ms"],
                    c["p99_ms"],
                    c["mean_ms"],
                    c["recall@k"],
                    c.get(f"epsilon_{EPSILON}_recall@k"),
                    c["fewer_than_k"],
                ]
                for c in r["queries"]
            ],
        )


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="Comma-separated document counts.")
    parser.add_argument("--million", action="store_true", help="Also measure 1,000,000 docs.")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--store",
        choices=["embedded", "opensearch"],
        default="embedded",
        help="opensearch: measure a real node too, side by side with the embedded store.",
    )
    parser.add_argument("--url", help="The OpenSearch node (default: start one for the run).")
    parser.add_argument(
        "--nprobes-sweep",
        default="",
        help="Comma-separated probe counts to also measure, exact fallback off (e.g. 20,120).",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] + ([1_000_000] if args.million else [])
    root = data_dir(args.data_dir)
    stores: list[dict[str, Any]] = [{}]
    started = args.store == "opensearch" and not args.url
    if args.store == "opensearch":
        url = args.url or start_node()
        # The node from Maven Central: no security plugin, and k-NN's pure-Java engine.
        stores.append(
            {"store": "opensearch", "cluster_urls": url, "cluster_user": None, "table": "bench"}
            | {"opensearch_engine": "lucene", "bulk_chunk_size": 250}
        )
    results = []
    try:
        for n in sizes:
            for overrides in stores:
                results.append(
                    run_size(
                        n,
                        root,
                        dim=args.dim,
                        clusters=args.clusters,
                        queries=args.queries,
                        seed=args.seed,
                        settings_overrides=overrides,
                        nprobes_sweep=tuple(int(p) for p in args.nprobes_sweep.split(",") if p),
                    )
                )
                shutil.rmtree(root / f"store-{n}", ignore_errors=True)  # 100k: 0.3 GB
    finally:
        if started:
            stop_node()
    print_report(results)
    name = "store" if args.store == "embedded" else f"store-{args.store}"
    write_results(name, {"sizes": results}, args.results)


if __name__ == "__main__":
    main()
