"""Search: what a query means, in one place, for every store.

A request names a query vector (an image's, an indexed asset's, or one given as is) and/or a
text, and filters (labels with minimum confidences, metadata, excluded ids). ``Searcher`` turns
it into the few primitives a store offers (``knn``, ``bm25``, ``count``, ``get``, ``scan``:
``pipeline/store/base.py``) and does everything else itself, so the embedded store and the
clusters answer the same request the same way:

* **filters** become one filter tree (``pipeline/filters.py``) that each store translates;
* **hybrid fusion** of the vector and text rankings, reciprocal rank fusion
  (``sum(1 / (rrf_k + rank))``) or linear (``w * cosine + (1 - w) * bm25 / best_bm25``), over
  ``num_candidates`` candidates from each ranking (as OpenSearch's and Elasticsearch's own
  hybrid searches do), so the order of the fused list does not depend on ``k`` or ``offset``;
  every fused hit gets both of its scores (its cosine, and its BM25 or none when the text does
  not match it), so a linear score is exactly the documented formula;
* **min_score**, then **paging** of that one list: page 2 is the rest of page 1's list;
* **matched labels** and the scores of each hit: why it was found.

The functions below it turn an image (bytes) into a query vector and labels with the same
decoding and model as ingestion, for the CLI and the API.
"""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import filters
from pipeline.decode import decode_image
from pipeline.document import AssetDocument, Label
from pipeline.embed import Embedder, Prediction
from pipeline.label import Labeler
from pipeline.settings import Settings, get_settings
from pipeline.store.base import DocumentIndex, Ranking, Scored


class AssetNotFound(LookupError):
    """The asset id named by a query is not in the index."""


# Longer than any label name (the longest of the label table has 30 characters). A filter
# becomes about a hundred keys in a store query: an unbounded name is unbounded work.
MAX_LABEL_NAME = 100


class LabelFilter(BaseModel):
    """Has label ``name`` with confidence >= ``min_confidence`` (names are case-insensitive)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_LABEL_NAME)
    min_confidence: float = Field(0.0, ge=0, le=100)

    @classmethod
    def parse(cls, spec: str) -> Self:
        """Parse the CLI form ``NAME[:MIN_CONFIDENCE]`` (e.g. ``Cat:80``)."""
        name, sep, conf = spec.rpartition(":")
        if not sep:
            return cls(name=spec.strip())
        try:
            return cls(name=name.strip(), min_confidence=float(conf))
        except ValueError as exc:
            raise ValueError(f"label filter {spec!r}: {conf!r} is not a number") from exc

    def node(self) -> filters.HasLabel:
        return filters.HasLabel(self.name, self.min_confidence)


METADATA_KEY_FORBIDDEN = frozenset("=<>!~")


def metadata_key(key: str) -> str:
    """A metadata filter's key, stripped. Only equality exists: a blank key, or one holding
    ``=``, ``<``, ``>``, ``!`` or ``~`` (``photographer>=m``), is refused rather than read as a
    key that silently matches nothing."""
    stripped = key.strip()
    if not stripped:
        raise ValueError("a metadata filter needs a key: KEY=VALUE")
    if bad := sorted(METADATA_KEY_FORBIDDEN & set(stripped)):
        raise ValueError(
            f"metadata key {key!r}: only KEY=VALUE (equality) is supported; a key cannot "
            f"contain {' '.join(bad)}"
        )
    return stripped


def parse_metadata_filters(specs: list[str]) -> dict[str, list[str]]:
    """Parse ``KEY=VALUE`` filters (the CLI and query-string form) into
    ``SearchRequest.metadata``; a repeated key accepts several values."""
    metadata: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise ValueError(f"metadata filter {spec!r}: expected KEY=VALUE")
        metadata.setdefault(metadata_key(key), []).append(value.strip())
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

    @field_validator("metadata")
    @classmethod
    def _metadata_keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return {metadata_key(key): values for key, values in v.items()}

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.vector is not None and not self.vector:
            raise ValueError("vector must not be empty")
        return self

    def filter(self) -> filters.Filter | None:
        """The request's filters as one tree (``None`` without filters)."""
        items: list[filters.Filter] = [f.node() for f in self.labels_all]
        if self.labels_any:
            items.append(filters.Or(tuple(f.node() for f in self.labels_any)))
        items += [filters.Not(f.node()) for f in self.labels_none]
        items += [
            filters.Term(f"{filters.METADATA_PREFIX}{key}", tuple(values))
            for key, values in sorted(self.metadata.items())
        ]
        if self.exclude_ids:
            items.append(filters.Not(filters.Term("id", tuple(self.exclude_ids))))
        return filters.all_of(items)

    def matched_labels(self, labels: list[Label]) -> list[Label]:
        """The document's labels that the request's label filters name."""
        wanted = {f.name.casefold() for f in [*self.labels_all, *self.labels_any]}
        return [lab for lab in labels if lab.name.casefold() in wanted]


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
    total_candidates: int = Field(description="How many documents passed the filters.")
    more: bool = Field(False, description="Whether a next page has hits.")


