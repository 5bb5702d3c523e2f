"""Ingestion: discover -> decode -> embed -> label -> write, incrementally.

Shaped like clip-retrieval's inference split: a *reader* (worker processes that read, hash,
decode and resize files ahead of the model, each file under a time limit), a *mapper* (one
batched model call that yields embeddings and ImageNet probabilities, turned into labels) and a
*writer* (one upsert per batch). Each stage is timed per batch so a slow stage shows up in the
summary.

A run is planned first and executed second, so the same code serves one process and many:
``plan_run`` decides everything (what to embed, what to delete) into a JSON-serialisable
``RunPlan``; ``plan_batches`` splits its work; ``run_batch`` does one batch (an Airflow mapped
task; idempotent, because writes are upserts by id); ``remove_deleted`` and ``finish_run`` close
the run. ``ingest`` chains the same functions in one process for the CLI.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from pipeline import discover
from pipeline.decode import DecodePool, PreparedFile
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
    from pipeline.backbones import ModelSpec
    from pipeline.embed import Embedder
    from pipeline.label import Labeler
    from pipeline.store import Store

T = TypeVar("T")
R = TypeVar("R")

# How many recent runs finish_run looks through for ones that were killed.
_RUNS_CHECKED = 100


@dataclass(frozen=True)
class Loaded:
    """A source asset after the reader stage: its fingerprint, and what the decode worker made
    of its file (model-ready pixels, or why there are none; ``file.unchanged``: touched, new
    mtime, but the same content)."""

    asset: SourceAsset
    fingerprint: str
    file: PreparedFile


class BatchResult(BaseModel):
    """What one batch did; JSON-serialisable, so a mapped task can return it as XCom."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: list[QuarantineRecord] = Field(default_factory=list)
    quarantined_earlier: int = Field(
        0, description="Unchanged files (touched, same content) that stay quarantined."
    )
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
    quarantined_earlier: int = Field(
        0, description="Unchanged files that an earlier run quarantined."
    )

    @property
    def has_work(self) -> bool:
        return bool(self.todo or self.deleted)


def _accumulate(summary: IngestSummary, batch: BatchResult) -> None:
    summary.new += batch.new
    summary.updated += batch.updated
    summary.unchanged += batch.unchanged
    summary.quarantined_earlier += batch.quarantined_earlier
    summary.quarantined += [QuarantinedItem(uri=r.uri, reason=r.reason) for r in batch.quarantined]
    for stage, seconds in batch.seconds.items():
        summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds


def _start_loading(
    pool: DecodePool,
    asset: SourceAsset,
    state: StoredState | None,
    spec: ModelSpec,
    settings: Settings,
) -> Callable[[], Loaded]:
    """Reader stage for one file: hand it to a decode worker (read once, hash, decode safely,
    resize for the model) and return how to collect the result. A file the scan found
    unreadable never reaches a worker."""
    if asset.problem is not None:
        loaded = Loaded(asset, asset.fingerprint(""), PreparedFile(error=asset.problem))
        return lambda: loaded
    unchanged_metadata = state is not None and state.fingerprint == asset.fingerprint(state.sha256)
    future = pool.submit(
        asset.path,
        max_bytes=settings.max_file_bytes,
        max_pixels=settings.max_image_pixels,
        spec=spec,
        expected_sha256=state.sha256 if unchanged_metadata else None,
    )

    def collect() -> Loaded:
        prepared = pool.result(future, asset.path, settings.max_file_bytes)
        return Loaded(asset, asset.fingerprint(prepared.sha256), prepared)

    return collect


