"""Fine-tuning on identities never seen in training: what ``lookalike train``'s head buys.

    python -m benchmarks.finetune            # three families, a general head, t-SNE plot (~6 min)
    python -m benchmarks.finetune --sweep    # head settings compared on calibration classes

Families (``benchmarks/families.py``, ``benchmarks/datasets.py``): **fonts** (a character drawn
by many fonts is one identity), **icons** (an icon name drawn by several Debian themes) and
**stamps** (the category set's Tux Paint sub-categories, on photo backgrounds). For each, the
classes are split (seed 0) into 60 % training classes and 40 % held out; the held-out classes are
split again into a calibration half (the open-set threshold is chosen there, for precision 0.9)
and a test half (every figure below is measured there). So the test identities were seen neither
by the head nor by the threshold.

Per family: the backbone (before) against a head trained on that family's training classes
(after), and a **general** head trained on all three families' training classes at once. The
general head is also applied to the near-duplicate set of ``benchmarks.quality`` (copy R@1 must
not fall). Training is ``pipeline.train.fit_head`` on the features ``lookalike train`` uses
(backbone features of each image and 2 augmented views, no mirror for glyphs and icons, where a
mirror image is another identity); defaults of ``TrainConfig`` otherwise. A self-supervised
head (each stamps image its own identity, its views the positives) is judged on the
near-duplicate set.

Figures: P@1 and mAP of leave-one-out retrieval among the test classes; open-set precision,
recall and F1 (``pipeline.train.open_set_at``: half of the test classes known with one or two
gallery images, the others strangers). The t-SNE map of the fonts test classes, before and
after, goes to ``docs/img/finetune-tsne.png``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, data_dir, print_table, write_results
from benchmarks.datasets import CategoryConfig, NearDupConfig, build_category, build_near_dup, junk
from benchmarks.embedding import cached_embeddings, memoised
from benchmarks.families import FamilyConfig, build_family
from benchmarks.metrics import recall_at, target_ranks
from pipeline.embed import Embedder, get_embedder
from pipeline.rollout import mean_average_precision
from pipeline.settings import get_settings
from pipeline.train import (
    Features,
    TrainConfig,
    augment,
    backbone_features,
    calibrate,
    fit_head,
    open_set_at,
    precision_at_1,
    project,
    split_classes,
)

FAMILIES = ("fonts", "icons", "stamps")
PLOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "finetune-tsne.png"


class Family:
    """One family's features, labels and class split."""

    def __init__(self, name: str, root: Path, embedder: Embedder, config: TrainConfig) -> None:
        if name == "stamps":
            manifest = build_category(root / "category", CategoryConfig(seed=config.seed))
            paths = manifest.paths("items")
            labels = [item["subcategory"] for item in manifest.items["items"]]
        else:
            manifest = build_family(root / "families", name, FamilyConfig(seed=config.seed))
            paths = manifest.paths("items")
            labels = [item["label"] for item in manifest.items["items"]]
        mirror = name == "stamps"

        def compute() -> tuple[np.ndarray, ...]:
            found, readable, _ = backbone_features(
                paths, embedder, get_settings(), config.views, config.seed, mirror=mirror
            )
            return found.vectors, found.image, found.original, np.array(readable)

        # the views change with the augmentation's code: its source is part of the key
        views = [str(config.views), str(mirror), inspect.getsource(augment)]
        key = ["finetune", embedder.model_id, *views, *map(str, paths)]
        vectors, image, original, readable = memoised(manifest.root, key, compute)
        self.name = name
        self.features = Features(vectors, image, original.astype(bool))
        self.labels = np.array([labels[i] for i in readable])[image]  # per row
        train_classes, held = split_classes(self.labels.tolist(), 0.4, config.seed)
        calibration, test = split_classes(sorted(held), 0.5, config.seed + 1)
        self.train = np.isin(self.labels, sorted(train_classes))
        self.calibration = self.features.original & np.isin(self.labels, sorted(calibration))
        self.test = self.features.original & np.isin(self.labels, sorted(test))
        self.classes = {
            "train": len(train_classes),
            "calibration": len(calibration),
            "test": len(test),
        }

    def fit(self, config: TrainConfig) -> tuple[dict[str, np.ndarray], list[float]]:
        """A head trained on this family's training classes (its weights, its losses)."""
        ids = {c: n for n, c in enumerate(sorted(set(self.labels[self.train].tolist())))}
        classes = np.array([ids[c] for c in self.labels[self.train]])
        return fit_head(self.features.vectors[self.train], classes, config)

    def judge(self, vectors: np.ndarray, config: TrainConfig) -> dict[str, Any]:
        """Test-class figures of ``vectors`` (one per feature row)."""
        threshold = calibrate(
            vectors[self.calibration],
            self.labels[self.calibration],
            config.target_precision,
            config.seed,
        ).threshold
        test, labels = vectors[self.test], self.labels[self.test]
        return {
            "P@1": precision_at_1(test, labels),
            "mAP": mean_average_precision(test, labels),
            "open_set": open_set_at(test, labels, threshold, config.seed).model_dump(),
        }


