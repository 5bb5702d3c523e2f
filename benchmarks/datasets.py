"""Build the benchmark data sets from :mod:`benchmarks.sources` into a cache directory.

Each set is a folder of JPEG files plus ``manifest.json``; the manifest is written last and
records a hash of the build configuration, so an interrupted build is redone and a finished one
is reused (building takes a minute, embedding it longer). Same configuration and seed, same
files, on any machine with the same packages.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import console, track
from benchmarks.sources import (
    PACKAGE_DIRS,
    Photo,
    SourceUnavailable,
    Stamp,
    photo_pool,
    tuxpaint_stamps,
)
from benchmarks.transforms import DEFAULT_EDITS, EDITS, composite, fit, jitter, random_crop


@dataclass(frozen=True)
class NearDupConfig:
    """Near-duplicate / copy-detection set: references (originals + distractors) and queries
    (edited copies and natural second views), each query with exactly one right answer."""

    seed: int = 0
    edits: tuple[str, ...] = DEFAULT_EDITS
    distractors: int = 1200
    background_share: float = 0.35  # of the single photos, kept out of the references
    max_side: int = 2048  # references are stored at most this large
    max_references: int | None = None  # tiny configurations for tests
    natural_pairs: bool = True


@dataclass(frozen=True)
class CategoryConfig:
    """Category set: every photographed Tux Paint stamp composited onto a real photo."""

    seed: int = 0
    canvas: tuple[int, int] = (400, 300)
    max_stamps: int | None = None  # tiny configurations for tests: an even spread of stamps


@dataclass(frozen=True)
class SceneConfig:
    """Multi-object scenes: 2-4 Tux Paint cut-outs in one photo, each with its own reference."""

    seed: int = 0
    canvas: tuple[int, int] = (1024, 768)
    objects: tuple[int, int] = (2, 4)  # per scene, inclusive
    fill: tuple[float, float] = (0.6, 0.95)  # of its quarter of the scene's shorter side
    reference_size: int = 320
    max_stamps: int | None = None  # tiny configurations for tests


@dataclass(frozen=True)
class PhotoConfig:
    """Every real photo of the pool as it is (backgrounds-only textures and chessboards
    included), size-capped: whole scenes, beside the category set's cut-outs."""

    max_side: int = 1024
    max_photos: int | None = None  # tiny configurations for tests: the first ones


@dataclass(frozen=True)
class LibraryConfig:
    """A camera-like library for throughput: JPEGs from 0.8 to 12 megapixels."""

    seed: int = 0
    files: int = 256
    sizes: tuple[tuple[int, int], ...] = ((4032, 3024), (3000, 2000), (1600, 1200), (1024, 768))


@dataclass
class Manifest:
    """What a built set contains; paths are relative to ``root``."""

    root: Path
    config: dict[str, Any]
    items: dict[str, list[dict[str, Any]]]
    skipped: dict[str, str] = field(default_factory=dict)

    def paths(self, part: str) -> list[Path]:
        return [self.root / item["path"] for item in self.items[part]]


def junk(queries: list[dict[str, Any]], references: list[dict[str, Any]]) -> np.ndarray:
    """``(queries, references)`` bool: references that are right answers too, besides the
    query's target, so they count neither for nor against it (the "junk" images of the Oxford
    and Paris benchmarks). A photo inset into another also shows that other photo, and every
    distractor cut from the same photo is in the library: finding it first is not a mistake."""
    shown = np.array([q.get("background", "") for q in queries])
    sources = np.array([r.get("background", "") for r in references])
    return (shown[:, None] == sources[None, :]) & (shown[:, None] != "")


# Part of every cache key: bump it when a change to the build code changes the files.
BUILD_VERSION = 2