class Searcher:
    """Answers ``SearchRequest``s from one model version's index (see the module docstring)."""

    def __init__(self, index: DocumentIndex, settings: Settings | None = None) -> None:
        self.index = index
        self.num_candidates = (settings or get_settings()).num_candidates

    def search(self, request: SearchRequest) -> SearchResponse:
        where = request.filter()
        total = self.index.count(where)
        if total == 0:
            return SearchResponse(hits=[], total_candidates=0)
        end = request.offset + request.k
        found = Ranking([])
        if request.vector is None and not request.text:
            # Filters only: the listing, in the store's own stable order, all scoring 0.
            ids = self.index.scan(where, request.offset, request.k + 1)
            ranked = [(i, 0.0, None, None) for i in ids]
            start = 0
        elif request.text is None:
            found = self.index.knn(request.vector, where, end + 1, documents=True)
            ranked = [(i, s, s, None) for i, s in found.scored]
            start = request.offset
        elif request.vector is None:
            found = self.index.bm25(request.text, where, end + 1, documents=True)
            ranked = [(i, s, None, s) for i, s in found.scored]
            start = request.offset
        else:
            ranked = self._hybrid(request, where, max(self.num_candidates, end + 1))
            start = request.offset
        if request.min_score is not None:
            ranked = [r for r in ranked if r[1] >= request.min_score]
        page = ranked[start : start + request.k]
        more = len(ranked) > start + request.k
        # A single ranking came with its documents; a fused one reads the page's now.
        docs = found.documents if found.documents else self.index.get([r[0] for r in page])
        hits = [
            Hit(
                id=asset_id,
                score=score,
                vector_score=vector_score,
                text_score=text_score,
                matched_labels=request.matched_labels(docs[asset_id].labels),
                document=docs[asset_id],
            )
            for asset_id, score, vector_score, text_score in page
            if asset_id in docs  # deleted between ranking and fetching
        ]
        return SearchResponse(hits=hits, total_candidates=total, more=more)

    def similar(self, asset_id: str, request: SearchRequest) -> SearchResponse:
        """Search with an indexed asset's own embedding, leaving the asset itself out."""
        doc = self.index.get([asset_id], with_embedding=True).get(asset_id)
        if doc is None or doc.embedding is None:
            raise AssetNotFound(f"no indexed asset with id {asset_id!r}")
        update = {"vector": doc.embedding, "exclude_ids": [*request.exclude_ids, asset_id]}
        return self.search(request.model_copy(update=update))

    def _hybrid(
        self, request: SearchRequest, where: filters.Filter | None, window: int
    ) -> list[tuple[str, float, float | None, float | None]]:
        """Fuse ``window`` candidates of each ranking; fill in each candidate's other score."""
        vector_leg = self.index.knn(request.vector or [], where, window).scored
        text_leg = self.index.bm25(request.text or "", where, window).scored
        cosines = dict(vector_leg)
        bm25 = dict(text_leg)
        candidates = list(dict.fromkeys([i for i, _ in vector_leg] + [i for i, _ in text_leg]))
        if missing := [i for i in candidates if i not in cosines]:
            cosines |= _cosines(self.index, request.vector or [], missing)
        if missing := [i for i in candidates if i not in bm25]:
            only = filters.Term("id", tuple(missing))
            scoped = only if where is None else filters.And((where, only))
            bm25 |= dict(self.index.bm25(request.text or "", scoped, len(missing)).scored)
        fused = fuse(request, vector_leg, text_leg, cosines, bm25)
        return [(i, score, cosines.get(i), bm25.get(i)) for i, score in fused]


def fuse(
    request: SearchRequest,
    vector_leg: list[Scored],
    text_leg: list[Scored],
    cosines: dict[str, float],
    bm25: dict[str, float],
) -> list[Scored]:
    """The fused ranking, best first (ties by id). RRF counts a document's rank in each leg it
    is a candidate of (ranks from 1); linear weighs its cosine and its BM25 scaled by the best
    text candidate's, 0 where the text does not match it."""
    ranks = [{i: r for r, (i, _) in enumerate(leg, 1)} for leg in (vector_leg, text_leg)]
    best_text = max(bm25.values(), default=0.0) or 1.0
    fused = []
    for asset_id in {*ranks[0], *ranks[1]}:
        if request.hybrid == "rrf":
            score = sum(1.0 / (request.rrf_k + leg[asset_id]) for leg in ranks if asset_id in leg)
        else:
            w = request.vector_weight
            score = w * cosines[asset_id] + (1 - w) * bm25.get(asset_id, 0.0) / best_text
        fused.append((asset_id, score))
    fused.sort(key=lambda pair: (-pair[1], pair[0]))
    return fused


def _cosines(index: DocumentIndex, vector: list[float], ids: list[str]) -> dict[str, float]:
    """Exact cosine similarity of the query to the given documents (unit-length embeddings)."""
    docs = index.get(ids, with_embedding=True)
    query = np.asarray(vector, dtype=np.float64)
    query /= np.linalg.norm(query)
    return {
        i: float(np.asarray(d.embedding, dtype=np.float64) @ query)
        for i, d in docs.items()
        if d.embedding is not None
    }


# -- queries from images ----------------------------------------------------------------------


def analyse_image(data: bytes, embedder: Embedder, settings: Settings | None = None) -> Prediction:
    """Decode untrusted bytes (raises ``DecodeError``) and run the model on them."""
    settings = settings or get_settings()
    decoded = decode_image(
        data, max_pixels=settings.max_image_pixels, min_size=embedder.spec.resize_size
    )
    return embedder.predict(embedder.preprocess(decoded.image)[None])


def image_vector(data: bytes, embedder: Embedder, settings: Settings | None = None) -> list[float]:
    """The query embedding of an image file's bytes."""
    return analyse_image(data, embedder, settings).embeddings[0].tolist()


def detect_labels(
    data: bytes,
    embedder: Embedder,
    labeler: Labeler,
    min_confidence: float | None = None,
    max_labels: int | None = None,
    settings: Settings | None = None,
) -> list[Label]:
    """DetectLabels for one image."""
    probabilities = analyse_image(data, embedder, settings).probabilities[0]
    return labeler.detect(probabilities, min_confidence=min_confidence, max_labels=max_labels)
