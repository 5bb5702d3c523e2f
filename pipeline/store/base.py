"""The ``Store`` interface every index backend implements, and its search request/response.

The pipeline, the CLI, the DAGs and the API talk only to this interface, so switching from the
embedded store to OpenSearch is a setting, not a code change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.document import (
    AssetDocument,
    IngestSummary,
    Label,
    QuarantineRecord,
    StoredState,
)

# Longer than any label name (the longest of the label table has 30 characters). A filter
# becomes about a hundred keys in a store query: an unbounded name is unbounded work.
MAX_LABEL_NAME = 100


class LabelFilter(BaseModel):
    """Has label ``name`` with confidence >= ``min_confidence`` (names are case-insensitive)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_LABEL_NAME)
    min_confidence: float = Field(0.0, ge=0, le=100)

    @classmethod
    def parse(cls, spec: str) -> LabelFilter:
        """Parse the CLI form ``NAME[:MIN_CONFIDENCE]`` (e.g. ``Cat:80``)."""
        name, sep, conf = spec.rpartition(":")
        if not sep:
            return cls(name=spec.strip())
        try:
            return cls(name=name.strip(), min_confidence=float(conf))
        except ValueError as exc:
            raise ValueError(f"label filter {spec!r}: {conf!r} is not a number") from exc

    def matches(self, labels: Iterable[Label]) -> bool:
        key = self.name.casefold()
        return any(
            lab.name.casefold() == key and lab.confidence >= self.min_confidence for lab in labels
        )


def parse_metadata_filters(specs: Iterable[str]) -> dict[str, list[str]]:
    """Parse ``KEY=VALUE`` filters (the CLI and query-string form) into
    ``SearchRequest.metadata``; a repeated key accepts several values."""
    metadata: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise ValueError(f"metadata filter {spec!r}: expected KEY=VALUE")
        metadata.setdefault(key.strip(), []).append(value.strip())
    return metadata


class SearchRequest(BaseModel):
    """One search: a query vector and/or text, narrowed by label and metadata filters."""

    vector: list[float] | None = Field(None, description="Query embedding (L2-normalised).")
    text: str | None = Field(None, description="Full-text query over title, description, keywords.")
    labels_all: list[LabelFilter] = Field(default_factory=list, description="Every one must match.")
    labels_any: list[LabelFilter] = Field(
        default_factory=list, description="At least one must match."
    )
    labels_none: list[LabelFilter] = Field(default_factory=list, description="None may match.")
    metadata: dict[str, list[str]] = Field(
        default_factory=dict, description="Metadata key -> accepted values (any of them)."
    )
    exclude_ids: list[str] = Field(default_factory=list, description="Ids never returned.")
    k: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000)
    min_score: float | None = Field(None, description="Drop hits whose score is below this.")
    hybrid: Literal["rrf", "linear"] = Field(
        "rrf", description="How vector and text scores combine."
    )
    vector_weight: float = Field(
        0.5, ge=0, le=1, description="Vector share of a linear hybrid score."
    )
    rrf_k: int = Field(60, ge=1, description="RRF rank constant.")

    @field_validator("text")
    @classmethod
    def _blank_text_is_none(cls, v: str | None) -> str | None:
        return v if v and v.strip() else None

    @model_validator(mode="after")
    def _check(self) -> SearchRequest:
        if self.vector is not None and not self.vector:
            raise ValueError("vector must not be empty")
        return self

    @property
    def has_filters(self) -> bool:
        return bool(
            self.labels_all
            or self.labels_any
            or self.labels_none
            or self.metadata
            or self.exclude_ids
        )

    def label_filters_match(self, labels: Sequence[Label]) -> bool:
        """The exact label check every store applies (after any coarse index-side filter)."""
        return (
            all(f.matches(labels) for f in self.labels_all)
            and (not self.labels_any or any(f.matches(labels) for f in self.labels_any))
            and not any(f.matches(labels) for f in self.labels_none)
        )


class Hit(BaseModel):
    """One result, with enough detail to see *why* it matched."""

    id: str
    score: float = Field(description="The ranking score (cosine similarity, BM25 or fused).")
    vector_score: float | None = Field(None, description="Cosine similarity to the query vector.")
    text_score: float | None = Field(None, description="Full-text relevance (BM25).")
    matched_labels: list[Label] = Field(
        default_factory=list, description="The asset's labels named by the request's filters."
    )
    document: AssetDocument


class SearchResponse(BaseModel):
    hits: list[Hit]
    total_candidates: int | None = Field(
        None, description="How many documents passed the filters, where the store knows."
    )


class IndexInfo(BaseModel):
    """One model version's concrete index (table), as ``lookalike index list`` shows it."""

    model_id: str
    name: str
    count: int
    active: bool = Field(description="Whether the alias that searches use points here.")


class StoreError(RuntimeError):
    """A store operation failed in a way the caller should report, not retry blindly."""


class Store(ABC):
    """An index of ``AssetDocument``s for one model version (``model_id``, ``name@version``).

    Each model version has its own concrete index; one alias names the version that searches
    and scheduled ingestion use. A model rollout fills a new index, then moves the alias in
    one atomic step, so search never goes down and a rollback is one more move.
    """

    model_id: str

    @abstractmethod
    def active_model(self) -> str | None:
        """The model id the alias points to, or ``None`` before the first activation."""

    @abstractmethod
    def activate(self) -> str | None:
        """Atomically point the alias at this store's index; return the previous model id."""

    @abstractmethod
    def indexes(self) -> list[IndexInfo]:
        """Every model version's index under this store's base name."""

    @abstractmethod
    def ensure(self, dim: int) -> None:
        """Create the index/table for vectors of ``dim`` dimensions if it does not exist."""

    @abstractmethod
    def upsert(self, docs: Sequence[AssetDocument]) -> int:
        """Insert or replace documents by id; return how many were written."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents (and quarantine records) by id; return how many ids were given."""

    @abstractmethod
    def get(self, asset_id: str, with_embedding: bool = True) -> AssetDocument | None:
        """One document by id, or ``None``."""

    @abstractmethod
    def states(self) -> dict[str, StoredState]:
        """Id -> fingerprint state of every document and quarantine record, for incremental runs."""

    @abstractmethod
    def quarantine(self, records: Sequence[QuarantineRecord]) -> None:
        """Remember files that could not be indexed (and drop any stale document of theirs)."""

    @abstractmethod
    def quarantined(self) -> list[QuarantineRecord]:
        """Every quarantine record."""

    @abstractmethod
    def search(self, request: SearchRequest) -> SearchResponse:
        """Vector, text or hybrid search with filters."""

    @abstractmethod
    def count(self) -> int:
        """Number of indexed documents."""

    @abstractmethod
    def label_counts(self, min_confidence: float = 50.0, limit: int = 100) -> dict[str, int]:
        """Label name -> number of assets carrying it with at least ``min_confidence``, most
        frequent first (facets for a search page, "top labels" for a dashboard)."""

    @abstractmethod
    def record_run(self, summary: IngestSummary) -> None:
        """Keep an ingestion run's summary (for Dashboards and ``lookalike runs``)."""

    @abstractmethod
    def runs(self, limit: int = 20) -> list[IngestSummary]:
        """The most recent run summaries, newest first."""

    def optimize(self) -> None:  # noqa: B027 - optional hook
        """Compact and (re)build indexes after a large ingest; backends that need it override."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
