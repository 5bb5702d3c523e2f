"""Ingestion: discover -> decode -> embed -> label -> write, incrementally.

Shaped like clip-retrieval's inference split: a *reader* (threads that read, hash, decode and
resize files ahead of the model), a *mapper* (one batched model call that yields embeddings and
ImageNet probabilities, turned into labels) and a *writer* (one upsert per batch). Each stage is
timed per batch so a slow stage shows up in the summary.

A run is planned first and executed second, so the same code serves one process and many:
``plan_run`` decides everything (what to embed, what to delete) into a JSON-serialisable
``RunPlan``; ``plan_batches`` splits its work; ``run_batch`` does one batch (an Airflow mapped
task; idempotent, because writes are upserts by id); ``remove_deleted`` and ``finish_run`` close
the run. ``ingest`` chains the same functions in one process for the CLI.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydantic import BaseModel, Field

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


class BatchResult(BaseModel):
    """What one batch did; JSON-serialisable, so a mapped task can return it as XCom."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: list[QuarantineRecord] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)

    @property
    def embedded(self) -> int:
        return self.new + self.updated


class AssetRef(BaseModel):
    """A source asset as a plan carries it (plain JSON), with the state the store held for its
    id when the run was planned. Carrying that state makes a batch independent of when it runs:
    a retried batch counts and writes exactly what its first attempt would have."""

    asset: SourceAsset
    previous: StoredState | None = None


class RunPlan(BaseModel):
    """Everything one ingestion run will do, decided before any image is read.

    ``model`` pins the index the run writes into: if a rollout moves the alias mid-run, the
    remaining batches still finish the run they belong to.
    """

    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str = Field(description="The source folder's file:// URI.")
    model: str = Field(description="Model version (index) the run writes into.")
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    todo: list[AssetRef] = Field(
        default_factory=list, description="New, changed or not provably unchanged assets."
    )
    deleted: list[str] = Field(
        default_factory=list, description="Ids in the store whose file is gone."
    )
    unchanged: int = 0


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


def read_batches(
    batches: Sequence[Sequence[tuple[SourceAsset, StoredState | None]]],
    embedder: Embedder,
    settings: Settings,
    seconds: dict[str, float],
) -> Iterator[list[Loaded]]:
    """Reader stage over whole batches: decode threads stay up to two batches ahead of the
    model, across batch boundaries. Time spent waiting on them adds to ``seconds["read_wait"]``.
    """
    window = 2 * max(map(len, batches), default=1)
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
        loaded = _prefetch(
            pool,
            lambda pair: load(pair[0], pair[1], embedder, settings),
            (pair for batch in batches for pair in batch),
            window=window,
        )
        for batch in batches:
            start = time.perf_counter()
            items = [next(loaded) for _ in batch]
            seconds["read_wait"] = seconds.get("read_wait", 0.0) + time.perf_counter() - start
            yield items


def embed_batch(
    items: Sequence[Loaded], embedder: Embedder, labeler: Labeler, settings: Settings
) -> tuple[list[AssetDocument], list[QuarantineRecord], float]:
    """Mapper stage: documents for the decodable items (one model call), quarantine records for
    the others, and the seconds the model and the labeler took. Writes nothing."""
    quarantined = [
        QuarantineRecord(
            id=item.asset.id,
            uri=item.asset.uri,
            sha256=item.sha256,
            fingerprint=item.fingerprint,
            size_bytes=item.asset.size_bytes,
            mtime_ns=item.asset.mtime_ns,
            reason=item.error,
        )
        for item in items
        if item.error is not None
    ]
    good = [i for i in items if i.pixels is not None]
    if not good:
        return [], quarantined, 0.0
    start = time.perf_counter()
    prediction = embedder.predict(np.stack([i.pixels for i in good]))
    labels = labeler.detect_batch(
        prediction.probabilities,
        min_confidence=settings.label_min_confidence,
        max_labels=settings.label_max_labels,
    )
    seconds = time.perf_counter() - start
    docs = [
        AssetDocument(
            id=item.asset.id,
            uri=item.asset.uri,
            sha256=item.sha256,
            fingerprint=item.fingerprint,
            size_bytes=item.asset.size_bytes,
            mtime_ns=item.asset.mtime_ns,
            width=item.width,
            height=item.height,
            format=item.format,
            title=item.asset.title,
            description=item.asset.description,
            keywords=list(item.asset.keywords),
            metadata=dict(item.asset.metadata),
            labels=item_labels,
            embedding=vector.tolist(),
            model=embedder.spec.name,
            model_version=embedder.spec.version,
        )
        for item, vector, item_labels in zip(good, prediction.embeddings, labels, strict=True)
    ]
    return docs, quarantined, seconds


