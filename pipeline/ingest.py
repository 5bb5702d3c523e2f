"""Ingestion: discover -> decode -> embed -> label -> write, incrementally.

Shaped like clip-retrieval's inference split: a *reader* (threads that read, hash, decode and
resize files ahead of the model), a *mapper* (one batched model call that yields embeddings and
ImageNet probabilities, turned into labels) and a *writer* (one upsert per batch). Each stage is
timed per batch so a slow stage shows up in the summary. ``process_batch`` is the unit an
Airflow mapped task runs; ``ingest`` runs the whole job in one process for the CLI.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from pipeline import discover
from pipeline.decode import DecodeError, decode_image
from pipeline.discover import SourceAsset
from pipeline.document import (
    AssetDocument,
    IngestSummary,
    QuarantinedItem,
    QuarantineRecord,
    StoredState,
)
from pipeline.settings import Settings, get_settings

if TYPE_CHECKING:
    from pipeline.embed import Embedder
    from pipeline.label import Labeler
    from pipeline.store import Store

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Loaded:
    """A source asset after the reader stage: model-ready pixels, or why it has none."""

    asset: SourceAsset
    sha256: str = ""
    fingerprint: str = ""
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    error: str | None = None
    unchanged: bool = False  # touched (new mtime) but same content and metadata


@dataclass
class BatchResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def embedded(self) -> int:
        return self.new + self.updated


def _accumulate(summary: IngestSummary, batch: BatchResult) -> None:
    summary.new += batch.new
    summary.updated += batch.updated
    summary.unchanged += batch.unchanged
    summary.quarantined += [QuarantinedItem(uri=r.uri, reason=r.reason) for r in batch.quarantined]
    for stage, seconds in batch.seconds.items():
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds


def load(
    asset: SourceAsset, state: StoredState | None, embedder: Embedder, settings: Settings
) -> Loaded:
    """Reader stage for one file: read once, hash, decode safely, resize for the model."""
    if not asset.exists:
        return Loaded(asset, fingerprint=asset.fingerprint(""), error="file not found")
    if asset.size_bytes > settings.max_file_bytes:
        return Loaded(
            asset,
            fingerprint=asset.fingerprint(""),
            error=f"file too large: {asset.size_bytes} bytes (limit {settings.max_file_bytes})",
        )
    try:
        data = asset.path.read_bytes()
    except OSError as exc:
        return Loaded(asset, fingerprint=asset.fingerprint(""), error=f"cannot read: {exc}")
    sha = hashlib.sha256(data).hexdigest()
    loaded = Loaded(asset, sha256=sha, fingerprint=asset.fingerprint(sha))
    if state is not None and state.fingerprint == loaded.fingerprint:
        loaded.unchanged = True
        return loaded
    try:
        decoded = decode_image(
            data, max_pixels=settings.max_image_pixels, min_size=embedder.spec.resize_size
        )
    except DecodeError as exc:
        loaded.error = str(exc)
        return loaded
    loaded.pixels = embedder.preprocess(decoded.image)
    loaded.width, loaded.height, loaded.format = decoded.width, decoded.height, decoded.format
    return loaded


def process_batch(
    items: list[Loaded],
    stored: Mapping[str, StoredState],
    store: Store,
    embedder: Embedder,
    labeler: Labeler,
    settings: Settings,
) -> BatchResult:
    """Mapper + writer for one batch of loaded assets. Idempotent: upserts by id."""
    result = BatchResult()
    good = [i for i in items if i.pixels is not None]
    result.unchanged = sum(i.unchanged for i in items)
    for item in items:
        if item.error is not None:
            result.quarantined.append(
                QuarantineRecord(
                    id=item.asset.id,
                    uri=item.asset.uri,
                    sha256=item.sha256,
                    fingerprint=item.fingerprint,
                    size_bytes=item.asset.size_bytes,
                    mtime_ns=item.asset.mtime_ns,
                    reason=item.error,
                )
            )
    docs: list[AssetDocument] = []
    if good:
        start = time.perf_counter()
        prediction = embedder.predict(np.stack([i.pixels for i in good]))
        labels = labeler.detect_batch(
            prediction.probabilities,
            min_confidence=settings.label_min_confidence,
            max_labels=settings.label_max_labels,
        )
        result.seconds["embed"] = time.perf_counter() - start
        for item, vector, item_labels in zip(good, prediction.embeddings, labels, strict=True):
            a = item.asset
            docs.append(
                AssetDocument(
                    id=a.id,
                    uri=a.uri,
                    sha256=item.sha256,
                    fingerprint=item.fingerprint,
                    size_bytes=a.size_bytes,
                    mtime_ns=a.mtime_ns,
                    width=item.width,
                    height=item.height,
                    format=item.format,
                    title=a.title,
                    description=a.description,
                    keywords=list(a.keywords),
                    metadata=dict(a.metadata),
                    labels=item_labels,
                    embedding=vector.tolist(),
                    model=embedder.spec.name,
                    model_version=embedder.spec.version,
                )
            )
            previous = stored.get(a.id)
            if previous is None or previous.quarantined:
                result.new += 1
            else:
                result.updated += 1
    start = time.perf_counter()
    store.upsert(docs)
    store.quarantine(result.quarantined)
    result.seconds["write"] = time.perf_counter() - start
    return result


def ingest(
    source: Path,
    manifest: Path | None = None,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
    settings: Settings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Bring the store in line with ``source``: index new and changed assets, quarantine the
    undecodable ones, delete assets whose files are gone. ``on_progress(done, total)`` is
    called after each batch."""
    from pipeline.embed import get_embedder
    from pipeline.label import get_labeler
    from pipeline.store import model_name, open_store

    settings = settings or get_settings()
    started = time.perf_counter()
    own_store = store is None
    # The active model version (the alias), unless a caller picks a store or an embedder.
    store = store or open_store(embedder.model_id if embedder else None, settings)
    embedder = embedder or get_embedder(model_name(store.model_id))
    if embedder.model_id != store.model_id:
        raise ValueError(
            f"embedder {embedder.model_id} cannot write into the index of {store.model_id}"
        )
    labeler = get_labeler()
    try:
        store.ensure(embedder.spec.dim)
        stored = store.states()
        work = discover.plan(discover.scan(source, manifest), stored, source)
        summary = IngestSummary(
            source=discover.path_to_uri(Path(source)),
            unchanged=work.unchanged,
            model=embedder.model_id,
        )
        total, done = len(work.todo), 0
        if on_progress:
            on_progress(0, total)
        with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
            loaded = _prefetch(
                pool,
                lambda a: load(a, stored.get(a.id), embedder, settings),
                work.todo,
                window=2 * settings.batch_size,
            )
            for batch in _batched(loaded, settings.batch_size, summary.stage_seconds):
                _accumulate(
                    summary, process_batch(batch, stored, store, embedder, labeler, settings)
                )
                done += len(batch)
                if on_progress:
                    on_progress(done, total)
        summary.deleted = store.delete(work.deleted)
        if store.active_model() is None and store.count():
            store.activate()  # the first index built becomes the one searches use
        if summary.new or summary.updated or summary.deleted:
            start = time.perf_counter()
            store.optimize()
            summary.stage_seconds["optimize"] = time.perf_counter() - start
        summary.duration_s = round(time.perf_counter() - started, 3)
        embedded = summary.new + summary.updated
        summary.images_per_s = round(embedded / summary.duration_s, 2)
        summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
        if summary.new or summary.updated or summary.deleted or summary.quarantined:
            store.record_run(summary)  # an idle run leaves no trace: it writes nothing
    finally:
        if own_store:
            store.close()
    return summary


def _prefetch(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """``map`` over a thread pool, in order, with at most ``window`` items in flight, so the
    readers stay ahead of the model without holding a whole library in memory."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batched(items: Iterator[Loaded], size: int, seconds: dict[str, float]) -> Iterator[list]:
    """Group into batches, recording how long the consumer waited on the readers."""
    batch: list[Loaded] = []
    while True:
        start = time.perf_counter()
        item = next(items, None)
        seconds["read_wait"] = seconds.get("read_wait", 0.0) + time.perf_counter() - start
        if item is None:
            break
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
