"""What a store offers the core, split by concern, and nothing more.

A deployment keeps five kinds of records, and each store (``embedded.py``: LanceDB on local
disk; ``opensearch.py`` and ``elasticsearch.py``: a cluster) implements each of them:

* ``IndexCatalogue``: one index per model version, and the alias that names the version
  searches and ingestion use (switched atomically by a rollout, and back by a rollback);
* ``DocumentIndex``: the asset documents of one model version, with the narrow primitives the
  core's ``Searcher`` builds every search from: ``knn``, ``bm25``, ``count``, ``get`` and
  ``scan``, each taking one filter tree (``pipeline/filters.py``) that the store translates;
* ``QuarantineLog``: the files that could not be indexed, with the reason;
* ``RunLog``: what every ingestion run did, and every alias switch;
* ``JudgementLog``: people's yes/no judgements of custom tags, which tag classifiers learn from.

``Backend`` bundles them for one store; ``pipeline.library.Library`` is the handle the CLI,
the API and the DAGs open. Every failure a caller should report (the cluster unreachable, a
request refused) is a ``StoreError``; documents refused for good by the index are listed by a
``BulkWriteError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from pipeline.document import (
    AliasSwitch,
    AssetDocument,
    IngestSummary,
    Judgement,
    QuarantineRecord,
    StoredState,
)
from pipeline.filters import Filter

Scored = tuple[str, float]
"""An id and its score (cosine similarity or BM25), in a ranking best first."""


@dataclass
class Ranking:
    """A ranking, best first (ties by id), and, when asked for, the documents it ranks: read
    in the same request, so they are the ones that were ranked (a second read could already
    see another version of the index)."""

    scored: list[Scored]
    documents: dict[str, AssetDocument] = field(default_factory=dict)


class StoreError(RuntimeError):
    """A store operation failed in a way the caller should report, not retry blindly."""


@dataclass(frozen=True)
class BulkFailure:
    """One write that did not succeed, as the store explained it."""

    op: str
    index: str
    id: str
    status: int
    error: str

    @classmethod
    def from_item(cls, op: str, info: dict[str, Any]) -> BulkFailure:
        """From a cluster's bulk response item (or the helper's record of a failed request)."""
        error = info.get("error")
        if isinstance(error, dict):  # an item error: {"type", "reason", "caused_by"?}
            text = f"{error.get('type')}: {error.get('reason')}"
            if cause := error.get("caused_by"):
                text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
        else:  # the whole request failed: the helper reports the exception's text
            text = str(error)
        return cls(op, str(info.get("_index")), str(info.get("_id")), int(info["status"]), text)


class BulkWriteError(StoreError):
    """Some writes still failed after the retries; everything else was written.

    ``rejected`` are the documents the index refused for good (a mapping conflict, a wrong
    vector dimension): ingestion quarantines them with the index's reason. Any other failure
    (the cluster busy or away) is ``transient``: the run fails, and a re-run writes them."""

    def __init__(self, failures: Sequence[BulkFailure], written: int) -> None:
        self.failures = list(failures)
        self.written = written
        shown = "; ".join(
            f"{f.op} {f.index}/{f.id}: HTTP {f.status} {f.error}" for f in self.failures[:5]
        )
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(
            f"{len(self.failures)} write(s) failed after retries, {written} succeeded: "
            f"{shown}{more}"
        )

    @property
    def rejected(self) -> dict[str, str]:
        """Document id -> reason, for the documents refused for good (HTTP 4xx but 429)."""
        return {f.id: f.error for f in self.failures if f.op == "index" and final(f.status)}

    @property
    def transient(self) -> list[BulkFailure]:
        """The failures worth retrying later (429, 5xx, no answer)."""
        return [f for f in self.failures if not final(f.status)]


def final(status: int) -> bool:
    """Whether a failed write's HTTP status means "never" rather than "not now"."""
    return 400 <= status < 500 and status != 429


@dataclass(frozen=True)
class IndexInfo:
    """One model version's index, as ``lookalike index list`` shows it."""

    model_id: str
    name: str
    count: int
    active: bool


class IndexCatalogue(ABC):
    """The indexes of the model versions, and the alias searches follow."""

    @abstractmethod
    def active(self) -> str | None:
        """The model id the alias names, or ``None`` before the first switch."""

    @abstractmethod
    def switch(self, model_id: str) -> str | None:
        """Point the alias at ``model_id``'s index in one atomic step; return the previous
        model id. The index must exist."""

    @abstractmethod
    def indexes(self) -> list[IndexInfo]:
        """Every model version's index, with its size and whether the alias names it."""


