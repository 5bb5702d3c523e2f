"""Model rollout: re-embed the library with a new model version, prove that the new index is at
least as good as the current one, switch searches to it in one atomic step; switch back on demand.

Zero downtime by construction: every model version has its own index and searches follow the
alias (the catalogue's ``switch`` moves it atomically), so while the new index fills, searches keep
reading the current one, untouched; the switch is one alias move and the previous index stays
as it was, so a rollback is one more move.

The steps (the rollout DAG runs each as a task; ``rollout`` runs them in one process):

1. ``plan_backfill``: the assets of the active index that the new one lacks (or holds with
   another fingerprint). Planning again after a failure resumes where the last attempt stopped.
2. ``backfill_batch``: re-read each asset's file by its URI, embed and label it with the new
   model, copy its metadata from the current index and upsert it (idempotent).
3. ``validate``: build the new index's search structures, check that it holds exactly the
   current index's documents, then the quality gate: mAP on a labelled evaluation set when one
   is configured, otherwise a self-check that needs no labels (transformed copies of sampled
   assets must find their originals at rank 1). Failures raise; the alias does not move.
4. ``activate``: move the alias, if it still points where the plan found it. The switch is
   recorded in the run log (``AliasSwitch``; Dashboards list it with the ingest runs), which is
   how ``rollback`` knows where "back" is.

Rolling back to an older index and ingesting again later brings it up to date incrementally:
ingestion compares the files with the states of whichever index is active.
"""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel, Field

from pipeline.backbones import get_spec, trained
from pipeline.decode import DecodeError, decode_image, read_file
from pipeline.discover import SourceAsset, read_manifest, uri_to_path
from pipeline.document import AliasSwitch, AssetDocument, QuarantinedItem
from pipeline.embed import Embedder, get_embedder
from pipeline.ingest import AssetRef, Mapped, plan_batches, run_stages
from pipeline.library import Library
from pipeline.search import Searcher, SearchRequest
from pipeline.settings import Settings, get_settings
from pipeline.store.base import DocumentIndex, StoreError

# Evaluation images are decoded no larger than this (short side): twice what the models resize
# to, so a crop keeps enough pixels, while a sample of camera photos stays small in memory.
_WORKING_SHORT_SIDE = 512

# Self-check: hits looked at per query (an original ranked lower counts as not found).
_SELF_CHECK_DEPTH = 10

# Self-check transforms: what a library's near-copies look like (re-framed, mirrored,
# colour-graded, re-compressed). Deterministic, so a gate result can be reproduced.
_SELF_CHECK: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop": lambda im: im.crop(_central_box(im, 0.75)),
    "flip": ImageOps.mirror,
    "colour": lambda im: ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.5)).enhance(0.85),
    "jpeg": lambda im: _recompress(im, quality=30),
}


class RolloutError(StoreError):
    """A rollout or rollback must not go on; the message says why and what to do next."""


class QualityGateError(RolloutError):
    """The new index retrieves worse than the gate allows; the alias was not moved."""


class RolloutPlan(BaseModel):
    """What a rollout has to do; plain JSON, so Airflow tasks can pass it as XCom."""

    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source_model: str = Field(description="The active model version, copied from.")
    target_model: str = Field(description="The model version rolled out.")
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    todo: list[str] = Field(default_factory=list, description="Ids to embed with the new model.")
    resumed: int = Field(0, description="Already in the new index from an earlier attempt.")
    removed: int = Field(0, description="Stale documents removed from the new index.")


class BackfillResult(BaseModel):
    """What one backfill batch did."""

    written: int = 0
    missing: list[QuarantinedItem] = Field(
        default_factory=list, description="Assets whose file could not be read again."
    )
    seconds: dict[str, float] = Field(default_factory=dict)