def _config_hash(kind: str, config: Any) -> str:
    payload = json.dumps(
        {"kind": kind, "build": BUILD_VERSION, **asdict(config)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _cached(root: Path, digest: str) -> Manifest | None:
    try:
        data = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("config_hash") != digest:
        return None
    if any(PACKAGE_DIRS[name].is_dir() for name in data.get("skipped", {}) if name in PACKAGE_DIRS):
        return None  # built before a package it skipped was installed: build it with it
    return Manifest(root, data["config"], data["items"], data.get("skipped", {}))


def _write_manifest(root: Path, digest: str, manifest: Manifest) -> Manifest:
    data = {
        "config_hash": digest,
        "config": manifest.config,
        "skipped": manifest.skipped,
        "items": manifest.items,
    }
    (root / "manifest.json").write_text(json.dumps(data, indent=1, default=str))
    return manifest


def _fresh(root: Path, *folders: str) -> None:
    """An empty ``root`` with ``folders`` in it (a stale build is removed first)."""
    if root.exists():
        shutil.rmtree(root)
    for folder in folders:
        (root / folder).mkdir(parents=True)


class _PhotoCache:
    """Decoded, size-capped photos, each loaded once (some are 13 MB PNGs)."""

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side
        self._images: dict[str, Image.Image] = {}

    def get(self, photo: Photo) -> Image.Image:
        if photo.name not in self._images:
            self._images[photo.name] = fit(photo.load(), self.max_side)
        return self._images[photo.name]


def build_near_dup(root: Path, config: NearDupConfig) -> Manifest:
    """Build (or reuse) the near-duplicate set under ``root``."""
    digest = _config_hash("near_dup", config)
    if (manifest := _cached(root, digest)) is not None:
        return manifest
    _fresh(root, "refs", "queries")
    pool = photo_pool()
    skipped = dict(pool.skipped)
    references, background_photos = pool.split(config.seed, config.background_share)
    if not background_photos:
        raise SourceUnavailable("no background photos for distractors")
    if config.max_references is not None:
        references = references[: config.max_references]
    names = {p.name for p in references}
    try:
        stamps = tuxpaint_stamps()
    except SourceUnavailable as exc:
        skipped["tuxpaint-stamps-default"] = f"{exc}; distractors are plain photo crops"
        stamps = []
    cache = _PhotoCache(config.max_side)
    rng = random.Random(config.seed)
    refs, queries = [], []
    for photo in track(references, "near-dup: references and edits"):
        image = cache.get(photo)
        ref_id = f"ref/{photo.name}"
        path = f"refs/{len(refs):05d}.jpg"
        image.save(root / path, quality=92)
        refs.append({"id": ref_id, "path": path, "kind": "original", "name": photo.name})
        for edit_name in config.edits:
            edit = EDITS[edit_name]
            background = rng.choice(background_photos)
            other = random_crop(cache.get(background), rng, 0.5)
            copy = edit.apply(image, random.Random(rng.random()), other)
            path = f"queries/{len(queries):05d}.jpg"
            copy.save(root / path, quality=edit.quality)
            queries.append({"path": path, "target": ref_id, "edit": edit_name, "natural": None})
            if edit.shows_other:
                queries[-1]["background"] = background.name
    if config.natural_pairs:
        for pair in pool.pairs:
            if pair.target not in names:
                continue
            path = f"queries/{len(queries):05d}.jpg"
            fit(pair.query.load(), config.max_side).save(root / path, quality=92)
            queries.append(
                {
                    "path": path,
                    "target": f"ref/{pair.target}",
                    "edit": None,
                    "natural": pair.kind,
                    "name": pair.query.name,
                }
            )
    for i in track(range(config.distractors), "near-dup: distractors"):
        background = rng.choice(background_photos)
        crop = random_crop(cache.get(background), rng, rng.uniform(0.1, 0.6))
        size = rng.choice(((640, 480), (800, 600), (480, 640), (1024, 768)))
        if stamps:
            stamp = rng.choice(stamps)
            image = composite(stamp.load(), crop, rng, size, scale=(0.3, 0.7))
        else:
            image = jitter(crop.resize(size, Image.Resampling.BILINEAR), rng)
        path = f"refs/{len(refs):05d}.jpg"
        image.save(root / path, quality=90)
        refs.append(
            {
                "id": f"distractor/{i:05d}",
                "path": path,
                "kind": "distractor",
                "background": background.name,
            }
        )
    manifest = Manifest(
        root, asdict(config), {"references": refs, "queries": queries}, skipped=skipped
    )
    console.print(
        f"near-dup set: {len(references)} originals, {config.distractors} distractors, "
        f"{len(queries)} queries ({sum(q['natural'] is not None for q in queries)} natural)"
    )
    return _write_manifest(root, digest, manifest)


def build_category(root: Path, config: CategoryConfig) -> Manifest:
    """Build (or reuse) the category set; raises ``SourceUnavailable`` without Tux Paint."""
    digest = _config_hash("category", config)
    if (manifest := _cached(root, digest)) is not None:
        return manifest
    stamps = tuxpaint_stamps()
    if config.max_stamps is not None and len(stamps) > config.max_stamps:
        step = len(stamps) / config.max_stamps
        stamps = [stamps[int(i * step)] for i in range(config.max_stamps)]
    _fresh(root, "items")
    pool = photo_pool()
    backgrounds = [*pool.photos, *pool.backgrounds]
    cache = _PhotoCache(1024)
    rng = random.Random(config.seed)
    items = []
    for i, stamp in enumerate(track(stamps, "category: composites")):
        background = random_crop(cache.get(rng.choice(backgrounds)), rng, rng.uniform(0.1, 0.5))
        size = config.canvas if rng.random() < 0.5 else config.canvas[::-1]
        path = f"items/{i:05d}.jpg"
        composite(stamp.load(), background, rng, size).save(root / path, quality=90)
        items.append(_stamp_item(stamp, path))
    manifest = Manifest(root, asdict(config), {"items": items}, skipped=dict(pool.skipped))
    return _write_manifest(root, digest, manifest)


def build_scenes(root: Path, config: SceneConfig) -> Manifest:
    """Build (or reuse) the multi-object scene set; raises ``SourceUnavailable`` without Tux
    Paint.

    Every stamp appears in exactly one scene. Its reference is the cut-out alone on a plain
    light background (a catalogue shot); in its scene it shares a photo with 1-3 others, one
    per quarter of the frame so that none covers another, at 0.6-0.95 of its quarter (about a
    third to a half of the scene's shorter side), randomly mirrored."""
    digest = _config_hash("scenes", config)
    if (manifest := _cached(root, digest)) is not None:
        return manifest
    stamps = tuxpaint_stamps()
    if config.max_stamps is not None and len(stamps) > config.max_stamps:
        stamps = stamps[:: max(1, len(stamps) // config.max_stamps)][: config.max_stamps]
    _fresh(root, "refs", "scenes")
    pool = photo_pool()
    backgrounds = [*pool.photos, *pool.backgrounds]
    cache = _PhotoCache(1024)
    rng = random.Random(config.seed)
    order = list(range(len(stamps)))
    rng.shuffle(order)
    refs: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    width, height = config.canvas
    quarters = [(x, y) for y in (0, height // 2) for x in (0, width // 2)]
    groups = []
    while order:
        count = min(len(order), rng.randint(*config.objects))
        groups.append(order[:count])
        order = order[count:]
    for members in track(groups, "scenes: references and scenes"):
        photo = random_crop(cache.get(rng.choice(backgrounds)), rng, rng.uniform(0.2, 0.6))
        scene = photo.convert("RGB").resize(config.canvas, Image.Resampling.BILINEAR)
        path = f"scenes/{len(scenes):05d}.jpg"
        for index, (x, y) in zip(members, rng.sample(quarters, len(members)), strict=True):
            stamp = stamps[index].load()
            box = (x, y, x + width // 2, y + height // 2)
            part = composite(stamp, scene.crop(box), rng, (width // 2, height // 2), config.fill)
            scene.paste(part, box[:2])
            ref_path = f"refs/{index:05d}.jpg"
            plain = Image.new("RGBA", stamp.size, (235, 235, 235, 255))
            plain.alpha_composite(stamp)
            fit(plain.convert("RGB"), config.reference_size).save(root / ref_path, quality=92)
            refs.append({**_stamp_item(stamps[index], ref_path), "scene": path})
        scene.save(root / path, quality=90)
        scenes.append({"path": path, "objects": [f"refs/{i:05d}.jpg" for i in members]})
    refs.sort(key=lambda r: r["path"])
    manifest = Manifest(
        root, asdict(config), {"references": refs, "scenes": scenes}, skipped=dict(pool.skipped)
    )
    return _write_manifest(root, digest, manifest)


def _stamp_item(stamp: Stamp, path: str) -> dict[str, Any]:
    return {
        "path": path,
        "category": stamp.category,
        "subcategory": stamp.subcategory,
        "stamp": stamp.path.name,
    }


def build_photos(root: Path, config: PhotoConfig) -> Manifest:
    """Build (or reuse) the photo set: each photo of :func:`~benchmarks.sources.photo_pool`
    once, at most ``max_side`` pixels on its longer side, as a quality-92 JPEG named in the
    manifest (``name``: ``"skimage/chelsea"``), so a benchmark can say what each one shows."""
    digest = _config_hash("photos", config)
    if (manifest := _cached(root, digest)) is not None:
        return manifest
    _fresh(root, "items")
    pool = photo_pool()
    photos = [*pool.photos, *pool.backgrounds][: config.max_photos]
    items = []
    for i, photo in enumerate(track(photos, "photos: as they are")):
        path = f"items/{i:05d}.jpg"
        fit(photo.load(), config.max_side).save(root / path, quality=92)
        items.append({"path": path, "name": photo.name, "source": photo.source})
    manifest = Manifest(root, asdict(config), {"items": items}, skipped=dict(pool.skipped))
    return _write_manifest(root, digest, manifest)


def build_library(root: Path, config: LibraryConfig) -> Manifest:
    """Build (or reuse) the throughput library: crops of every real photo, resized to camera
    sizes (upscaled where the source is smaller: decoding cost depends on pixels, not on
    detail) and saved as quality-90 JPEGs."""
    digest = _config_hash("library", config)
    if (manifest := _cached(root, digest)) is not None:
        return manifest
    _fresh(root, "files")
    pool = photo_pool()
    photos = [*pool.photos, *pool.backgrounds]
    cache = _PhotoCache(4096)
    rng = random.Random(config.seed)
    items = []
    for i in track(range(config.files), "library: camera-size JPEGs"):
        size = config.sizes[i % len(config.sizes)]
        crop = random_crop(cache.get(rng.choice(photos)), rng, rng.uniform(0.5, 1.0))
        image = jitter(crop.resize(size, Image.Resampling.BILINEAR), rng)
        path = f"files/{i:05d}.jpg"
        image.save(root / path, quality=90)
        items.append({"path": path, "width": size[0], "height": size[1]})
    manifest = Manifest(root, asdict(config), {"files": items}, skipped=dict(pool.skipped))
    return _write_manifest(root, digest, manifest)