class DocumentIndex(ABC):
    """The asset documents of one model version (``model_id``, e.g. ``mobilenet_v2-imagenet@1``).

    Search primitives take a filter tree (``None``: everything) and rank exactly where the
    filter lets few documents through, so a selective filter never loses recall: ``knn`` by
    cosine similarity, ``bm25`` by full-text relevance; both best first, ties by id.
    """

    model_id: str

    # -- lifecycle -------------------------------------------------------------------------------

    @abstractmethod
    def exists(self) -> bool:
        """Whether the index was created (something was ever written with this model)."""

    @abstractmethod
    def ensure(self, dim: int) -> None:
        """Create the index for vectors of ``dim`` dimensions if needed; ``ValueError`` when it
        exists with another dimension."""

    def optimize(self) -> None:  # noqa: B027 - a no-op where there is nothing to build
        """Build or refresh the search structures after a large write (and repair what an
        interrupted run left unbuilt); cheap when there is nothing to do."""

    def warm(self) -> None:  # noqa: B027 - a no-op where the server keeps its index loaded
        """Load the vector index into memory now, and again whenever a write replaces it, so
        that the first searches of a serving process are as fast as the rest (the search API
        calls this once it has opened the index). A one-off search (the CLI) does not call it:
        it would load the whole index to read a few partitions of it."""

    # -- writes ------------------------------------------------------------------------------

    @abstractmethod
    def upsert(self, docs: Sequence[AssetDocument]) -> int:
        """Insert or replace documents by id; return how many were written. Documents the
        index refuses are listed by ``BulkWriteError`` after the others are written."""

    @abstractmethod
    def set_tags(self, docs: Sequence[AssetDocument]) -> int:
        """Write these documents' custom tags (``TAG_FIELDS``) over the stored ones, leaving
        every other field as stored; ids not in the index are skipped. Return how many
        documents were given. Why not ``upsert``: a tag backfill changes a few bytes of each
        document, and rewriting whole documents with their region vectors made it slower than
        embedding them again (docs/benchmarks.md, section 7)."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (missing ones are fine); return how many ids were given."""

    # -- reads -------------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """The reads made in this block, in this thread, are one search: a store that checks
        for a newer version before each read (the embedded one) checks once, so that a search's
        count, ranking and documents all come from the same version and the check is paid once.
        Nothing to do where the server keeps reads consistent (the clusters)."""
        yield

    @abstractmethod
    def get(
        self, ids: Sequence[str], with_embedding: bool = False, with_regions: bool = False
    ) -> dict[str, AssetDocument]:
        """The documents with these ids that exist, by id; their embedding only
        ``with_embedding``, their regions only ``with_regions`` (a document's regions are many
        vectors: about half of an asset query's one-row read went to them)."""

    @abstractmethod
    def states(self) -> dict[str, StoredState]:
        """Id -> fingerprint state of every document, for incremental runs."""

    @abstractmethod
    def count(self, where: Filter | None = None) -> int:
        """How many documents pass ``where``."""

    @abstractmethod
    def knn(
        self,
        vector: Sequence[float],
        where: Filter | None,
        k: int,
        documents: bool = False,
        regions: bool = False,
    ) -> Ranking:
        """The ``k`` documents passing ``where`` most similar to ``vector`` (cosine), with the
        documents (no vectors) when ``documents``. With ``regions``, a document's similarity
        is its best region vector's (documents without regions are not ranked)."""

    @abstractmethod
    def bm25(self, text: str, where: Filter | None, k: int, documents: bool = False) -> Ranking:
        """The ``k`` documents passing ``where`` that match ``text`` best (double-quoted parts
        are phrases; any other text is words, never a syntax error), with the documents when
        ``documents``."""

    @abstractmethod
    def scan(self, where: Filter | None, offset: int, limit: int) -> list[str]:
        """Ids of the documents passing ``where``, in the store's stable order, paged."""

    @abstractmethod
    def label_counts(self, min_confidence: float, limit: int) -> dict[str, int]:
        """Label name -> number of documents carrying it with at least ``min_confidence``,
        most frequent first (facets, "top labels")."""


class QuarantineLog(ABC):
    """Files that could not be indexed, with the reason, shared by every model version (they
    are about files, not vectors)."""

    @abstractmethod
    def add(self, records: Sequence[QuarantineRecord]) -> None:
        """Record (or replace) these files' quarantine records."""

    @abstractmethod
    def remove(self, ids: Sequence[str]) -> None:
        """Forget these ids (indexed after all, deleted, or to be retried)."""

    @abstractmethod
    def records(self) -> list[QuarantineRecord]:
        """Every record, by URI."""


class RunLog(ABC):
    """What ingestion runs did and how the alias moved, newest first (Dashboards chart it)."""

    @abstractmethod
    def record(self, entry: IngestSummary | AliasSwitch) -> None:
        """Keep a run's summary or an alias switch (idempotent: by its id)."""

    @abstractmethod
    def runs(self, limit: int = 20) -> list[IngestSummary]:
        """The most recent ingestion runs."""

    @abstractmethod
    def switches(self, limit: int = 20) -> list[AliasSwitch]:
        """The most recent alias switches."""


class JudgementLog(ABC):
    """Judgements of custom tags, one per asset and tag (a new one replaces the old), shared by
    every model version (they are about assets, not vectors)."""

    @abstractmethod
    def add(self, judgements: Sequence[Judgement]) -> None:
        """Record (or replace) these judgements."""

    @abstractmethod
    def judgements(self, tag: str | None = None) -> list[Judgement]:
        """Every judgement (of ``tag``), by tag and asset id."""

    @abstractmethod
    def remove(self, tag: str) -> int:
        """Forget every judgement of ``tag``; return how many there were."""


class Backend(ABC):
    """One store: its catalogue, its logs, and an index per model version."""

    catalogue: IndexCatalogue
    quarantine: QuarantineLog
    runs: RunLog
    judgements: JudgementLog

    @abstractmethod
    def index(self, model_id: str) -> DocumentIndex:
        """The index of one model version (not created until ``ensure`` or a write)."""

    def apply(self, dim: int) -> list[str]:
        """Put what the store keeps ahead of any write (a cluster's index templates), for
        vectors of ``dim`` dimensions; return what was applied (nothing, here)."""
        return []

    def close(self) -> None:  # noqa: B027 - nothing to release for a local store
        """Make what was written visible to other processes, then release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