def near_dup_copies(root: Path, embedder: Embedder, head: dict[str, np.ndarray] | None) -> float:
    """Copy R@1 of the quality benchmark's near-duplicate set (junk ignored), through ``head``."""
    manifest = build_near_dup(root / "near_dup", NearDupConfig())
    refs = cached_embeddings(manifest.paths("references"), embedder, manifest.root)
    queries = cached_embeddings(manifest.paths("queries"), embedder, manifest.root)
    items, references = manifest.items["queries"], manifest.items["references"]
    index = {r["id"]: i for i, r in enumerate(references)}
    targets = np.array([index[q["target"]] for q in items])
    copies = np.array([q["natural"] is None for q in items])
    if head is not None:
        refs, queries = project(refs, head), project(queries, head)
    ranks = target_ranks(queries, refs, targets, junk(items, references))
    return recall_at(ranks[copies], 1)


def tsne_plot(family: Family, before: np.ndarray, after: np.ndarray, path: Path) -> None:
    """The test classes' images in 2-D (t-SNE), before and after, coloured by identity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    labels = family.labels[family.test]
    shown = sorted(set(labels.tolist()))[:20]
    keep = np.isin(labels, shown)
    colours = np.array([shown.index(label) for label in labels[keep]])
    figure, axes = plt.subplots(1, 2, figsize=(12, 6))
    for axis, vectors, title in (
        (axes[0], before[family.test][keep], "backbone (before)"),
        (axes[1], after[family.test][keep], f"{family.name} head (after)"),
    ):
        points = TSNE(perplexity=10, init="pca", random_state=0).fit_transform(vectors)
        axis.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab20", s=18)
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"t-SNE of {keep.sum()} images of {len(shown)} {family.name} identities never trained on"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


# Head settings compared by ``--sweep``, each a change to TrainConfig's defaults.
SWEEP: dict[str, dict[str, Any]] = {
    "defaults (margin 0.2, scale 16)": {},
    "scale 24 (the default before)": {"scale": 24.0},
    "margin 0.3": {"margin": 0.3},
    "margin 0.4": {"margin": 0.4},
    "dim 512": {"dim": 512},
    "anchor 0.001": {"anchor": 0.001},
    "anchor 0.03": {"anchor": 0.03},
    "epochs 80": {"epochs": 80},
    "triplet head": {"head": "triplet"},
}


def general_head(families: list[Family], config: TrainConfig) -> dict[str, np.ndarray]:
    """One head for all: every family's training classes, as distinct identities."""
    stacked = np.concatenate([f.features.vectors[f.train] for f in families])
    names = np.concatenate([np.char.add(f"{f.name}/", f.labels[f.train]) for f in families])
    ids = {c: n for n, c in enumerate(sorted(set(names.tolist())))}
    return fit_head(stacked, np.array([ids[c] for c in names]), config)[0]


