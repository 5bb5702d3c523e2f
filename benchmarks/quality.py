"""Retrieval quality: near-duplicate (copy) detection and category retrieval, per embedding variant.

    python -m benchmarks.quality                  # both sets, every variant (a few minutes)
    python -m benchmarks.quality --sets near_dup  # one set

Near-duplicates: each query (an edited copy, or a real second view of the same scene) has one
right reference among the originals and >= 1,000 distractors; recall@1 and recall@10.
Category: Tux Paint cut-outs composited onto real photos, leave-one-out over the set, labelled by
sub-category (classes with at least ``--min-class-size`` members are queries) and by top-level
category; P@1, mAP, recall@k.

Every variant is computed from the same model outputs (see :mod:`benchmarks.variants`). A learned
variant is fitted two ways: on the evaluated set's own index corpus (what a library would do if
it learned the map from its own images) and on the *other* set's images (what shipping one map
learned elsewhere with the model version would do). Exact numpy search throughout: this measures
the embedding, not the index.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.common import base_parser, console, data_dir, print_table, write_results
from benchmarks.datasets import (
    CategoryConfig,
    Manifest,
    NearDupConfig,
    build_category,
    build_near_dup,
    junk,
)
from benchmarks.embedding import cached_embeddings
from benchmarks.metrics import category_metrics, paired_difference, recall_at, target_ranks
from benchmarks.sources import SourceUnavailable
from benchmarks.variants import Projection, VariantSpec, default_specs, fit

if TYPE_CHECKING:
    from pipeline.embed import Embedder

SETS = ("near_dup", "category")


class _NearDup:
    """The near-duplicate set with its embeddings."""

    def __init__(self, manifest: Manifest, embedder: Embedder) -> None:
        self.manifest = manifest
        refs, queries = manifest.items["references"], manifest.items["queries"]
        self.refs = cached_embeddings(manifest.paths("references"), embedder, manifest.root)
        self.queries = cached_embeddings(manifest.paths("queries"), embedder, manifest.root)
        index = {r["id"]: i for i, r in enumerate(refs)}
        self.targets = np.array([index[q["target"]] for q in queries])
        self.junk = junk(queries, refs)
        self.natural = np.array([q["natural"] is not None for q in queries])
        self.groups = [q["natural"] or q["edit"] for q in queries]

    def evaluate(self, project: Projection | None) -> dict[str, Any]:
        refs = project(self.refs) if project else self.refs
        queries = project(self.queries) if project else self.queries
        ranks = target_ranks(queries, refs, self.targets, self.junk)
        by_group: dict[str, list[int]] = defaultdict(list)
        for rank, group in zip(ranks, self.groups, strict=True):
            by_group[group].append(int(rank))
        copies, natural = ranks[~self.natural], ranks[self.natural]
        return {
            "copies_R@1": recall_at(copies, 1),
            "copies_R@10": recall_at(copies, 10),
            "natural_R@1": recall_at(natural, 1),
            "natural_R@10": recall_at(natural, 10),
            "per_group": {
                g: {
                    "n": len(r),
                    "R@1": recall_at(np.array(r), 1),
                    "R@10": recall_at(np.array(r), 10),
                }
                for g, r in by_group.items()
            },
            "_hits": (ranks < 1).astype(np.float64),
            "_ranks": ranks,
        }


class _Category:
    """The category set with its embeddings and both label levels."""

    def __init__(self, manifest: Manifest, embedder: Embedder, min_class_size: int) -> None:
        items = manifest.items["items"]
        self.vectors = cached_embeddings(manifest.paths("items"), embedder, manifest.root)
        self.sub = [i["subcategory"] for i in items]
        self.top = [i["category"] for i in items]
        sizes: dict[str, int] = defaultdict(int)
        for label in self.sub:
            sizes[label] += 1
        self.sub_queries = np.array([sizes[label] >= min_class_size for label in self.sub])

    def evaluate(self, project: Projection | None) -> dict[str, Any]:
        vectors = project(self.vectors) if project else self.vectors
        sub = category_metrics(vectors, self.sub, self.sub_queries)
        top = category_metrics(vectors, self.top)
        return {"subcategory": sub.summary, "category": top.summary, "_ap": sub.average_precision}


def run(
    root: Path,
    embedder: Embedder,
    sets: tuple[str, ...] = SETS,
    near_dup: NearDupConfig | None = None,
    category: CategoryConfig | None = None,
    specs: list[VariantSpec] | None = None,
    min_class_size: int = 5,
) -> dict[str, Any]:
    """Build, embed and evaluate; the figures as a JSON-ready dict (also what tests check)."""
    # The raw embedding is always evaluated first: every other variant is compared with it.
    specs = [VariantSpec("raw"), *(s for s in specs or default_specs() if s.learned)]
    evaluated: dict[str, _NearDup | _Category] = {}
    datasets: dict[str, Any] = {}
    if "near_dup" in sets:
        manifest = build_near_dup(root / "near_dup", near_dup or NearDupConfig())
        evaluated["near_dup"] = _NearDup(manifest, embedder)
        datasets["near_dup"] = _describe_near_dup(manifest)
    if "category" in sets:
        try:
            manifest = build_category(root / "category", category or CategoryConfig())
            evaluated["category"] = _Category(manifest, embedder, min_class_size)
            datasets["category"] = _describe_category(manifest, evaluated["category"])
        except SourceUnavailable as exc:
            console.print(f"[yellow]category set skipped: {exc}[/]")
            datasets["category"] = {"skipped": str(exc)}
    near, cat = evaluated.get("near_dup"), evaluated.get("category")
    corpora = {
        "near_dup": near.refs if isinstance(near, _NearDup) else None,
        "category": cat.vectors if isinstance(cat, _Category) else None,
    }
    rows = []
    for spec in specs:
        fits = ("index", "other set") if spec.learned else ("-",)
        for fit_on in fits:
            dims = spec.dims or embedder.spec.dim
            row: dict[str, Any] = {"variant": spec.name, "fit": fit_on, "dims": dims}
            for name, data in evaluated.items():
                corpus = corpora[name] if fit_on == "index" else corpora[_other(name)]
                if fit_on != "-" and corpus is None:
                    continue
                row[name] = data.evaluate(fit(spec, corpus) if fit_on != "-" else None)
            if any(name in row for name in evaluated):
                rows.append(row)
    _add_deltas(rows)
    return {
        "datasets": datasets,
        "variants": rows,
        "verdict": _verdict(rows),
        "natural_pairs": _natural_pairs(near if isinstance(near, _NearDup) else None, rows),
    }


def _other(name: str) -> str:
    return "category" if name == "near_dup" else "near_dup"


def _describe_near_dup(manifest: Manifest) -> dict[str, Any]:
    refs, queries = manifest.items["references"], manifest.items["queries"]
    return {
        "originals": sum(r["kind"] == "original" for r in refs),
        "distractors": sum(r["kind"] == "distractor" for r in refs),
        "edited_queries": sum(q["natural"] is None for q in queries),
        "natural_queries": sum(q["natural"] is not None for q in queries),
        "edits": manifest.config["edits"],
        "skipped": manifest.skipped,
    }


def _describe_category(manifest: Manifest, data: _Category) -> dict[str, Any]:
    return {
        "items": len(data.sub),
        "subcategories": len(set(data.sub)),
        "categories": len(set(data.top)),
        "subcategory_queries": int(data.sub_queries.sum()),
        "skipped": manifest.skipped,
    }


# Per set: the headline figure and the per-query values behind it.
_HEADLINES = {"near_dup": ("copies R@1", "_hits"), "category": ("sub-category mAP", "_ap")}


def _headline(row: dict[str, Any], name: str) -> float:
    if name == "near_dup":
        return row[name]["copies_R@1"]
    return row[name]["subcategory"]["mAP"]


def _add_deltas(rows: list[dict[str, Any]]) -> None:
    """Each variant's headline figures minus the raw embedding's, paired over the same
    queries, with the standard error of that difference."""
    raw = rows[0]
    for row in rows:
        for name, (_, key) in _HEADLINES.items():
            if name in row and name in raw:
                delta, se = paired_difference(raw[name][key], row[name][key])
                row[name]["delta_vs_raw"] = {"delta": round(delta, 4), "stderr": round(se, 4)}


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best variant by the mean of the headline figures, and the best on each set."""
    sets = [name for name in _HEADLINES if name in rows[0]]
    complete = [r for r in rows if all(name in r for name in sets)]
    best = max(complete, key=lambda r: float(np.mean([_headline(r, n) for n in sets])))
    verdict: dict[str, Any] = {}
    for label, name, row in [
        *((f"best overall, {_HEADLINES[n][0]}", n, best) for n in sets),
        *((f"best on {n}, {_HEADLINES[n][0]}", n, _best_on(rows, n)) for n in sets),
    ]:
        verdict[label] = {
            "variant": f"{row['variant']} (fit on {row['fit']})",
            "raw": round(_headline(rows[0], name), 4),
            "value": round(_headline(row, name), 4),
            **row[name]["delta_vs_raw"],
        }
    return verdict


