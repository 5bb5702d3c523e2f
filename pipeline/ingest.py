"""Ingestion: discover -> decode -> embed -> label -> write, incrementally.

A small runner of three stages, shaped like clip-retrieval's inference (reader -> mapper ->
writer), each timed per batch so a slow stage shows up in the run's summary:

* **reader** (``read``): threads read, hash, decode and resize files ahead of the model, up to
  two batches ahead, across batch boundaries;
* **mapper** (``embed``): one batched model call per batch, giving embeddings and ImageNet
  probabilities, turned into labels; files that could not be decoded become quarantine records;
* **writer**: ``IndexWriter`` upserts the documents into one model version's index and keeps
  the quarantine log in step (rollouts bring their own writer, ``pipeline/rollout.py``).

A run is planned first and executed second, so the same code serves one process and many:
``plan_run`` decides everything (what to embed, what to delete) into a JSON-serialisable
``RunPlan``; ``plan_batches`` splits its work; ``run_batch`` does one batch (an Airflow mapped
task; idempotent, because writes are upserts by id); ``remove_deleted`` and ``finish_run`` close
the run. ``ingest`` chains the same functions in one process for the CLI.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from pipeline import discover
from pipeline.decode import DecodeError, decode_image
from pipeline.discover import SourceAsset
from pipeline.document import (
    AliasSwitch,
    AssetDocument,
    IngestSummary,
    QuarantinedItem,
    QuarantineRecord,
    StoredState,
)
from pipeline.embed import Embedder, get_embedder
from pipeline.label import Labeler, get_labeler
from pipeline.library import Library, model_name
from pipeline.settings import Settings, get_settings
from pipeline.store.base import BulkWriteError, DocumentIndex, QuarantineLog

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Loaded:
    """A source asset after the reader stage: model-ready pixels, or why it has none."""

    asset: SourceAsset
    previous: StoredState | None = None
    sha256: str = ""
    fingerprint: str = ""
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    error: str | None = None
    unchanged: bool = False  # touched (new mtime) but same content and metadata


@dataclass
class Mapped:
    """A batch after the mapper stage: documents to write, records of what failed."""

    items: list[Loaded]
    docs: list[AssetDocument]
    failed: list[QuarantineRecord]


class BatchResult(BaseModel):
    """What one batch did; JSON-serialisable, so a mapped task can return it as XCom."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: list[QuarantineRecord] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.quarantined += other.quarantined
        for stage, seconds in other.seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


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


# -- reader ------------------------------------------------------------------------------------


def load(ref: AssetRef, embedder: Embedder, settings: Settings) -> Loaded:
    """Read one file once, hash it, decode it safely and resize it for the model."""
    asset = ref.asset
    loaded = Loaded(asset, ref.previous, fingerprint=asset.fingerprint(""))
    if not asset.exists:
        loaded.error = "file not found"
        return loaded
    if asset.size_bytes > settings.max_file_bytes:
        loaded.error = f"file too large: {asset.size_bytes} bytes (limit {settings.max_file_bytes})"
        return loaded
    try:
        data = asset.path.read_bytes()
    except OSError as exc:
        loaded.error = f"cannot read: {exc}"
        return loaded
    loaded.sha256 = hashlib.sha256(data).hexdigest()
    loaded.fingerprint = asset.fingerprint(loaded.sha256)
    if ref.previous is not None and ref.previous.fingerprint == loaded.fingerprint:
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


def read(
    batches: Sequence[Sequence[AssetRef]], embedder: Embedder, settings: Settings
) -> Iterator[tuple[list[Loaded], float]]:
    """Reader stage over whole batches: decode threads stay up to two batches ahead of the
    model. Yields each batch with the seconds the caller waited for it."""
    window = 2 * max(map(len, batches), default=1)
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode") as pool:
        loaded = _prefetch(
            pool,
            lambda ref: load(ref, embedder, settings),
            (ref for batch in batches for ref in batch),
            window=window,
        )
        for batch in batches:
            start = time.perf_counter()
            items = [next(loaded) for _ in batch]
            yield items, time.perf_counter() - start


# -- mapper ------------------------------------------------------------------------------------


def embed(items: list[Loaded], embedder: Embedder, labeler: Labeler, settings: Settings) -> Mapped:
    """Documents for the decodable items (one model call), quarantine records for the others.
    Writes nothing."""
    failed = [_record(item, item.error) for item in items if item.error is not None]
    good = [i for i in items if i.pixels is not None]
    if not good:
        return Mapped(items, [], failed)
    prediction = embedder.predict(np.stack([i.pixels for i in good]))
    labels = labeler.detect_batch(
        prediction.probabilities,
        min_confidence=settings.label_min_confidence,
        max_labels=settings.label_max_labels,
    )
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
    return Mapped(items, docs, failed)


