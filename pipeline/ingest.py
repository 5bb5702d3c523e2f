"""Ingestion: discover -> decode -> embed -> label -> write, incrementally.

A small runner of three stages, shaped like clip-retrieval's inference (reader -> mapper ->
writer), each timed per batch so a slow stage shows up in the run's summary:

* **reader** (``read``): worker processes (``pipeline.decode.DecodePool``) read, hash, decode
  and resize files ahead of the model, each file under a time limit, up to two batches ahead,
  across batch boundaries;
* **mapper** (``embed``): one batched model call per batch, giving embeddings and ImageNet
  probabilities, turned into labels, then custom tags (``pipeline/tags.py``: no model call);
  files that could not be decoded become quarantine records;
* **writer**: ``IndexWriter`` upserts the documents into one model version's index and keeps
  the quarantine log in step (rollouts bring their own writer, ``pipeline/rollout.py``), in a
  thread one batch behind the mapper, so writing overlaps the next model call.

A run is planned first and executed second, so the same code serves one process and many:
``plan_run`` decides everything (what to embed, what to delete) into a JSON-serialisable
``RunPlan`` and records the run as "running"; ``plan_batches`` splits its work; ``run_batch``
does one batch (an Airflow mapped task; idempotent, because writes are upserts by id);
``remove_deleted`` and ``finish_run`` close the run (and repair what a killed run left: its
record, unbuilt indexes). ``ingest`` chains the same functions in one process for the CLI.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, Field

from pipeline import discover
from pipeline.backbones import ModelSpec
from pipeline.decode import DecodePool, PreparedFile
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
from pipeline.library import Library
from pipeline.settings import Settings, get_settings
from pipeline.store.base import BulkWriteError, DocumentIndex, QuarantineLog
from pipeline.tags import Tagger

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# How many recent runs finish_run looks through for ones that were killed.
_RUNS_CHECKED = 100


@dataclass(frozen=True)
class Loaded:
    """A source asset after the reader stage: the state the store held for it, its fingerprint
    and what the decode worker made of its file (model-ready pixels, or why there are none;
    ``file.unchanged``: touched, new mtime, but the same content)."""

    asset: SourceAsset
    previous: StoredState | None
    fingerprint: str
    file: PreparedFile


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
    quarantined_earlier: int = Field(
        0, description="Unchanged files (touched, same content) that stay quarantined."
    )
    seconds: dict[str, float] = Field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.quarantined += other.quarantined
        self.quarantined_earlier += other.quarantined_earlier
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
    quarantined_earlier: int = Field(
        0, description="Unchanged files that an earlier run quarantined."
    )

    @property
    def has_work(self) -> bool:
        return bool(self.todo or self.deleted)


# -- reader ------------------------------------------------------------------------------------


def _start_loading(
    pool: DecodePool, ref: AssetRef, spec: ModelSpec, settings: Settings
) -> Callable[[], Loaded]:
    """Reader stage for one file: hand it to a decode worker (read once, hash, decode safely,
    resize for the model) and return how to collect the result. A file the scan found
    unreadable never reaches a worker; one whose metadata did not change is hashed there and
    decoded only if its content did."""
    asset, state = ref.asset, ref.previous
    if asset.problem is not None:
        loaded = Loaded(asset, state, asset.fingerprint(""), PreparedFile(error=asset.problem))
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
        return Loaded(asset, state, asset.fingerprint(prepared.sha256), prepared)

    return collect


def read(
    batches: Sequence[Sequence[AssetRef]], spec: ModelSpec, settings: Settings
) -> Iterator[tuple[list[Loaded], float]]:
    """Reader stage over whole batches: decode workers stay up to two batches ahead of the
    model. Yields each batch with the seconds the caller waited for it."""
    window = 2 * max(map(len, batches), default=1)
    with DecodePool(settings.decode_workers, settings.decode_timeout_s) as pool:
        loaded = _prefetch(
            lambda ref: _start_loading(pool, ref, spec, settings),
            (ref for batch in batches for ref in batch),
            window=window,
        )
        for batch in batches:
            start = time.perf_counter()
            items = [next(loaded) for _ in batch]
            yield items, time.perf_counter() - start


# -- mapper ------------------------------------------------------------------------------------


def embed(
    items: list[Loaded],
    embedder: Embedder,
    labeler: Labeler,
    settings: Settings,
    tagger: Tagger | None = None,
) -> Mapped:
    """Documents for the decodable items (one model call, then the custom tags of ``tagger``
    from their embeddings and labels), quarantine records for the others. Writes nothing."""
    failed = [_record(item, item.file.error) for item in items if item.file.error is not None]
    good = [i for i in items if i.file.pixels is not None]
    if not good:
        return Mapped(items, [], failed)
    prediction = embedder.predict(np.stack([i.file.pixels for i in good]))
    labels = labeler.detect_batch(
        prediction.probabilities,
        min_confidence=settings.label_min_confidence,
        max_labels=settings.label_max_labels,
    )
    docs = [
        AssetDocument(
            **_file_fields(item),
            width=item.file.width,
            height=item.file.height,
            format=item.file.format,
            title=item.asset.title,
            description=item.asset.description,
            keywords=list(item.asset.keywords),
            metadata=dict(item.asset.metadata),
            labels=item_labels,
            embedding=vector.tolist(),
            regions=embedder.regions_of(
                None if prediction.regions is None else prediction.regions[n],
                item.file.width,
                item.file.height,
            ),
            model=embedder.spec.name,
            model_version=embedder.spec.version,
        )
        for n, (item, vector, item_labels) in enumerate(
            zip(good, prediction.embeddings, labels, strict=True)
        )
    ]
    return Mapped(items, tagger(docs) if tagger else docs, failed)


def _file_fields(item: Loaded) -> dict[str, Any]:
    """What a document and a quarantine record both say about the file."""
    return {
        "id": item.asset.id,
        "uri": item.asset.uri,
        "sha256": item.file.sha256,
        "fingerprint": item.fingerprint,
        "size_bytes": item.asset.size_bytes,
        "mtime_ns": item.asset.mtime_ns,
    }


def _record(item: Loaded, reason: str) -> QuarantineRecord:
    return QuarantineRecord(**_file_fields(item), reason=reason)


# -- writer ------------------------------------------------------------------------------------


class IndexWriter:
    """Writes mapped batches into one model version's index and keeps the quarantine log in
    step: written documents leave it, failed files enter it (and leave the index)."""

    def __init__(self, index: DocumentIndex, quarantine: QuarantineLog) -> None:
        self.index = index
        self.quarantine = quarantine

    def __call__(self, batch: Mapped) -> BatchResult:
        result = BatchResult(
            unchanged=sum(i.file.unchanged for i in batch.items),
            quarantined_earlier=sum(
                i.file.unchanged and i.previous is not None and i.previous.quarantined
                for i in batch.items
            ),
        )
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
    yielding each batch's result once it is written, in order.

    The writer runs in a thread of its own, one batch behind the mapper: while batch k is
    written (documents serialised, upserted), the model already embeds batch k + 1 (the model
    releases the GIL), and the decode workers read further ahead. A batch whose write fails
    stops the run with that error; batches written before it are yielded.
    """

    labeler = get_labeler()
    tagger = Tagger.load(embedder.model_id, settings)

    def written(mapped: Mapped, timings: dict[str, float]) -> W:
        start = time.perf_counter()
        result = write(mapped)
        timings["write"] = time.perf_counter() - start
        result.seconds.update(timings)
        return result

    def finish(number: int, future: Future[W]) -> W:
        result = future.result()
        log.debug(
            "batch %d: %s",
            number,
            ", ".join(f"{stage} {s:.2f} s" for stage, s in result.seconds.items()),
        )
        return result

    with ThreadPoolExecutor(1, thread_name_prefix="lookalike-writer") as writer:
        pending: tuple[int, Future[W]] | None = None
        for number, (items, read_wait) in enumerate(read(batches, embedder.spec, settings), 1):
            start = time.perf_counter()
            mapped = embed(items, embedder, labeler, settings, tagger)
            timings = {"read_wait": read_wait, "embed": time.perf_counter() - start}
            if pending is not None:
                yield finish(*pending)  # at most one batch waits to be written
            pending = number, writer.submit(written, mapped, timings)
        if pending is not None:
            yield finish(*pending)


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
    ``model`` (default: the active one). Reads files' metadata only, never their pixels. A run
    with work to do is recorded as "running" right away: if it never finishes, it still shows
    up (and the next run marks it "interrupted")."""
    settings = settings or get_settings()
    with _opened(library, settings) as lib:
        index = lib.index(model)
        stored = lib.states(index)
        assets = discover.scan(Path(source), manifest, max_file_bytes=settings.max_file_bytes)
        work = discover.plan(assets, stored, Path(source))
        plan = RunPlan(
            run_id=run_id or uuid.uuid4().hex,
            source=discover.path_to_uri(Path(source)),
            model=index.model_id,
            todo=[AssetRef(asset=asset, previous=stored.get(asset.id)) for asset in work.todo],
            deleted=work.deleted,
            unchanged=work.unchanged,
            quarantined_earlier=work.quarantined_earlier,
        )
        if plan.has_work:
            lib.runs.record(_summary(plan, outcome="running"))
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
    library: Library | None = None,
    embedder: Embedder | None = None,
) -> Iterator[BatchResult]:
    """Read, embed, label and write ``batches`` into the index of ``model_id``, yielding each
    batch's result as it is written."""

    settings = settings or get_settings()
    embedder = embedder or get_embedder(model_id)
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
    ``lookalike runs`` read it). Safe to retry: the run is recorded under its id.

    It also repairs what an earlier run over the same source left when it was killed: its
    record ("running") becomes "interrupted", and the index's optimise step (a no-op on an
    index in order) builds what the killed run never built. An idle run on a store in order
    records nothing: it wrote nothing."""
    summary = _summary(plan, deleted=deleted)
    merged = BatchResult()
    for result in results:
        merged.add(result)
    summary.new, summary.updated = merged.new, merged.updated
    summary.unchanged += merged.unchanged
    summary.quarantined_earlier += merged.quarantined_earlier
    summary.quarantined = [QuarantinedItem(uri=r.uri, reason=r.reason) for r in merged.quarantined]
    summary.stage_seconds = dict(merged.seconds)
    summary.outcome = (
        "quarantined" if summary.quarantined or summary.quarantined_earlier else "indexed"
    )
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
        index.optimize()
        summary.stage_seconds["optimize"] = time.perf_counter() - start
        interrupted = _mark_interrupted(lib, plan)
        summary.duration_s = round((datetime.now(UTC) - plan.started_at).total_seconds(), 3)
        embedded = summary.new + summary.updated
        summary.images_per_s = round(embedded / summary.duration_s, 2) if summary.duration_s else 0
        summary.stage_seconds = {k: round(v, 3) for k, v in summary.stage_seconds.items()}
        if plan.has_work or summary.quarantined or interrupted:
            lib.runs.record(summary)
    return summary


def _mark_interrupted(library: Library, plan: RunPlan) -> int:
    """Mark earlier runs over ``plan``'s source still recorded as "running" as "interrupted"
    (this run did their work); return how many there were."""
    stale = [
        run
        for run in library.runs.runs(_RUNS_CHECKED)
        if run.outcome == "running"
        and run.source == plan.source
        and run.run_id != plan.run_id
        and run.started_at < plan.started_at
    ]
    for run in stale:
        library.runs.record(run.model_copy(update={"outcome": "interrupted"}))
    return len(stale)


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
