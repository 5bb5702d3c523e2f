"""Metric learning: fine-tune the embedding for "the same thing" from labelled images.

``lookalike train`` runs :func:`train`: a labelled folder tree (one sub-folder per class) or a
manifest column names each image's identity. The flow:

1. **read**: every image decoded safely (the ingest decode workers, time limits and all);
   corrupt files are quarantined with their reason and counted in the report, never fatal.
2. **features**: the frozen backbone's unit-length features of each image and of ``views``
   augmented views of it (crop, flip, colour, blur), computed once; training never runs the
   backbone again, so it takes seconds to minutes on a CPU.
3. **split**: a seeded, class-disjoint validation split, so every validation figure is about
   identities the head never saw (the question a user's next, unseen item asks).
4. **fit**: a linear head (``dim`` outputs) trained with ArcFace (additive angular margin
   softmax, Deng et al. 2019; the default) or a triplet loss with batch-hard mining (Hermans et
   al. 2017), Adam, fixed seed.
5. **judge**: P@1 and mAP of leave-one-out retrieval on the validation classes before (the
   backbone) and after (the head), and the open-set threshold (:func:`calibrate`): the lowest
   cosine similarity at which a nearest neighbour is the right identity with
   ``target_precision``.
6. **register**: a new version in the registry (:mod:`pipeline.backbones.trained`), written
   atomically; ``lookalike rollout`` backfills it into a new index, and the quality gate
   compares both models on the version's validation split.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel, Field

from pipeline.backbones import REGISTRY, get_spec, trained, trained_spec
from pipeline.backbones.trained import Head, TrainedModel
from pipeline.decode import DecodePool, read_file
from pipeline.discover import IMAGE_EXTENSIONS, read_manifest
from pipeline.document import QuarantinedItem
from pipeline.embed import Embedder, get_embedder, model_path, onnx_path
from pipeline.rollout import mean_average_precision
from pipeline.search import image_vector
from pipeline.settings import Settings, get_settings

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: how the CLI draws its bars (the core prints nothing)."""


class TrainingError(ValueError):
    """The training data or the request cannot give a model; the message says what to fix."""


class TrainConfig(BaseModel):
    """Everything that decides the trained numbers, recorded with the version."""

    name: str = Field(description="Short name: the model is <backbone>-<head>-<name>.")
    base: str = Field("mobilenet_v2-imagenet", description="Built-in backbone to start from.")
    head: Head = "arcface"
    dim: int = Field(256, ge=8, le=2048, description="Embedding size of the head.")
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(256, ge=8)
    learning_rate: float = Field(2e-3, gt=0)
    margin: float = Field(
        0.2, ge=0, description="ArcFace angular margin (radians) or triplet margin."
    )
    # chosen by ``python -m benchmarks.finetune --sweep`` (calibration classes, never the test
    # ones): 16 against 24 lifts mean P@1 0.667 -> 0.689 with copy detection unchanged; a larger
    # margin lifts it as much but costs near-duplicate copies R@1 (0.946 -> 0.934 at 0.4)
    scale: float = Field(16.0, gt=0, description="ArcFace logit scale.")
    anchor: float = Field(
        0.01, ge=0, description="Weight of the pull back towards the starting projection (L2-SP)."
    )
    views: int = Field(2, ge=0, le=8, description="Augmented views per image (features).")
    mirror: bool = Field(
        True,
        description="Mirror views too; off where a mirror image is another identity (b and "
        "d, an arrow left and right).",
    )
    validation_share: float = Field(
        0.25, gt=0, lt=1, description="Share of the classes held out (class-disjoint)."
    )
    target_precision: float = Field(0.9, gt=0, le=1)
    self_supervised: bool = Field(
        False,
        description="No labels: every image is its own identity and its augmented views the "
        "positives (copy detection, near-duplicates).",
    )
    seed: int = 0


class OpenSet(BaseModel):
    """Identification at a similarity threshold: nearest neighbour or "no known match"."""

    threshold: float
    precision: float
    recall: float
    f1: float
    queries: int