class GateResult(BaseModel):
    """The quality gate's measurements and verdict."""

    method: Literal["labelled", "validation split", "self-check"]
    metric: str
    current_model: str
    candidate_model: str
    current: float
    candidate: float
    required: float = Field(description="The least the candidate had to reach.")
    queries: int
    passed: bool

    def describe(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return (
            f"quality gate {verdict}: {self.method} {self.metric} of {self.candidate_model} is "
            f"{self.candidate:.3f}, needs "
            f"{'more than' if self.method == 'validation split' else 'at least'} "
            f"{self.required:.3f} "
            f"({self.current_model}: {self.current:.3f}; {self.queries} queries)"
        )


class Validation(BaseModel):
    documents: int
    gate: GateResult


class Switch(BaseModel):
    """One alias move."""

    previous: str | None
    active: str


class Rollout(BaseModel):
    """A whole rollout, as ``lookalike rollout`` reports it."""

    plan: RolloutPlan
    embedded: int
    validation: Validation
    switch: Switch


def plan_backfill(
    model: str, settings: Settings | None = None, *, run_id: str | None = None
) -> RolloutPlan:
    """Create the new model version's index (if needed) and list what it lacks.

    ``model`` is a registry name (``mobilenet_v2-gem-imagenet``) or a model id
    (``mobilenet_v2-gem-imagenet@1``). Documents the new index holds but the active one no
    longer does (left by an earlier attempt) are removed, so the two can match exactly.
    """
    settings = settings or get_settings()
    try:
        spec = get_spec(model)
    except ValueError as exc:
        raise RolloutError(str(exc)) from None
    with Library.open(settings) as library:
        active = library.catalogue.active()
        if active is None:
            raise RolloutError("no index is active yet: ingest a library first, then roll out")
        if active == spec.model_id:
            raise RolloutError(f"{spec.model_id} is already the active model version")
        wanted = library.index(active).states()
        target = library.index(spec.model_id)
        target.ensure(spec.dim)
        held = target.states()
        stale = sorted(set(held) - set(wanted))
        target.delete(stale)
    todo = sorted(
        i for i, s in wanted.items() if i not in held or held[i].fingerprint != s.fingerprint
    )
    return RolloutPlan(
        run_id=run_id or uuid.uuid4().hex,
        source_model=active,
        target_model=spec.model_id,
        todo=todo,
        resumed=len(wanted) - len(todo),
        removed=len(stale),
    )


def backfill_batch(
    plan: RolloutPlan,
    ids: Sequence[str],
    settings: Settings | None = None,
    *,
    embedder: Embedder | None = None,
) -> BackfillResult:
    """Embed one batch of the plan into the new index (an Airflow mapped task). Safe to retry:
    documents are upserted by id. Files that cannot be read are reported, not quarantined:
    a rollout leaves the current index and the quarantine list as they are."""

    settings = settings or get_settings()
    embedder = embedder or get_embedder(plan.target_model)
    if embedder.model_id != plan.target_model:
        raise ValueError(
            f"embedder {embedder.model_id} cannot fill the index of {plan.target_model}"
        )
    result = BackfillResult()
    with Library.open(settings) as library:
        # An id gone from the current index since planning was deleted by an ingest: skip it.
        docs = library.index(plan.source_model).get(ids)
        refs = [AssetRef(asset=_source_asset(docs[i])) for i in ids if i in docs]
        target = library.index(plan.target_model)

        def write(batch: Mapped) -> BackfillResult:
            target.upsert(batch.docs)
            missing = [QuarantinedItem(uri=r.uri, reason=r.reason) for r in batch.failed]
            return BackfillResult(written=len(batch.docs), missing=missing)

        chunks = plan_batches(refs, settings.batch_size)
        for done in run_stages(chunks, embedder, settings, write):
            result.written += done.written
            result.missing += done.missing
            for stage, seconds in done.seconds.items():
                result.seconds[stage] = round(result.seconds.get(stage, 0.0) + seconds, 3)
    return result


def validate(
    plan: RolloutPlan,
    results: Iterable[BackfillResult],
    settings: Settings | None = None,
    *,
    current_embedder: Embedder | None = None,
    candidate_embedder: Embedder | None = None,
) -> Validation:
    """Finish the new index (build its search structures, as ingestion does after writing),
    check that it holds exactly the active index's documents, and run the quality gate.

    Raises ``RolloutError`` when the documents differ and ``QualityGateError`` when the new
    index retrieves worse than allowed; either way the alias stays where it is.
    """

    settings = settings or get_settings()
    missing = [item for result in results for item in result.missing]
    keep = f"the alias still points to {plan.source_model}"
    with Library.open(settings) as library:
        current = library.index(plan.source_model)
        target = library.index(plan.target_model)
        target.optimize()
        wanted, held = set(current.states()), set(target.states())
        if wanted != held:
            message = (
                f"document counts differ: {plan.source_model} holds {len(wanted)} documents, "
                f"{plan.target_model} holds {len(held)}"
            )
            if missing:
                example = missing[0]
                message += (
                    f"; {len(missing)} file(s) could not be read again (e.g. {example.uri}: "
                    f"{example.reason}): run an ingest (it removes or quarantines them), then "
                    "roll out again (it resumes)"
                )
            else:
                message += (
                    f" ({len(wanted - held)} missing, {len(held - wanted)} extra; did an ingest "
                    "run meanwhile?): roll out again, it resumes where it stopped"
                )
            raise RolloutError(f"{message}; {keep}")
        gate = quality_gate(
            current,
            target,
            current_embedder or get_embedder(plan.source_model),
            candidate_embedder or get_embedder(plan.target_model),
            settings,
        )
        if not gate.passed:
            raise QualityGateError(f"{gate.describe()}; {keep}")
        return Validation(documents=len(held), gate=gate)


def activate(
    plan: RolloutPlan, results: Iterable[BackfillResult], settings: Settings | None = None
) -> Switch:
    """Point the alias at the new index, unless it moved since the plan was made (another
    rollout or a rollback won the race: the validation no longer applies). Records the switch
    as a run, for Dashboards and for ``rollback``."""
    results = list(results)
    with Library.open(settings or get_settings()) as library:
        active = library.catalogue.active()
        if active != plan.source_model:
            raise RolloutError(
                f"the alias moved from {plan.source_model} to {active} during the rollout; "
                "roll out again"
            )
        previous = library.catalogue.switch(plan.target_model)
        library.runs.record(
            AliasSwitch(
                run_id=plan.run_id,
                started_at=plan.started_at,
                model=plan.target_model,
                previous=previous,
                trigger="rollout",
                embedded=sum(r.written for r in results),
                resumed=plan.resumed,
                duration_s=round((datetime.now(UTC) - plan.started_at).total_seconds(), 3),
            )
        )
    return Switch(previous=previous, active=plan.target_model)


def rollback(settings: Settings | None = None, to: str | None = None) -> Switch:
    """Point the alias back at the version the last switch replaced (or at ``to``).

    Instant: the previous index was kept. Recorded like any switch, so rolling back twice
    returns to where it started.
    """
    settings = settings or get_settings()
    with Library.open(settings) as library:
        active = library.catalogue.active()
        if active is None:
            raise RolloutError("no index is active yet: there is nothing to roll back")
        indexes = {info.model_id: info.count for info in library.catalogue.indexes()}
        if to is None:
            switches = [s for s in library.runs.switches(limit=1000) if s.model == active]
            if not switches or switches[0].previous is None:
                raise RolloutError(
                    f"no recorded switch to {active}: name the version to roll back to "
                    f"(indexed: {', '.join(sorted(indexes)) or 'none'})"
                )
            to = switches[0].previous
        if to == active:
            raise RolloutError(f"{to} is already the active model version")
        if not indexes.get(to):
            raise RolloutError(
                f"no index with documents for {to}; indexed: {', '.join(sorted(indexes)) or 'none'}"
            )
        previous = library.catalogue.switch(to)
        library.runs.record(AliasSwitch(model=to, previous=previous, trigger="rollback"))
    return Switch(previous=previous, active=to)


def rollout(model: str, settings: Settings | None = None) -> Rollout:
    """All the steps in one process (``lookalike rollout``), with the same functions the DAG
    runs as tasks."""
    settings = settings or get_settings()
    plan = plan_backfill(model, settings)
    results = [
        backfill_batch(plan, batch, settings)
        for batch in plan_batches(plan.todo, settings.batch_size)
    ]
    validation = validate(plan, results, settings)
    switch = activate(plan, results, settings)
    return Rollout(
        plan=plan,
        embedded=sum(r.written for r in results),
        validation=validation,
        switch=switch,
    )


# -- the quality gate --------------------------------------------------------------------------


def quality_gate(
    current: DocumentIndex,
    candidate: DocumentIndex,
    current_embedder: Embedder,
    candidate_embedder: Embedder,
    settings: Settings,
) -> GateResult:
    """Measure both versions the same way and decide. With a labelled evaluation set: mAP of
    leave-one-out retrieval within the set. Without: the self-check rank-1 rate on the indexes
    themselves. The candidate passes when it is not worse than the current version by more than
    ``rollout_tolerance`` (and, for the self-check, reaches ``rollout_min_match_rate``)."""
    tolerance = settings.rollout_tolerance
    models = {"current_model": current.model_id, "candidate_model": candidate.model_id}
    labelled = _evaluation_set(candidate.model_id, settings)
    if labelled is not None:
        manifest, column, must_improve = labelled
        images, labels = _labelled_set(manifest, column, settings)
        now = mean_average_precision(_embed(images, current_embedder, settings), labels)
        new = mean_average_precision(_embed(images, candidate_embedder, settings), labels)
        required = now if must_improve else now - tolerance
        return GateResult(
            method="validation split" if must_improve else "labelled",
            metric="mAP",
            current=now,
            candidate=new,
            required=required,
            queries=len(images),
            passed=new > required if must_improve else new >= required,
            **models,
        )
    images, truth = self_check_queries(current, settings)
    now = _rank1_rate(current, _embed(images, current_embedder, settings), truth)
    new = _rank1_rate(candidate, _embed(images, candidate_embedder, settings), truth)
    required = max(settings.rollout_min_match_rate, now - tolerance)
    return GateResult(
        method="self-check",
        metric="rank-1 rate",
        current=now,
        candidate=new,
        required=required,
        queries=len(images),
        passed=new >= required,
        **models,
    )


def self_check_queries(
    index: DocumentIndex, settings: Settings
) -> tuple[list[Image.Image], list[str]]:
    """Transformed copies of a seeded random sample of the indexed assets, with the id each
    must find. Needs no labels: an asset's own original is the right answer."""
    ids = sorted(index.states())
    sample = random.Random(settings.rollout_seed).sample(
        ids, min(settings.rollout_sample_size, len(ids))
    )
    docs = index.get(sample)
    images, truth = [], []
    for asset_id in sample:
        doc = docs.get(asset_id)
        original = _read_image(doc, settings) if doc is not None else None
        if original is None:
            continue  # unreadable now: the document check reports such files
        for transform in _SELF_CHECK.values():
            images.append(transform(original))
            truth.append(asset_id)
    if not images:
        raise RolloutError("self-check: none of the sampled assets could be read again")
    return images, truth


def mean_average_precision(embeddings: np.ndarray, labels: Sequence[str]) -> float:
    """Leave-one-out retrieval within a labelled set: every image queries all the others; the
    images with its label are the relevant ones. Images alone in their label only serve as
    distractors."""
    labels_arr = np.asarray(labels)
    similarity = embeddings @ embeddings.T
    precisions = []
    for i in range(len(labels_arr)):
        order = [j for j in np.argsort(-similarity[i], kind="stable") if j != i]
        relevant = labels_arr[order] == labels_arr[i]
        if not relevant.any():
            continue
        ranks = np.flatnonzero(relevant) + 1
        precisions.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    if not precisions:
        raise RolloutError("the evaluation set needs at least two images with the same label")
    return float(np.mean(precisions))


def _evaluation_set(model_id: str, settings: Settings) -> tuple[Path, str, bool] | None:
    """The labelled set the gate measures on: ``(manifest, label column, must improve)``. The
    configured evaluation set when there is one (not worse than the tolerance); else, for a
    model trained by ``lookalike train`` on labels, its validation split, identities it never
    trained on (it must be strictly better: a fine-tuned model exists to be); else none (the
    self-check, also for a self-supervised model: copies finding their originals)."""
    if settings.rollout_eval_manifest is not None:
        return Path(settings.rollout_eval_manifest), settings.rollout_eval_label_column, False
    name, _, version = model_id.partition("@")
    record = trained.find(name, settings.model_dir, int(version) if version.isdigit() else None)
    if record is None or record.config.get("self_supervised"):
        return None  # no labels: the self-check (copies find their originals) is the measure
    return (
        trained.folder(name, record.version, settings.model_dir) / "validation.csv",
        "label",
        True,
    )


def _labelled_set(
    manifest: Path, column: str, settings: Settings
) -> tuple[list[Image.Image], list[str]]:
    images, labels = [], []
    for path, row in read_manifest(manifest, base=manifest.parent).items():
        label = row["metadata"].get(column)
        if label is None:
            continue
        try:
            images.append(_decode_small(path.read_bytes(), settings))
        except (OSError, DecodeError) as exc:
            raise RolloutError(f"evaluation set {manifest}: cannot use {path}: {exc}") from exc
        labels.append(label)
    if not images:
        raise RolloutError(f"evaluation set {manifest}: no row has a {column!r} value")
    return images, labels


def _embed(images: Sequence[Image.Image], embedder: Embedder, settings: Settings) -> np.ndarray:
    batches = plan_batches(images, settings.batch_size)
    return np.concatenate(
        [
            embedder.predict(np.stack([embedder.preprocess(im) for im in b])).embeddings
            for b in batches
        ]
    )


def _rank1_rate(index: DocumentIndex, vectors: np.ndarray, truth: Sequence[str]) -> float:
    """Share of queries that find their original first. A library holds its own near-copies
    (resized, re-encoded, converted files: the very thing Lookalike finds), so a document
    ranked above the original still counts as a right answer when it is at least as similar
    to the original as the query is: it is a copy of the original, not a retrieval error."""
    searcher = Searcher(index)
    found = 0
    for vector, expected in zip(vectors, truth, strict=True):
        hits = searcher.search(SearchRequest(vector=vector.tolist(), k=_SELF_CHECK_DEPTH)).hits
        rank = next((r for r, hit in enumerate(hits) if hit.id == expected), None)
        if rank is None:
            continue
        if rank == 0:
            found += 1
            continue
        above = index.get([expected, *(hit.id for hit in hits[:rank])], with_embedding=True)
        original = np.asarray(above[expected].embedding)
        query_similarity = float(original @ vector)
        found += all(
            float(original @ np.asarray(above[hit.id].embedding)) >= query_similarity
            for hit in hits[:rank]
        )
    return found / len(truth)


# -- helpers -----------------------------------------------------------------------------------


def _source_asset(doc: AssetDocument) -> SourceAsset:
    """The asset behind an indexed document as ingestion would see it now: its file's current
    size and mtime (so the next ingest finds it unchanged) and the document's metadata (so the
    fingerprint, which covers both, matches when the file did not change)."""
    path = uri_to_path(doc.uri)
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        stat = None
    return SourceAsset(
        id=doc.id,
        uri=doc.uri,
        size_bytes=stat.st_size if stat else 0,
        mtime_ns=stat.st_mtime_ns if stat else 0,
        title=doc.title,
        description=doc.description,
        keywords=tuple(doc.keywords),
        metadata=dict(doc.metadata),
        problem=None if stat else "file not found",
    )


def _read_image(doc: AssetDocument, settings: Settings) -> Image.Image | None:
    path = uri_to_path(doc.uri)
    if path is None:
        return None
    try:  # read as ingestion reads: never a FIFO or a device, never past the size limit
        return _decode_small(read_file(path, settings.max_file_bytes), settings)
    except DecodeError:
        return None


def _decode_small(data: bytes, settings: Settings) -> Image.Image:
    image = decode_image(
        data, max_pixels=settings.max_image_pixels, min_size=_WORKING_SHORT_SIDE
    ).image
    scale = _WORKING_SHORT_SIDE / min(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image


def _central_box(im: Image.Image, fraction: float) -> tuple[int, int, int, int]:
    w, h = int(im.width * fraction), int(im.height * fraction)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return left, top, left + w, top + h


def _recompress(im: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
