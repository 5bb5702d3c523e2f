"""The general fine-tuned model that ships: its training data, built offline, and its check.

    bash scripts/train_general.sh      # mobilenet_v2-arcface-general@N in the registry (~4 min)

runs, in turn:

    python -m benchmarks.general manifest DIR      # every family as one labelled manifest
    lookalike train DIR --manifest DIR/manifest.csv --label-column identity --name general \\
        --no-mirror
    python -m benchmarks.general check mobilenet_v2-arcface-general

Identities, each ``<family>/<class>``, all from installed Debian packages (nothing is
downloaded): **fonts** (a character drawn by many fonts), **icons** (an icon name drawn by several
themes; :mod:`benchmarks.families`) and **stamps** (a Tux Paint sub-category, its cut-outs on
photo crops; the category set of :mod:`benchmarks.datasets`). A family whose packages are missing
is left out, and the manifest step says so.

The photos are left out on purpose: the near-duplicate set is built from them, and it is the
check that a general model keeps copy detection (the issue's "near-duplicate R@1 not lower"),
so it must stay unseen. ``check`` measures it for the backbone and the trained model, each
embedding the files as ingestion does. Mirror views are off: in fonts and icons a mirror image is
another identity (``b`` and ``d``, ``go-next`` and ``go-previous``).

Reproducible: the same packages, seed and code give the same files, the same manifest and the
same weights (``lookalike train`` records its configuration and data with the version).
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from benchmarks.common import console, data_dir
from benchmarks.datasets import CategoryConfig, build_category
from benchmarks.families import FamilyConfig, build_family
from benchmarks.finetune import near_dup_copies
from benchmarks.sources import SourceUnavailable
from pipeline.embed import get_embedder

MANIFEST = "manifest.csv"
LABEL_COLUMN = "identity"


def identities(
    root: Path,
    families: FamilyConfig | None = None,
    stamps: CategoryConfig | None = None,
) -> tuple[list[tuple[Path, str]], dict[str, str]]:
    """``(image, "<family>/<class>")`` of every family that can be built under ``root`` (the
    benchmark cache), and why each missing one is missing."""
    rows: list[tuple[Path, str]] = []
    missing: dict[str, str] = {}
    for family in ("fonts", "icons"):
        try:
            manifest = build_family(root / "families", family, families or FamilyConfig())
        except SourceUnavailable as exc:
            missing[family] = str(exc)
            continue
        rows += [
            (manifest.root / item["path"], f"{family}/{item['label']}")
            for item in manifest.items["items"]
        ]
    try:
        manifest = build_category(root / "category", stamps or CategoryConfig())
    except SourceUnavailable as exc:
        missing["stamps"] = str(exc)
    else:
        rows += [
            (manifest.root / item["path"], f"stamps/{item['subcategory']}")
            for item in manifest.items["items"]
        ]
    return rows, missing


def write_manifest(
    out: Path,
    root: Path,
    families: FamilyConfig | None = None,
    stamps: CategoryConfig | None = None,
) -> Counter[str]:
    """``out/manifest.csv`` (``path``, ``identity``) for ``lookalike train``; returns the images
    per family. An identity with a single image is left out (training needs two of each: one
    to find the other); ``SystemExit`` when no family can be built."""
    rows, missing = identities(root, families, stamps)
    for family, why in missing.items():
        console.print(f"[yellow]{family} left out[/]: {why}")
    counts = Counter(label for _, label in rows)
    kept = sorted((path, label) for path, label in rows if counts[label] >= 2)
    if not kept:
        raise SystemExit("no image family can be built here: see the messages above")
    out.mkdir(parents=True, exist_ok=True)
    with (out / MANIFEST).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", LABEL_COLUMN])
        writer.writerows((str(path.resolve()), label) for path, label in kept)
    per_family = Counter(label.partition("/")[0] for _, label in kept)
    classes = Counter(label.partition("/")[0] for label in {label for _, label in kept})
    single = sum(1 for n in counts.values() if n < 2)
    console.print(
        f"{out / MANIFEST}: {len(kept)} images of {sum(classes.values())} identities ("
        + ", ".join(f"{f} {classes[f]} / {per_family[f]} images" for f in sorted(classes))
        + (f"; {single} single-image identities left out" if single else "")
        + ")"
    )
    return per_family


def check(model: str, root: Path, base: str = "mobilenet_v2-imagenet") -> dict[str, float]:
    """Near-duplicate copies R@1 (the quality benchmark's set, never trained on) for the
    backbone and for the model, each embedding the files itself, as ingestion would."""
    return {
        embedder.model_id: near_dup_copies(root, embedder, None)
        for embedder in (get_embedder(base), get_embedder(model))
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="Cache of the built image families (default: $LOOKALIKE_HOME/bench).",
    )
    steps = parser.add_subparsers(dest="step", required=True)
    manifest = steps.add_parser("manifest", help="Build the families and write DIR/manifest.csv.")
    manifest.add_argument("out", type=Path, help="Folder of the manifest.")
    judged = steps.add_parser("check", help="Near-duplicate copies R@1, backbone and model.")
    judged.add_argument("model", help="The trained model (name or name@version).")
    judged.add_argument("--base", default="mobilenet_v2-imagenet", help="Its backbone.")
    args = parser.parse_args(argv)
    root = data_dir(args.data_dir)
    if args.step == "manifest":
        write_manifest(args.out, root)
    else:
        for model_id, r1 in check(args.model, root, args.base).items():
            console.print(f"near-duplicate copies R@1, {model_id}: {r1:.3f}")


if __name__ == "__main__":
    main()