class Figures(BaseModel):
    """Validation figures of one embedding."""

    p_at_1: float = Field(alias="P@1")
    map: float = Field(alias="mAP")
    open_set: OpenSet

    model_config = {"populate_by_name": True}


class TrainReport(BaseModel):
    """What ``lookalike train`` made, and the files it could not use."""

    model: TrainedModel
    quarantined: list[QuarantinedItem]


@dataclass
class Features:
    """Unit-length backbone features: row ``i`` is a view of image ``image[i]``."""

    vectors: np.ndarray  # (rows, base dim)
    image: np.ndarray  # (rows,) index into the readable images
    original: np.ndarray  # (rows,) bool: the image itself, not an augmented view


def model_name(config: TrainConfig) -> str:
    """``mobilenet_v2-imagenet`` + arcface + shoes -> ``mobilenet_v2-arcface-shoes``."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", config.name):
        raise TrainingError(
            f"model name {config.name!r}: use lower-case letters, digits, '.', '_' and '-'"
        )
    return f"{config.base.removesuffix('-imagenet')}-{config.head}-{config.name}"


def read_labelled(
    source: Path, manifest: Path | None = None, label_column: str | None = None
) -> list[tuple[Path, str]]:
    """``(path, label)`` of every image: from a manifest's ``label_column`` when given, else
    from the folder tree (the first folder under ``source`` is the label)."""
    if manifest is not None:
        column = label_column or "label"
        rows = read_manifest(manifest, base=source)
        found = [(p, str(r["metadata"].get(column, ""))) for p, r in rows.items()]
        missing = sum(1 for _, label in found if not label)
        if missing == len(found):
            raise TrainingError(f"{manifest}: no row has a {column!r} value")
        return sorted((p, label) for p, label in found if label)
    if not source.is_dir():
        raise TrainingError(f"{source} is not a folder")
    found, empty = [], []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        images = [
            (path, folder.name)
            for path in sorted(folder.rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()
        ]
        found += images
        if not images:
            empty.append(folder.name)
    if not found:
        raise TrainingError(
            f"{source}: no images in class folders (expected {source}/<class>/<image files>)"
        )
    if empty:
        raise TrainingError(
            f"{source}: {len(empty)} class folder(s) hold no images: {', '.join(empty[:10])}; "
            "add images or remove them"
        )
    return found


def unlabelled(source: Path) -> list[tuple[Path, str]]:
    """Every image under ``source`` as its own identity (its path relative to ``source``)."""
    if not source.is_dir():
        raise TrainingError(f"{source} is not a folder")
    found = [
        (path, path.relative_to(source).as_posix())
        for path in sorted(source.rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()
    ]
    if not found:
        raise TrainingError(f"{source}: no images")
    return found


def check_classes(labels: Sequence[str], expected: Sequence[str], source: Path) -> None:
    """Every class of ``expected`` needs two usable images in ``labels`` (one to find the
    other), and training needs four classes (some are held out)."""
    counts = Counter(labels)
    short = sorted(label for label in set(expected) if counts[label] < 2)
    if short:
        shown = ", ".join(f"{label} ({counts[label]})" for label in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise TrainingError(
            f"{source}: {len(short)} class(es) have fewer than 2 usable images: {shown}{more}; "
            "add images or remove the class (unreadable files are listed as quarantined)"
        )
    if len(counts) < 4:
        raise TrainingError(
            f"{source}: {len(counts)} class(es); training needs at least 4 (some are held out "
            "for validation)"
        )


def split_classes(labels: Sequence[str], share: float, seed: int) -> tuple[set[str], set[str]]:
    """A seeded class-disjoint split: (training classes, validation classes), at least two
    validation classes and two training classes."""
    classes = sorted(set(labels))
    random.Random(seed).shuffle(classes)
    held = min(len(classes) - 2, max(2, round(share * len(classes))))
    return set(classes[held:]), set(classes[:held])


def augment(pixels: np.ndarray, rng: np.random.Generator, mirror: bool = True) -> np.ndarray:
    """One augmented view of a model input (uint8 ``(size, size, 3)``): a random crop of 50-100 %
    of the area resized back, a mirror half the time (if ``mirror``), brightness, contrast and
    saturation jitter, a JPEG re-compression half the time."""
    size = pixels.shape[0]
    image = Image.fromarray(pixels)
    side = size * math.sqrt(rng.uniform(0.5, 1.0))
    left, top = rng.uniform(0, size - side, 2)
    image = image.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )
    if mirror and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.5:  # re-compressed, as shared copies are
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 90)))
        image = Image.open(buffer)
    return np.asarray(image.convert("RGB"))


def backbone_features(
    paths: Sequence[Path],
    embedder: Embedder,
    settings: Settings,
    views: int,
    seed: int,
    progress: Progress | None = None,
    mirror: bool = True,
) -> tuple[Features, list[int], list[QuarantinedItem]]:
    """Features of every readable image and its views; returns them, the indexes (into
    ``paths``) of the readable images, and the quarantined ones with their reasons."""
    rng = np.random.default_rng(seed)
    readable: list[int] = []
    quarantined: list[QuarantinedItem] = []
    rows: list[np.ndarray] = []
    image_of: list[int] = []
    original: list[bool] = []
    batch = max(8, settings.batch_size)
    with DecodePool(settings.decode_workers, settings.decode_timeout_s) as pool:
        for start in range(0, len(paths), batch):
            chunk = range(start, min(len(paths), start + batch))
            futures = [
                pool.submit(
                    paths[i],
                    max_bytes=settings.max_file_bytes,
                    max_pixels=settings.max_image_pixels,
                    spec=embedder.spec,
                )
                for i in chunk
            ]
            inputs = []
            for i, future in zip(chunk, futures, strict=True):
                prepared = pool.result(future, paths[i], settings.max_file_bytes)
                if prepared.pixels is None:
                    quarantined.append(QuarantinedItem(uri=str(paths[i]), reason=prepared.error))
                    continue
                number = len(readable)
                readable.append(i)
                for view in range(views + 1):
                    inputs.append(
                        prepared.pixels if view == 0 else augment(prepared.pixels, rng, mirror)
                    )
                    image_of.append(number)
                    original.append(view == 0)
            for offset in range(0, len(inputs), 64):
                rows.append(embedder.predict(np.stack(inputs[offset : offset + 64])).embeddings)
            if progress:
                progress("features", chunk.stop, len(paths))
    dim = embedder.spec.dim
    features = Features(
        vectors=np.concatenate(rows) if rows else np.zeros((0, dim), np.float32),
        image=np.array(image_of, np.int64),
        original=np.array(original, bool),
    )
    return features, readable, quarantined


# -- the head ----------------------------------------------------------------------------------


def fit_head(
    vectors: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Train the linear head on unit-length features ``(N, base dim)`` with integer class
    labels; returns its weights (``kernel``, ``bias``) and the loss of every epoch."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(config.seed)
    classes = int(labels.max()) + 1
    init = tf.keras.initializers.GlorotUniform(seed=config.seed)
    start_kernel, start_bias = _principal_axes(vectors, config.dim, config.seed)
    start = tf.constant(start_kernel)
    kernel = tf.Variable(start_kernel, name="kernel")
    bias = tf.Variable(start_bias, name="bias")
    centres = tf.Variable(init((classes, config.dim)), name="centres")
    weights = [kernel, bias] + ([centres] if config.head == "arcface" else [])
    optimiser = tf.keras.optimizers.Adam(config.learning_rate)
    x_all = tf.constant(vectors, tf.float32)
    y_all = tf.constant(labels, tf.int32)
    cos_m, sin_m = math.cos(config.margin), math.sin(config.margin)

    def arcface(emb: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        cos = tf.clip_by_value(emb @ tf.transpose(tf.math.l2_normalize(centres, 1)), -1.0, 1.0)
        target = tf.gather(cos, y, batch_dims=1)
        sin = tf.sqrt(tf.maximum(1.0 - target**2, 1e-7))
        with_margin = target * cos_m - sin * sin_m  # cos(theta + m)
        # past pi - m the margin would wrap around: fall back to a linear penalty there
        with_margin = tf.where(target > -cos_m, with_margin, target - config.margin * sin_m)
        logits = cos + tf.one_hot(y, classes) * (with_margin - target)[:, None]
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(y, config.scale * logits)
        )

    def triplet(emb: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        distance = 2.0 - 2.0 * emb @ tf.transpose(emb)  # squared, unit vectors
        same = tf.equal(y[:, None], y[None, :])
        positive = tf.reduce_max(tf.where(same, distance, 0.0), axis=1)
        negative = tf.reduce_min(tf.where(same, 4.0, distance), axis=1)
        return tf.reduce_mean(tf.nn.relu(positive - negative + config.margin))

    loss_of = arcface if config.head == "arcface" else triplet

    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            emb = tf.math.l2_normalize(x @ kernel + bias, 1)
            loss = loss_of(emb, y)
            # L2-SP (Li et al. 2018): stay near the start, the backbone's own geometry, which
            # carries what the labels do not ask about (which photo, not only which kind)
            total = loss + config.anchor * tf.reduce_sum(tf.square(kernel - start))
        gradients = tape.gradient(total, weights)
        optimiser.apply_gradients(zip(gradients, weights, strict=True))
        return loss

    rng = np.random.default_rng(config.seed)
    losses = []
    for epoch in range(config.epochs):
        order = _batches(labels, config, rng)
        total = [float(step(tf.gather(x_all, b), tf.gather(y_all, b))) for b in order]
        losses.append(float(np.mean(total)))
        if progress:
            progress("training", epoch + 1, config.epochs)
    return {"kernel": kernel.numpy(), "bias": bias.numpy()}, losses


def _principal_axes(vectors: np.ndarray, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's starting point: the centred training features' ``dim`` principal axes (random
    orthogonal ones beyond their rank). The head begins as the backbone's own geometry, which
    retrieval on unseen identities relies on, and training moves it only where the loss asks."""
    mean = vectors.mean(axis=0)
    _, _, axes = np.linalg.svd(vectors - mean, full_matrices=False)
    kernel = axes[:dim].T
    if kernel.shape[1] < dim:  # fewer training rows than dimensions
        extra = np.random.default_rng(seed).standard_normal(
            (vectors.shape[1], dim - kernel.shape[1])
        )
        extra -= kernel @ (kernel.T @ extra)
        kernel = np.hstack([kernel, np.linalg.qr(extra)[0]])
    return kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)