def _record(item: Loaded, reason: str) -> QuarantineRecord:
    return QuarantineRecord(
        id=item.asset.id,
        uri=item.asset.uri,
        sha256=item.sha256,
        fingerprint=item.fingerprint,
        size_bytes=item.asset.size_bytes,
        mtime_ns=item.asset.mtime_ns,
        reason=reason,
    )


# -- writer ------------------------------------------------------------------------------------


class IndexWriter:
    """Writes mapped batches into one model version's index and keeps the quarantine log in
    step: written documents leave it, failed files enter it (and leave the index)."""

    def __init__(self, index: DocumentIndex, quarantine: QuarantineLog) -> None:
        self.index = index
        self.quarantine = quarantine

    def __call__(self, batch: Mapped) -> BatchResult:
        result = BatchResult(unchanged=sum(i.unchanged for i in batch.items))
        failed = list(batch.failed)
        docs = batch.docs
        try:
            self.index.upsert(docs)
        except BulkWriteError as exc:
            if exc.transient or not exc.rejected:
                raise  # the index is busy or away: fail the batch, a retry or re-run writes it
            # The index refused these documents for good: quarantine them with its reason.
            refused = exc.rejected
            items = {i.asset.id: i for i in batch.items}
            failed += [
                _record(items[d.id], f"rejected by the index: {refused[d.id]}")
                for d in docs
                if d.id in refused
            ]
            docs = [d for d in docs if d.id not in refused]
        previous = {i.asset.id: i.previous for i in batch.items}
        quarantined = {i for i, state in previous.items() if state and state.quarantined}
        indexed = {i for i, state in previous.items() if state and not state.quarantined}
        self.quarantine.remove([d.id for d in docs if d.id in quarantined])
        self.quarantine.add(failed)
        self.index.delete([r.id for r in failed if r.id in indexed])  # a stale document
        result.new = sum(d.id not in indexed for d in docs)
        result.updated = len(docs) - result.new
        result.quarantined = failed
        return result


class Timed(Protocol):
    """A writer's result, which the runner adds the batch's stage timings to."""

    seconds: dict[str, float]


W = TypeVar("W", bound=Timed)


def run_stages(
    batches: Sequence[Sequence[AssetRef]],
    embedder: Embedder,
    settings: Settings,
    write: Callable[[Mapped], W],
) -> Iterator[W]:
    """The runner: reader -> mapper -> writer over ``batches``, each stage timed per batch,
    yielding each batch's result once it is written (the reader keeps decoding the next batch
    meanwhile)."""

    labeler = get_labeler()
    for number, (items, read_wait) in enumerate(read(batches, embedder, settings), 1):
        start = time.perf_counter()
        mapped = embed(items, embedder, labeler, settings)
        embedded = time.perf_counter()
        result = write(mapped)
        timings = {
            "read_wait": read_wait,
            "embed": embedded - start,
            "write": time.perf_counter() - embedded,
        }
        result.seconds.update(timings)
        log.debug(
            "batch %d: %d images, %s",
            number,
            len(items),
            ", ".join(f"{stage} {s:.2f} s" for stage, s in timings.items()),
        )
        yield result


# -- runs ---------------------------------------------------------------------------------------


def plan_run(
    source: Path,
    manifest: Path | None = None,
    settings: Settings | None = None,
    *,
    library: Library | None = None,
    model: str | None = None,
    run_id: str | None = None,
) -> RunPlan:
    """Discover stage: scan ``source`` (and the manifest) and compare it with the index of
    ``model`` (default: the active one). Reads files' metadata only, never their pixels."""
    settings = settings or get_settings()
    with _opened(library, settings) as lib:
        index = lib.index(model)
        stored = lib.states(index)
        work = discover.plan(discover.scan(Path(source), manifest), stored, Path(source))
        return RunPlan(
            run_id=run_id or uuid.uuid4().hex,
            source=discover.path_to_uri(Path(source)),
            model=index.model_id,
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
    library: Library | None = None,
    embedder: Embedder | None = None,
) -> Iterator[BatchResult]:
    """Read, embed, label and write ``batches`` into the index of ``model_id``, yielding each
    batch's result as it is written."""

    settings = settings or get_settings()
    embedder = embedder or get_embedder(model_name(model_id))
    if embedder.model_id != model_id:
        raise ValueError(f"embedder {embedder.model_id} cannot write into the index of {model_id}")
    with _opened(library, settings) as lib:
        index = lib.index(model_id)
        index.ensure(embedder.spec.dim)
        writer = IndexWriter(index, lib.quarantine)
        yield from run_stages(batches, embedder, settings, writer)