def _best_on(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return max((r for r in rows if name in r), key=lambda r: _headline(r, name))


def _natural_pairs(data: _NearDup | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each natural pair's target rank under the raw embedding (0 = found first)."""
    if data is None:
        return []
    raw = rows[0]["near_dup"]["_ranks"]
    queries = data.manifest.items["queries"]
    return [
        {"query": q.get("name"), "target": q["target"], "kind": q["natural"], "rank": int(raw[i])}
        for i, q in enumerate(queries)
        if q["natural"] is not None
    ]


def print_report(result: dict[str, Any]) -> None:
    rows = result["variants"]
    for name, info in result["datasets"].items():
        console.print(f"[bold]{name}[/]: {info}")

    def get(row: dict[str, Any], *keys: str) -> Any:
        value: Any = row
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    def delta(row: dict[str, Any], name: str) -> str | None:
        d = get(row, name, "delta_vs_raw")
        return f"{d['delta']:+.3f} ±{d['stderr']:.3f}" if d else None

    print_table(
        "Embedding variants (exact search; near-dup: edited copies / natural pairs; category: "
        "sub-category labels, top-level mAP last)",
        [
            "variant",
            "fit on",
            "copies R@1",
            "Δ vs raw ±SE",
            "copies R@10",
            "natural R@1",
            "natural R@10",
            "sub P@1",
            "sub mAP",
            "Δ vs raw ±SE",
            "sub R@10",
            "cat mAP",
        ],
        [
            [
                r["variant"],
                r["fit"],
                get(r, "near_dup", "copies_R@1"),
                delta(r, "near_dup"),
                get(r, "near_dup", "copies_R@10"),
                get(r, "near_dup", "natural_R@1"),
                get(r, "near_dup", "natural_R@10"),
                get(r, "category", "subcategory", "P@1"),
                get(r, "category", "subcategory", "mAP"),
                delta(r, "category"),
                get(r, "category", "subcategory", "R@10"),
                get(r, "category", "category", "mAP"),
            ]
            for r in rows
        ],
    )
    if "near_dup" in rows[0]:
        best = _best_on(rows, "near_dup")
        raw = rows[0]["near_dup"]["per_group"]
        other = best["near_dup"]["per_group"]
        print_table(
            f"Near-duplicates per edit / natural pair kind: raw vs {best['variant']} "
            f"(fit on {best['fit']})",
            ["edit or pair kind", "n", "raw R@1", "raw R@10", "best R@1", "best R@10"],
            [
                [g, v["n"], v["R@1"], v["R@10"], other[g]["R@1"], other[g]["R@10"]]
                for g, v in raw.items()
            ],
        )
    if "category" in rows[0]:
        chance = rows[0]["category"]["subcategory"]["chance_mAP"]
        console.print(f"category: chance sub-category mAP {chance:.3f}")
    for key, value in result["verdict"].items():
        console.print(
            f"[bold]{key}[/]: {value['variant']}: {value['raw']:.3f} (raw) -> "
            f"{value['value']:.3f}, {value['delta']:+.3f} ±{value['stderr']:.3f} "
            "(paired standard error)"
        )


def _public(value: Any) -> Any:
    """Drop the per-query arrays (keys starting with ``_``) before writing JSON."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help="Comma-separated: near_dup,category")
    parser.add_argument("--distractors", type=int, default=NearDupConfig.distractors)
    parser.add_argument("--dims", default="256,128", help="Reduced sizes to compare.")
    parser.add_argument("--min-class-size", type=int, default=5)
    args = parser.parse_args(argv)
    from pipeline.embed import get_embedder

    root = data_dir(args.data_dir)
    result = run(
        root,
        get_embedder(),
        sets=tuple(s.strip() for s in args.sets.split(",") if s.strip()),
        near_dup=replace(NearDupConfig(), seed=args.seed, distractors=args.distractors),
        category=replace(CategoryConfig(), seed=args.seed),
        specs=default_specs(tuple(int(d) for d in args.dims.split(","))),
        min_class_size=args.min_class_size,
    )
    print_report(result)
    write_results("quality", {"data_dir": root, **_public(result)}, args.results)


if __name__ == "__main__":
    main()