def sweep(
    families: list[Family], config: TrainConfig, root: Path, embedder: Embedder
) -> dict[str, dict[str, Any]]:
    """For every setting of :data:`SWEEP`: P@1 and mAP of each family's own head on its
    **calibration** classes (so the test classes stay unseen by the choice as well as by
    training), and near-duplicate copies R@1 through the general head (what a setting costs
    copy detection)."""
    found: dict[str, dict[str, Any]] = {}
    for name, change in SWEEP.items():
        changed = config.model_copy(update=change)
        found[name] = {}
        for family in families:
            head, _ = family.fit(changed)
            vectors = project(family.features.vectors[family.calibration], head)
            labels = family.labels[family.calibration]
            found[name][family.name] = {
                "P@1": precision_at_1(vectors, labels),
                "mAP": mean_average_precision(vectors, labels),
            }
        found[name]["near_dup_copies_R@1"] = near_dup_copies(
            root, embedder, general_head(families, changed)
        )
    return found


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, default=PLOT, help="Where the t-SNE PNG goes.")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="Only compare head settings: calibration classes, near-dup copies (~5 min).",
    )
    args = parser.parse_args(argv)
    root = data_dir(args.data_dir)
    embedder = get_embedder("mobilenet_v2-imagenet")
    config = TrainConfig(name="benchmark", seed=args.seed)
    families = [Family(name, root, embedder, config) for name in FAMILIES]
    if args.sweep:
        found = sweep(families, config, root, embedder)
        print_table(
            "head settings on the calibration classes (P@1 / mAP)",
            ["setting", *FAMILIES, "mean", "near-dup copies R@1 (general head)"],
            [
                [
                    name,
                    *(f"{f[n]['P@1']:.3f} / {f[n]['mAP']:.3f}" for n in FAMILIES),
                    f"{np.mean([f[n]['P@1'] for n in FAMILIES]):.3f} / "
                    f"{np.mean([f[n]['mAP'] for n in FAMILIES]):.3f}",
                    f["near_dup_copies_R@1"],
                ]
                for name, f in found.items()
            ],
        )
        write_results(
            "finetune_sweep", {"config": config.model_dump(), "sweep": found}, args.results
        )
        return
    results: dict[str, Any] = {"config": config.model_dump(), "families": {}}
    heads = {}
    for family in families:
        rows = family.features.vectors
        head, losses = family.fit(config)
        heads[family.name] = head
        results["families"][family.name] = {
            "classes": family.classes,
            "images": int(family.features.original.sum()),
            "loss": {"first": losses[0], "last": losses[-1]},
            "before": family.judge(rows, config),
            "after": family.judge(project(rows, head), config),
        }
    general = general_head(families, config)
    for family in families:
        results["families"][family.name]["general"] = family.judge(
            project(family.features.vectors, general), config
        )
    # No labels (lookalike train --self-supervised): every stamps image its own identity, its
    # augmented views the positives; judged on the near-duplicate set it never saw.
    stamps = families[2]
    copies, _ = fit_head(stamps.features.vectors, stamps.features.image, config)
    results["near_dup_copies_R@1"] = {
        "before": near_dup_copies(root, embedder, None),
        "general": near_dup_copies(root, embedder, general),
        "self-supervised (stamps images)": near_dup_copies(root, embedder, copies),
        **{f"{name} head": near_dup_copies(root, embedder, head) for name, head in heads.items()},
    }
    fonts = families[0]
    tsne_plot(
        fonts, fonts.features.vectors, project(fonts.features.vectors, heads["fonts"]), args.plot
    )
    results["plot"] = str(args.plot)

    table = []
    for name, r in results["families"].items():
        for when in ("before", "after", "general"):
            f = r[when]
            o = f["open_set"]
            table.append([name, when, f["P@1"], f["mAP"], o["precision"], o["recall"], o["f1"]])
    print_table(
        "held-out test identities (never trained on, threshold from other held-out classes)",
        ["family", "embedding", "P@1", "mAP", "open-set precision", "recall", "F1"],
        table,
    )
    print_table(
        "near-duplicate copies R@1",
        ["embedding", "R@1"],
        list(results["near_dup_copies_R@1"].items()),
    )
    write_results("finetune", results, args.results)


if __name__ == "__main__":
    main()