def run_batch(
    batch: Sequence[AssetRef],
    model_id: str,
    settings: Settings | None = None,
    *,
    library: Library | None = None,
    embedder: Embedder | None = None,
) -> BatchResult:
    """One batch of a plan, as an Airflow mapped task runs it, through the model
    ``settings.batch_size`` images at a time. Safe to retry: documents and quarantine records
    are upserted by id, and the counts come from the states recorded in the plan."""
    settings = settings or get_settings()
    chunks = plan_batches(batch, settings.batch_size)
    merged = BatchResult()
    for result in run_batches(chunks, model_id, settings, library=library, embedder=embedder):
        merged.add(result)
    return merged


def remove_deleted(
    plan: RunPlan, settings: Settings | None = None, *, library: Library | None = None
) -> int:
    """Delete the documents (and quarantine records) of files that are gone. Idempotent."""
    if not plan.deleted:
        return 0
    with _opened(library, settings or get_settings()) as lib:
        lib.quarantine.remove(plan.deleted)
        return lib.index(plan.model).delete(plan.deleted)


def finish_run(
    plan: RunPlan,
    results: Iterable[BatchResult],
    deleted: int,
    settings: Settings | None = None,
    *,
    library: Library | None = None,
) -> IngestSummary:
    """Summarise the run, make the first index ever built the active one, bring the index's
    search structures up to date and record the summary in the run log (where Dashboards and
    ``lookalike runs`` read it). An idle run records nothing: it wrote nothing. Safe to retry:
    the run is recorded under its id."""
    summary = IngestSummary(
        run_id=plan.run_id,
        source=plan.source,
        started_at=plan.started_at,
        unchanged=plan.unchanged,
        deleted=deleted,
        model=plan.model,
    )
    merged = BatchResult()
    for result in results:
        merged.add(result)
    summary.new, summary.updated = merged.new, merged.updated
    summary.unchanged += merged.unchanged
    summary.quarantined = [QuarantinedItem(uri=r.uri, reason=r.reason) for r in merged.quarantined]
    summary.stage_seconds = dict(merged.seconds)
    changed = bool(summary.new or summary.updated or summary.deleted)
    with _opened(library, settings or get_settings()) as lib:
        index = lib.index(plan.model)
        if lib.catalogue.active() is None and index.count():
            # The first index built becomes the one searches use.
            lib.runs.record(
                AliasSwitch(
                    model=plan.model,
                    previous=lib.catalogue.switch(plan.model),
                    trigger="first ingest",
                )
            )
        start = time.perf_counter()
        index.optimize()  # also repairs what an interrupted run left unbuilt
        summary.stage_seconds["optimize"] = time.perf_counter() - start
        summary.duration_s = round((datetime.now(UTC) - plan.started_at).total_seconds(), 3)
        embedded = summary.new + summary.updated
        summary.images_per_s = round(embedded / summary.duration_s, 2) if summary.duration_s else 0
        summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
        if changed or summary.quarantined:
            lib.runs.record(summary)
    return summary


def ingest(
    source: Path,
    manifest: Path | None = None,
    *,
    library: Library | None = None,
    embedder: Embedder | None = None,
    settings: Settings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Bring the index in line with ``source``: index new and changed assets, quarantine the
    undecodable ones, delete assets whose files are gone. Writes into the active model
    version's index, or ``embedder``'s. ``on_progress(done, total)`` is called after each
    batch."""
    settings = settings or get_settings()
    with _opened(library, settings) as lib:
        model = embedder.model_id if embedder else None
        plan = plan_run(source, manifest, settings, library=lib, model=model)
        batches = plan_batches(plan.todo, settings.batch_size)
        total, done, results = len(plan.todo), 0, []
        if on_progress:
            on_progress(0, total)
        if batches:  # only then is the model loaded: an unchanged library never imports TF
            for batch, result in zip(
                batches,
                run_batches(batches, plan.model, settings, library=lib, embedder=embedder),
                strict=True,
            ):
                results.append(result)
                done += len(batch)
                if on_progress:
                    on_progress(done, total)
        deleted = remove_deleted(plan, settings, library=lib)
        return finish_run(plan, results, deleted, settings, library=lib)


@contextmanager
def _opened(library: Library | None, settings: Settings) -> Iterator[Library]:
    """``library`` as given (the caller closes it), or one opened now and closed after."""
    if library is not None:
        yield library
        return
    with Library.open(settings) as opened:
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