def process_batch(
    items: list[Loaded],
    stored: Mapping[str, StoredState],
    store: Store,
    embedder: Embedder,
    labeler: Labeler,
    settings: Settings,
) -> BatchResult:
    """Mapper + writer for one batch of loaded assets. Idempotent: upserts by id."""
    docs, quarantined, embed_seconds = embed_batch(items, embedder, labeler, settings)
    result = BatchResult(unchanged=sum(i.unchanged for i in items), quarantined=quarantined)
    if docs:
        result.seconds["embed"] = embed_seconds
    for doc in docs:
        previous = stored.get(doc.id)
        if previous is None or previous.quarantined:
            result.new += 1
        else:
            result.updated += 1
    start = time.perf_counter()
    store.upsert(docs)
    store.quarantine(result.quarantined)
    result.seconds["write"] = time.perf_counter() - start
    return result


def plan_run(
    source: Path,
    manifest: Path | None = None,
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    run_id: str | None = None,
) -> RunPlan:
    """Discover stage: scan ``source`` (and the manifest) and compare it with the store that
    the alias names (or ``store``). Reads files' metadata only, never their pixels."""
    settings = settings or get_settings()
    with _using(store, None, settings) as target:
        stored = target.states()
        work = discover.plan(discover.scan(Path(source), manifest), stored, Path(source))
        return RunPlan(
            run_id=run_id or uuid.uuid4().hex,
            source=discover.path_to_uri(Path(source)),
            model=target.model_id,
            todo=[AssetRef(asset=asset, previous=stored.get(asset.id)) for asset in work.todo],
            deleted=work.deleted,
            unchanged=work.unchanged,
        )


def plan_batches(
    todo: Sequence[T], batch_size: int, max_batches: int | None = None
) -> list[list[T]]:
    """Consecutive batches of ``batch_size`` items, larger if that would make more than
    ``max_batches`` of them (Airflow refuses to map more tasks than its ``max_map_length``)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if max_batches is not None:
        batch_size = max(batch_size, -(-len(todo) // max_batches))
    return [list(todo[i : i + batch_size]) for i in range(0, len(todo), batch_size)]


def run_batches(
    batches: Sequence[Sequence[AssetRef]],
    model_id: str,
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
) -> Iterator[BatchResult]:
    """Read, embed, label and write ``batches`` into the index of ``model_id``, yielding each
    batch's result as it is written (the reader keeps decoding the next batch meanwhile)."""
    from pipeline.embed import get_embedder
    from pipeline.label import get_labeler
    from pipeline.store import model_name

    settings = settings or get_settings()
    embedder = embedder or get_embedder(model_name(model_id))
    if embedder.model_id != model_id:
        raise ValueError(f"embedder {embedder.model_id} cannot write into the index of {model_id}")
    labeler = get_labeler()
    with _using(store, model_id, settings) as target:
        target.ensure(embedder.spec.dim)
        seconds: dict[str, float] = {}
        pairs = [[(ref.asset, ref.previous) for ref in batch] for batch in batches]
        for refs, items in zip(
            batches, read_batches(pairs, embedder, settings, seconds), strict=True
        ):
            stored = {ref.asset.id: ref.previous for ref in refs if ref.previous is not None}
            result = process_batch(items, stored, target, embedder, labeler, settings)
            result.seconds["read_wait"] = seconds.pop("read_wait", 0.0)
            yield result


def run_batch(
    batch: Sequence[AssetRef],
    model_id: str,
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
) -> BatchResult:
    """One batch of a plan, as an Airflow mapped task runs it, through the model
    ``settings.batch_size`` images at a time. Safe to retry: documents and quarantine records
    are upserted by id, and the counts come from the states recorded in the plan."""
    settings = settings or get_settings()
    chunks = plan_batches(batch, settings.batch_size)
    merged = BatchResult()
    for result in run_batches(chunks, model_id, settings, store=store, embedder=embedder):
        merged.new += result.new
        merged.updated += result.updated
        merged.unchanged += result.unchanged
        merged.quarantined += result.quarantined
        for stage, seconds in result.seconds.items():
            merged.seconds[stage] = merged.seconds.get(stage, 0.0) + seconds
    return merged