def read_batches(
    batches: Sequence[Sequence[tuple[SourceAsset, StoredState | None]]],
    spec: ModelSpec,
    settings: Settings,
    seconds: dict[str, float],
) -> Iterator[list[Loaded]]:
    """Reader stage over whole batches: decode workers stay up to two batches ahead of the
    model, across batch boundaries. Time spent waiting on them adds to ``seconds["read_wait"]``.
    """
    window = 2 * max(map(len, batches), default=1)
    with DecodePool(settings.decode_workers, settings.decode_timeout_s) as pool:
        loaded = _prefetch(
            lambda pair: _start_loading(pool, pair[0], pair[1], spec, settings),
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
            sha256=item.file.sha256,
            fingerprint=item.fingerprint,
            size_bytes=item.asset.size_bytes,
            mtime_ns=item.asset.mtime_ns,
            reason=item.file.error,
        )
        for item in items
        if item.file.error is not None
    ]
    good = [i for i in items if i.file.pixels is not None]
    if not good:
        return [], quarantined, 0.0
    start = time.perf_counter()
    prediction = embedder.predict(np.stack([i.file.pixels for i in good]))
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
            sha256=item.file.sha256,
            fingerprint=item.fingerprint,
            size_bytes=item.asset.size_bytes,
            mtime_ns=item.asset.mtime_ns,
            width=item.file.width,
            height=item.file.height,
            format=item.file.format,
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
    result = BatchResult(
        unchanged=sum(i.file.unchanged for i in items),
        quarantined=quarantined,
        quarantined_earlier=sum(
            i.file.unchanged and (state := stored.get(i.asset.id)) is not None and state.quarantined
            for i in items
        ),
    )
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
    the alias names (or ``store``). Reads files' metadata only, never their pixels. A run with
    work to do is recorded as "running" right away: if it never finishes, it still shows up."""
    settings = settings or get_settings()
    with _using(store, None, settings) as target:
        stored = target.states()
        assets = discover.scan(Path(source), manifest, max_file_bytes=settings.max_file_bytes)
        work = discover.plan(assets, stored, Path(source))
        plan = RunPlan(
            run_id=run_id or uuid.uuid4().hex,
            source=discover.path_to_uri(Path(source)),
            model=target.model_id,
            todo=[AssetRef(asset=asset, previous=stored.get(asset.id)) for asset in work.todo],
            deleted=work.deleted,
            unchanged=work.unchanged,
            quarantined_earlier=work.quarantined_earlier,
        )
        if plan.has_work:
            target.record_run(_summary(plan, outcome="running"))
        return plan


def _summary(plan: RunPlan, **fields: object) -> IngestSummary:
    return IngestSummary(
        run_id=plan.run_id,
        source=plan.source,
        started_at=plan.started_at,
        unchanged=plan.unchanged,
        quarantined_earlier=plan.quarantined_earlier,
        model=plan.model,
        **fields,
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
            batches, read_batches(pairs, embedder.spec, settings, seconds), strict=True
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
        merged.quarantined_earlier += result.quarantined_earlier
        for stage, seconds in result.seconds.items():
            merged.seconds[stage] = merged.seconds.get(stage, 0.0) + seconds
    return merged


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
    """Summarise the run, make the first index ever built the active one, bring the index's
    files and search indexes up to date and record the summary in the store (where Dashboards
    read it). Safe to retry: the run is recorded under its id.

    It also repairs what an earlier run over the same source left when it was killed: its
    record ("running") becomes "interrupted", and the store's optimise step runs whatever this
    run changed (it is a no-op on a store in order), so indexes a killed run never built are
    built now. An idle run on a store in order records nothing: it wrote nothing."""
    summary = _summary(plan, deleted=deleted)
    for result in results:
        _accumulate(summary, result)
    summary.outcome = (
        "quarantined" if summary.quarantined or summary.quarantined_earlier else "indexed"
    )
    with _using(store, plan.model, settings or get_settings()) as target:
        if target.active_model() is None and target.count():
            target.activate()  # the first index built becomes the one searches use
        start = time.perf_counter()
        target.optimize()
        summary.stage_seconds["optimize"] = time.perf_counter() - start
        interrupted = _mark_interrupted(target, plan)
        summary.duration_s = round((datetime.now(UTC) - plan.started_at).total_seconds(), 3)
        embedded = summary.new + summary.updated
        summary.images_per_s = round(embedded / summary.duration_s, 2) if summary.duration_s else 0
        summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
        if plan.has_work or summary.quarantined or interrupted:
            target.record_run(summary)
    return summary


def _mark_interrupted(store: Store, plan: RunPlan) -> int:
    """Mark earlier runs over ``plan``'s source still recorded as "running" as "interrupted"
    (this run did their work); return how many there were."""
    stale = [
        run
        for run in store.runs(_RUNS_CHECKED)
        if run.outcome == "running"
        and run.source == plan.source
        and run.run_id != plan.run_id
        and run.started_at < plan.started_at
    ]
    for run in stale:
        store.record_run(run.model_copy(update={"outcome": "interrupted"}))
    return len(stale)


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
    start: Callable[[T], Callable[[], R]], items: Iterable[T], window: int
) -> Iterator[R]:
    """Start ``items`` in order (``start`` returns how to collect each one's result) and yield
    their results in order, with at most ``window`` in flight, so the readers stay ahead of the
    model without holding a whole library in memory."""
    pending: deque[Callable[[], R]] = deque()
    for item in items:
        pending.append(start(item))
        if len(pending) >= window:
            yield pending.popleft()()
    while pending:
        yield pending.popleft()()