def _batches(labels: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: shuffled rows for ArcFace; for the triplet loss, batches of whole
    classes (up to 8 rows each), so that every anchor has positives to mine."""
    if config.head == "arcface":
        order = rng.permutation(len(labels))
        return [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    by_class = [
        rng.permutation(np.flatnonzero(labels == c)) for c in rng.permutation(labels.max() + 1)
    ]
    rows = [members[:8] for members in by_class if len(members) >= 2]
    batches, current = [], []
    for members in rows:
        current.extend(members.tolist())
        if len(current) >= config.batch_size:
            batches.append(np.array(current))
            current = []
    if current:
        batches.append(np.array(current))
    return batches


def project(vectors: np.ndarray, head: dict[str, np.ndarray]) -> np.ndarray:
    """Unit-length features through the head, unit length again (what the model embeds)."""
    out = vectors @ head["kernel"] + head["bias"]
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


# -- judging -----------------------------------------------------------------------------------


def precision_at_1(embeddings: np.ndarray, labels: Sequence[str]) -> float:
    """Share of images whose nearest other image has their label (images alone in their label
    are distractors only)."""
    labels_arr = np.asarray(labels)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    counts = Counter(labels_arr.tolist())
    queries = np.array([counts[label] > 1 for label in labels_arr])
    nearest = sims.argmax(axis=1)
    return float(np.mean(labels_arr[nearest][queries] == labels_arr[queries]))


def _open_set_queries(
    embeddings: np.ndarray, labels: Sequence[str], seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The open-set protocol on held-out identities: half of the classes are "known", one of
    their images (two where they have four or more) in a gallery and the others asking; the
    other half are strangers, all their images asking, any match a false one. Returns each
    query's similarity to its nearest gallery image, whether that image has its label, and the
    number of known queries."""
    labels_arr = np.asarray(labels)
    classes = sorted(set(labels_arr.tolist()))
    random.Random(seed).shuffle(classes)
    known = set(classes[: max(1, len(classes) // 2)])
    gallery, queries = [], []
    for label in classes:
        members = np.flatnonzero(labels_arr == label).tolist()
        if label in known:
            shown = 2 if len(members) >= 4 else 1
            gallery += members[:shown]
            queries += members[shown:]
        else:
            queries += members
    sims = embeddings[queries] @ embeddings[gallery].T
    best = sims.argmax(axis=1)
    right = labels_arr[np.array(gallery)[best]] == labels_arr[queries]
    known_queries = sum(1 for q in queries if labels_arr[q] in known)
    return sims[np.arange(len(queries)), best], right, known_queries


def _open_set(threshold: float, matched: np.ndarray, right: np.ndarray, known: int) -> OpenSet:
    p = float(right[matched].mean()) if matched.any() else 1.0
    r = float((right & matched).sum() / max(1, known))
    return OpenSet(
        threshold=threshold,
        precision=p,
        recall=r,
        f1=0.0 if p + r == 0 else 2 * p * r / (p + r),
        queries=len(matched),
    )


def calibrate(
    embeddings: np.ndarray, labels: Sequence[str], target_precision: float, seed: int
) -> OpenSet:
    """The open-set threshold on held-out identities (:func:`_open_set_queries`): a query is
    matched when its nearest gallery image is at least the threshold similar (cosine), right
    when that image has its label. The threshold gives the most recall at which precision
    (right matches among all matches) still reaches ``target_precision``, and is the highest
    such one (no false match let in for no gain); where none reaches it, the most precise."""
    score, right, known = _open_set_queries(embeddings, labels, seed)
    order = np.argsort(-score, kind="stable")
    right_so_far = np.cumsum(right[order])
    precision = right_so_far / np.arange(1, len(order) + 1)
    recall = right_so_far / max(1, known)
    reach = np.flatnonzero(precision >= target_precision)
    cut = int(reach[np.argmax(recall[reach])]) if len(reach) else int(precision.argmax())
    threshold = float(score[order[cut]])
    return _open_set(threshold, score >= threshold, right, known)


def open_set_at(
    embeddings: np.ndarray, labels: Sequence[str], threshold: float, seed: int
) -> OpenSet:
    """Precision, recall and F1 of the same protocol at a threshold calibrated elsewhere."""
    score, right, known = _open_set_queries(embeddings, labels, seed)
    return _open_set(threshold, score >= threshold, right, known)


def figures(embeddings: np.ndarray, labels: Sequence[str], config: TrainConfig) -> Figures:
    return Figures(
        p_at_1=precision_at_1(embeddings, labels),
        map=mean_average_precision(embeddings, labels),
        open_set=calibrate(embeddings, labels, config.target_precision, config.seed),
    )


# -- the command -------------------------------------------------------------------------------


def train(
    source: Path,
    config: TrainConfig,
    *,
    manifest: Path | None = None,
    label_column: str | None = None,
    new_version: bool = False,
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train, judge and register a new version (see the module docstring); raises
    :class:`TrainingError` with what to fix, leaving the registry as it was."""
    settings = settings or get_settings()
    if config.base not in REGISTRY:
        raise TrainingError(
            f"base {config.base!r} is not a built-in backbone ({', '.join(sorted(REGISTRY))})"
        )
    name = model_name(config)
    if name in REGISTRY:
        raise TrainingError(f"{name} is a built-in model: choose another name")
    existing = trained.versions(name, settings.model_dir)
    if existing and not new_version:
        raise TrainingError(
            f"{name} exists already (version {existing[-1]}): pass --new-version to train "
            f"version {existing[-1] + 1}, or choose another name"
        )
    if config.self_supervised:
        items = unlabelled(source)
        if config.views < 1:
            raise TrainingError(
                "--self-supervised learns from augmented views: use --views 1 or more"
            )
    else:
        items = read_labelled(source, manifest, label_column)
    embedder = embedder or get_embedder(config.base)
    paths = [p for p, _ in items]
    features, readable, quarantined = backbone_features(
        paths, embedder, settings, config.views, config.seed, progress, config.mirror
    )
    labels = [items[i][1] for i in readable]
    if config.self_supervised:
        if len(labels) < 8:
            raise TrainingError(f"{source}: {len(labels)} usable images; --self-supervised needs 8")
    else:
        check_classes(labels, [label for _, label in items], source)
    train_classes, validation_classes = split_classes(labels, config.validation_share, config.seed)
    class_ids = {c: n for n, c in enumerate(sorted(train_classes))}
    row_labels = np.array([labels[i] for i in features.image])
    in_train = np.isin(row_labels, sorted(train_classes))
    head, losses = fit_head(
        features.vectors[in_train],
        np.array([class_ids[c] for c in row_labels[in_train]]),
        config,
        progress,
    )
    originals = features.vectors[features.original]
    original_labels = row_labels[features.original]
    held = np.isin(original_labels, sorted(validation_classes))
    # judged on held-out images; without labels, an image and its views are one identity
    judged = np.isin(row_labels, sorted(validation_classes))
    if not config.self_supervised:
        judged &= features.original
    before = figures(features.vectors[judged], row_labels[judged], config)
    after = figures(project(features.vectors[judged], head), row_labels[judged], config)
    version = (existing[-1] if existing else 0) + 1
    record = TrainedModel(
        name=name,
        version=version,
        base=config.base,
        head=config.head,
        dim=config.dim,
        match_threshold=after.open_set.threshold,
        target_precision=config.target_precision,
        config=config.model_dump(),
        data={
            "source": str(source),
            "manifest": str(manifest) if manifest else None,
            "images": len(readable),
            "classes": len(set(labels)),
            "training_classes": len(train_classes),
            "validation_classes": len(validation_classes),
            "quarantined": len(quarantined),
        },
        metrics={
            "before": before.model_dump(by_alias=True),
            "after": after.model_dump(by_alias=True),
            "loss": {"first": losses[0], "last": losses[-1], "per_epoch": losses},
        },
    )
    held_images = [readable[i] for i in np.flatnonzero(held)]
    trained.write(
        record,
        settings.model_dir,
        head=head,
        gallery={"embeddings": project(originals, head), "labels": original_labels},
        validation=[(paths[i], items[i][1]) for i in held_images],
    )
    # models converted under this id from an earlier, deleted version are stale (Keras and
    # ONNX alike: a stale ONNX file would embed with the old head)
    spec = trained_spec(record, settings.model_dir)
    for cached in (model_path(spec, settings.model_dir), onnx_path(spec, settings.model_dir)):
        cached.unlink(missing_ok=True)
    return TrainReport(model=record, quarantined=quarantined)


# -- identification ----------------------------------------------------------------------------


class Identification(BaseModel):
    """Who an image shows, among a trained model's labelled images, or nobody known."""

    model: str
    label: str | None = Field(description="The identity, or null: no known match.")
    similarity: float = Field(description="Cosine similarity to the nearest labelled image.")
    nearest: str = Field(description="The nearest labelled image's identity, matched or not.")
    threshold: float


def identify(data: bytes, model: str, settings: Settings | None = None) -> Identification:
    """The nearest labelled image of a trained model, if at least its threshold away."""
    settings = settings or get_settings()
    spec = get_spec(model, settings.model_dir)
    record = trained.find(spec.name, settings.model_dir, int(spec.version))
    if record is None or record.match_threshold is None:
        raise TrainingError(f"{model} is not a trained model: identify needs one (lookalike train)")
    vector = np.asarray(image_vector(data, get_embedder(spec.model_id), settings))
    embeddings, labels = trained.gallery(record, settings.model_dir)
    sims = embeddings @ vector
    best = int(sims.argmax())
    similarity = float(sims[best])
    return Identification(
        model=record.model_id,
        label=str(labels[best]) if similarity >= record.match_threshold else None,
        similarity=similarity,
        nearest=str(labels[best]),
        threshold=record.match_threshold,
    )


def identify_file(path: Path, model: str, settings: Settings | None = None) -> Identification:
    settings = settings or get_settings()
    return identify(read_file(path, settings.max_file_bytes), model, settings)