class IncompleteRun(RuntimeError):
    """Some batches of a run did not land (their tasks failed for good, e.g. while the cluster
    was down). The message says which did and which did not."""


def landed_results(
    batches: Sequence[Sequence[AssetRef]], landed: Mapping[int, BatchResult]
) -> list[BatchResult]:
    """The results of every batch of a run, in order, given those that landed by batch index
    (an Airflow run maps one task per batch, and any of them can fail for good).

    Raises ``IncompleteRun`` when a batch is missing, before the run deletes or records
    anything: the landed batches' documents are in the index, each one whole (upserted by
    id), and the next run plans again and embeds only what did not land."""
    missing = [i for i in range(len(batches)) if i not in landed]
    if not missing:
        return [landed[i] for i in range(len(batches))]
    lines = [f"{len(missing)} of {len(batches)} batches did not land:"]
    for i in missing:
        lines.append(f"  batch {i}: {len(batches[i])} images, first {batches[i][0].asset.uri}")
    lines.append(f"{len(batches) - len(missing)} landed:")
    for i, result in sorted(landed.items()):
        lines.append(
            f"  batch {i}: {len(batches[i])} images ({result.new} new, {result.updated} "
            f"updated, {len(result.quarantined)} quarantined)"
        )
    lines.append(
        "Nothing was deleted and the run was not recorded; run the ingest again: it embeds "
        "only what did not land."
    )
    raise IncompleteRun("\n".join(lines))


def remove_deleted(
    plan: RunPlan, settings: Settings | None = None, *, store: Store | None = None
) -> int:
    """Delete the documents (and quarantine records) of files that are gone. Idempotent."""
    if not plan.deleted:
        return 0
    with _using(store, plan.model, settings or get_settings()) as target:
        return target.delete(plan.deleted)


def finish_run(
    plan: RunPlan,
    results: Iterable[BatchResult],
    deleted: int,
    settings: Settings | None = None,
    *,
    store: Store | None = None,
) -> IngestSummary:
    """Summarise the run, make the first index ever built the active one, compact the index
    after changes and record the summary in the store (where Dashboards read it). An idle run
    records nothing: it wrote nothing. Safe to retry: the run is recorded under its id."""
    summary = IngestSummary(
        run_id=plan.run_id,
        source=plan.source,
        started_at=plan.started_at,
        unchanged=plan.unchanged,
        deleted=deleted,
        model=plan.model,
    )
    for result in results:
        _accumulate(summary, result)
    changed = bool(summary.new or summary.updated or summary.deleted)
    with _using(store, plan.model, settings or get_settings()) as target:
        if target.active_model() is None and target.count():
            target.activate()  # the first index built becomes the one searches use
        if changed:
            start = time.perf_counter()
            target.optimize()
            summary.stage_seconds["optimize"] = time.perf_counter() - start
        summary.duration_s = round((datetime.now(UTC) - plan.started_at).total_seconds(), 3)
        embedded = summary.new + summary.updated
        summary.images_per_s = round(embedded / summary.duration_s, 2) if summary.duration_s else 0
        summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
        if changed or summary.quarantined:
            target.record_run(summary)
    return summary


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
    from pipeline.store import open_store

    settings = settings or get_settings()
    own_store = store is None
    # The active model version (the alias), unless a caller picks a store or an embedder.
    store = store or open_store(embedder.model_id if embedder else None, settings)
    try:
        plan = plan_run(source, manifest, settings, store=store)
        batches = plan_batches(plan.todo, settings.batch_size)
        total, done, results = len(plan.todo), 0, []
        if on_progress:
            on_progress(0, total)
        # run_batches loads the model on its first batch: an unchanged library never imports
        # TensorFlow.
        running = run_batches(batches, plan.model, settings, store=store, embedder=embedder)
        for batch, result in zip(batches, running if batches else (), strict=True):
            results.append(result)
            done += len(batch)
            if on_progress:
                on_progress(done, total)
        deleted = remove_deleted(plan, settings, store=store)
        return finish_run(plan, results, deleted, settings, store=store)
    finally:
        if own_store:
            store.close()


@contextmanager
def _using(store: Store | None, model_id: str | None, settings: Settings) -> Iterator[Store]:
    """``store`` as given (the caller closes it), or one opened for ``model_id`` (``None``:
    the alias) and closed afterwards."""
    if store is not None:
        yield store
        return
    from pipeline.store import open_store

    with open_store(model_id, settings) as opened:
        yield opened


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
