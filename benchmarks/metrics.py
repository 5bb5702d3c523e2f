"""Retrieval metrics, computed with exact (brute-force) cosine search in numpy.

Definitions, so figures can be compared with other work:

* near-duplicate **recall@k**: share of queries whose one right reference is among the k most
  similar references (ties count against the query);
* category **P@1**: share of queries whose nearest other item has the query's label;
  **recall@k**: share of queries with at least one same-label item in the top k (the metric
  learning convention, e.g. Stanford Online Products); **mAP**: mean over queries of the
  average precision of the full ranking of all other items, every same-label item relevant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def ranks_in(scores: np.ndarray, targets: np.ndarray, junk: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each query's target in its row of ``(queries, references)`` scores;
    references marked in ``junk`` (right answers too, :func:`benchmarks.datasets.junk`) are
    left out of the ranking."""
    above = scores > scores[np.arange(len(scores)), targets][:, None]
    if junk is not None:
        above &= ~junk
    return above.sum(axis=1)


def target_ranks(
    queries: np.ndarray,
    references: np.ndarray,
    targets: np.ndarray,
    junk: np.ndarray | None = None,
) -> np.ndarray:
    """0-based rank of each query's target among the references (by dot product)."""
    return ranks_in(queries @ references.T, targets, junk)


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")


@dataclass(frozen=True)
class CategoryScores:
    """Summary figures plus the per-query values behind them (for paired comparisons)."""

    summary: dict[str, float]
    precision_at_1: np.ndarray
    average_precision: np.ndarray


def category_metrics(
    vectors: np.ndarray,
    labels: Sequence[str],
    query_mask: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> CategoryScores:
    """Leave-one-out retrieval: every selected item queries all the others.

    ``query_mask`` picks the queries (e.g. items of classes big enough to have neighbours);
    every item stays in the index either way. Queries with no other same-label item are
    skipped, since no ranking can be right for them.
    """
    return category_scores(vectors @ vectors.T, labels, query_mask, ks)


def category_scores(
    sims: np.ndarray,
    labels: Sequence[str],
    query_mask: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> CategoryScores:
    """:func:`category_metrics` from an ``(items, items)`` similarity matrix (any scoring)."""
    labels_arr = np.asarray(labels)
    sims = sims.astype(np.float32, copy=True)
    np.fill_diagonal(sims, -np.inf)
    same = labels_arr[:, None] == labels_arr[None, :]
    np.fill_diagonal(same, False)
    selected = np.ones(len(labels_arr), bool) if query_mask is None else query_mask.copy()
    selected &= same.any(axis=1)
    order = np.argsort(-sims[selected], axis=1, kind="stable")[:, :-1]  # drop self (-inf)
    hits = np.take_along_axis(same[selected], order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    ap = (precision * hits).sum(axis=1) / hits.sum(axis=1)
    chance = same[selected].sum(axis=1) / (len(labels_arr) - 1)
    summary = {
        "queries": int(selected.sum()),
        "classes": len(set(labels_arr[selected])),
        "P@1": float(hits[:, 0].mean()),
        "mAP": float(ap.mean()),
        "chance_mAP": float(chance.mean()),
    }
    for k in ks:
        summary[f"R@{k}"] = float(hits[:, :k].any(axis=1).mean())
    return CategoryScores(summary, hits[:, 0].astype(np.float64), ap)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``b - a`` over the same queries and its standard error: a difference within
    two standard errors is not one to act on."""
    diff = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if len(diff) < 2:
        return float(diff.mean()) if len(diff) else 0.0, float("nan")
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, k: int
) -> list[np.ndarray]:
    """Exact top-``k`` row indices per query among the rows ``mask`` passes (all rows when
    ``None``): the ground truth an approximate filtered search is scored against. Scans the
    rows in chunks, so 1M rows never need a 1M x queries matrix at once."""
    best_sims = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(vectors), 100_000):
        stop = min(len(vectors), start + 100_000)
        sims = queries @ vectors[start:stop].T
        if mask is not None:
            sims[:, ~mask[start:stop]] = -np.inf
        sims = np.concatenate([best_sims, sims], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, stop), (len(queries), stop - start))],
            axis=1,
        )
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        best_sims = np.take_along_axis(sims, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    order = np.argsort(-best_sims, axis=1, kind="stable")
    best_sims = np.take_along_axis(best_sims, order, axis=1)
    best_ids = np.take_along_axis(best_ids, order, axis=1)
    return [ids[np.isfinite(sims)] for ids, sims in zip(best_ids, best_sims, strict=True)]
