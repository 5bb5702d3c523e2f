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

import math
from typing import Annotated, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import filters, regions
from pipeline.backbones import get_spec
from pipeline.decode import decode_image
from pipeline.document import TAG_NAME, AssetDocument, Label, Vector
from pipeline.embed import Embedder
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


TagName = Annotated[
    str, Field(max_length=40, pattern=f"^{TAG_NAME}$", description="A custom tag's name.")
]
"""The custom tag names filters accept (``pipeline.tags.check_name`` says why)."""

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


RegionMode = Literal["off", "library", "query", "both"]


class QueryRegion(BaseModel):
    """A part of the query image and its embedding."""

    box: tuple[float, float, float, float] = Field(
        description="x, y, width, height: fractions 0..1 of the query image."
    )
    vector: Vector


class RegionMatch(BaseModel):
    """Which region made a hit: one of the hit's regions (``side`` "library": the query was
    found inside the hit) or one of the query's (``side`` "query": the hit was found inside
    the query image)."""

    side: Literal["library", "query"]
    box: tuple[float, float, float, float] = Field(
        description="x, y, width, height: fractions 0..1 of the hit's image (library) or of "
        "the query image (query)."
    )


class SearchRequest(BaseModel):
    """One search: a query vector and/or text, narrowed by label and metadata filters."""

    vector: list[float] | None = Field(None, description="Query embedding (L2-normalised).")
    regions: RegionMode = Field(
        "off",
        description="Region search: also rank each asset by its best region against the query "
        "(library: find the query inside bigger photos), the query's regions against each asset "
        "(query: find what appears in the query image), both, or off (whole images only, the "
        "default: docs/benchmarks.md shows where regions help and where they cost). A hit's "
        "similarity is the best of the whole-image and the region similarities.",
    )
    query_regions: list[QueryRegion] = Field(
        default_factory=list,
        description="The query image's regions (set from an image or an indexed asset).",
    )
    text: str | None = Field(None, description="Full-text query over title, description, keywords.")
    labels_all: list[LabelFilter] = Field(default_factory=list, description="Every one must match.")
    labels_any: list[LabelFilter] = Field(
        default_factory=list, description="At least one must match."
    )
    labels_none: list[LabelFilter] = Field(default_factory=list, description="None may match.")
    tags: list[TagName] = Field(
        default_factory=list, description="Custom tags every hit must pass (`lookalike tags`)."
    )
    tags_none: list[TagName] = Field(
        default_factory=list, description="Custom tags no hit may pass."
    )
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
        items += [filters.Term("tag_names", (tag,)) for tag in self.tags]
        if self.tags_none:
            items.append(filters.Not(filters.Term("tag_names", tuple(self.tags_none))))
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
    vector_score: float | None = Field(
        None,
        description="Cosine similarity to the query: of the whole images, or of the region "
        "named by `region` where that is higher.",
    )
    text_score: float | None = Field(None, description="Full-text relevance (BM25).")
    region: RegionMatch | None = Field(
        None, description="The region that gave `vector_score` (none: the whole images)."
    )
    match: bool | None = Field(
        None,
        description="Whether `vector_score` reaches the model's calibrated identity threshold: "
        "the same item, character or person, or only a look-alike (models trained by "
        "`lookalike train`; null for other models and for hits without a vector score).",
    )
    matched_labels: list[Label] = Field(
        default_factory=list, description="The asset's labels named by the request's filters."
    )
    document: AssetDocument


class SearchResponse(BaseModel):
    hits: list[Hit]
    total_candidates: int = Field(description="How many documents passed the filters.")
    more: bool = Field(False, description="Whether a next page has hits.")
    note: str | None = Field(None, description="What could not be done as asked, and why.")


class Searcher:
    """Answers ``SearchRequest``s from one model version's index (see the module docstring)."""

    def __init__(self, index: DocumentIndex, settings: Settings | None = None) -> None:
        self.index = index
        settings = settings or get_settings()
        self.num_candidates = settings.num_candidates
        try:  # a trained model's open-set threshold: hits say whether they are a match
            self.match_threshold = get_spec(index.model_id, settings.model_dir).match_threshold
        except ValueError:  # an index of a model this registry does not know
            self.match_threshold = None

    def search(self, request: SearchRequest) -> SearchResponse:
        with self.index.snapshot():
            return self._search(request)

    def _search(self, request: SearchRequest) -> SearchResponse:
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
            found = self._vector_ranking(request, where, end + 1, documents=True)
            ranked = [(i, s, s, None) for i, s in found.scored]
            start = request.offset
        elif request.vector is None:
            found = self.index.bm25(request.text, where, end + 1, documents=True)
            ranked = [(i, s, None, s) for i, s in found.scored]
            start = request.offset
        else:
            # A score threshold drops hits before the page is cut: then fill in every one.
            shown = end if request.min_score is None else None
            ranked = self._hybrid(request, where, max(self.num_candidates, end + 1), shown)
            start = request.offset
        if request.min_score is not None:
            ranked = [r for r in ranked if r[1] >= request.min_score]
        page = ranked[start : start + request.k]
        more = len(ranked) > start + request.k
        page_ids = [r[0] for r in page]
        matches: dict[str, RegionMatch | None] = {}
        if _legs(request)[1:] and page_ids:
            # Which region gave each hit its similarity: from the page's own vectors.
            with_vectors = self.index.get(
                page_ids, with_embedding=True, with_regions=ranks_library_regions(request)
            )
            matches = {i: similarity(request, d)[1] for i, d in with_vectors.items()}
            docs = {i: _without_vectors(d) for i, d in with_vectors.items()}
        else:
            # A single ranking came with its documents; a fused one reads the page's now.
            docs = found.documents if found.documents else self.index.get(page_ids)
        hits = [
            Hit(
                id=asset_id,
                score=score,
                vector_score=vector_score,
                text_score=text_score,
                region=matches.get(asset_id),
                match=None
                if self.match_threshold is None or vector_score is None
                else vector_score >= self.match_threshold,
                matched_labels=request.matched_labels(docs[asset_id].labels),
                document=docs[asset_id],
            )
            for asset_id, score, vector_score, text_score in page
            if asset_id in docs  # deleted between ranking and fetching
        ]
        return SearchResponse(hits=hits, total_candidates=total, more=more)

    def similar(self, asset_id: str, request: SearchRequest) -> SearchResponse:
        """Search with an indexed asset's own embedding (and regions), leaving the asset out."""
        query_regions = ranks_query_regions(request)
        with self.index.snapshot():
            found = self.index.get([asset_id], with_embedding=True, with_regions=query_regions)
            doc = found.get(asset_id)
            if doc is None or doc.embedding is None:
                raise AssetNotFound(f"no indexed asset with id {asset_id!r}")
            update = {
                "vector": doc.embedding,
                "query_regions": [QueryRegion(box=r.box, vector=r.embedding) for r in doc.regions]
                if query_regions
                else [],
                "exclude_ids": [*request.exclude_ids, asset_id],
            }
            return self.search(request.model_copy(update=update))

    def search_image(self, request: SearchRequest, query: ImageQuery) -> SearchResponse:
        """Search with an image's (or a part's) embedding and regions (``analyse_image``)."""
        update = {"vector": query.vector, "query_regions": query.regions}
        response = self.search(request.model_copy(update=update))
        response.note = query.note
        return response

    def _vector_ranking(
        self,
        request: SearchRequest,
        where: filters.Filter | None,
        k: int,
        documents: bool = False,
    ) -> Ranking:
        """The ``k`` best documents by :func:`similarity`: one ranking per leg (the query
        vector against the documents' embeddings, against their regions, each query region
        against their embeddings), each document at its best score over the legs."""
        legs = _legs(request)
        if len(legs) == 1:
            return self.index.knn(request.vector or [], where, k, documents=documents)
        best: dict[str, float] = {}
        for vector, over_regions in legs:
            for asset_id, score in self.index.knn(vector, where, k, regions=over_regions).scored:
                best[asset_id] = max(score, best.get(asset_id, score))
        return Ranking(sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))[:k])

    def _hybrid(
        self,
        request: SearchRequest,
        where: filters.Filter | None,
        window: int,
        shown: int | None,
    ) -> list[tuple[str, float, float | None, float | None]]:
        """Fuse ``window`` candidates of each ranking, and fill in the score a candidate lacks
        from the other ranking: for every candidate where linear fusion weighs both, only for
        the first ``shown`` hits (all when ``None``) where RRF ranks by the rankings' ranks
        alone. Filling in every candidate read about 100 documents with their vectors per
        query to show 10 (docs/benchmarks.md, section 3)."""
        vector_leg = self._vector_ranking(request, where, window).scored
        text_leg = self.index.bm25(request.text or "", where, window).scored
        cosines = dict(vector_leg)
        bm25 = dict(text_leg)
        if request.hybrid == "rrf":
            fused = fuse(request, vector_leg, text_leg, cosines, bm25)
            self._fill_in(request, where, [i for i, _ in fused[:shown]], cosines, bm25)
        else:
            candidates = list(dict.fromkeys([i for i, _ in vector_leg + text_leg]))
            self._fill_in(request, where, candidates, cosines, bm25)
            fused = fuse(request, vector_leg, text_leg, cosines, bm25)
        return [(i, score, cosines.get(i), bm25.get(i)) for i, score in fused]

    def _fill_in(
        self,
        request: SearchRequest,
        where: filters.Filter | None,
        ids: list[str],
        cosines: dict[str, float],
        bm25: dict[str, float],
    ) -> None:
        """Add the cosines and BM25 scores of ``ids`` that the rankings did not return."""
        if missing := [i for i in ids if i not in cosines]:
            docs = self.index.get(
                missing, with_embedding=True, with_regions=ranks_library_regions(request)
            )
            cosines |= {i: similarity(request, d)[0] for i, d in docs.items() if d.embedding}
        if missing := [i for i in ids if i not in bm25]:
            only = filters.Term("id", tuple(missing))
            scoped = only if where is None else filters.And((where, only))
            bm25 |= dict(self.index.bm25(request.text or "", scoped, len(missing)).scored)


def ranks_library_regions(request: SearchRequest) -> bool:
    """Whether the request's mode ranks the library's regions (so they must be read)."""
    return request.regions in ("library", "both")


def ranks_query_regions(request: SearchRequest) -> bool:
    """Whether the request's mode ranks by the query's regions (so they must be built)."""
    return request.regions in ("query", "both")


def _legs(request: SearchRequest) -> list[tuple[list[float], bool]]:
    """The vector searches a request needs, as (query vector, over the documents' regions):
    the whole query first, then the region directions its mode asks for; none without a
    query vector (a text or filter search ranks no vectors, whatever its mode)."""
    if request.vector is None:
        return []
    vector = request.vector
    legs = [(vector, False)]
    if ranks_library_regions(request):
        legs.append((vector, True))
    if ranks_query_regions(request):
        legs += [(region.vector, False) for region in request.query_regions]
    return legs


def similarity(request: SearchRequest, doc: AssetDocument) -> tuple[float, RegionMatch | None]:
    """A document's similarity to the request's query (read with its vectors), exactly as the
    vector ranking scores it: the best cosine of the whole images, of the query against the
    document's regions and of the query's regions against the document (as the mode allows),
    and the region that gave it (``None``: the whole images)."""
    if doc.embedding is None:
        raise ValueError("similarity needs the document's embedding")
    query = _unit(request.vector or [])
    embedding = np.asarray(doc.embedding, dtype=np.float64)
    best: tuple[float, RegionMatch | None] = (float(embedding @ query), None)
    if ranks_library_regions(request) and doc.regions:
        scores = np.asarray([r.embedding for r in doc.regions], dtype=np.float64) @ query
        top = int(np.argmax(scores))
        if scores[top] > best[0]:
            best = (float(scores[top]), RegionMatch(side="library", box=doc.regions[top].box))
    if ranks_query_regions(request) and request.query_regions:
        vectors = np.stack([_unit(r.vector) for r in request.query_regions])
        scores = vectors @ embedding
        top = int(np.argmax(scores))
        if scores[top] > best[0]:
            box = request.query_regions[top].box
            best = (float(scores[top]), RegionMatch(side="query", box=box))
    return best


def _unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


def _without_vectors(doc: AssetDocument) -> AssetDocument:
    return doc.model_copy(update={"embedding": None, "regions": []})


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


# -- queries from images ----------------------------------------------------------------------


# A box whose crop is smaller than one cell of the model's feature grid (32 pixels at a 224
# input) leaves the model nothing to see but upscaling blur.
MIN_BOX_PIXELS = 32


def check_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``box`` if it is a part of an image, ``(x, y, w, h)`` in 0..1 fractions; a
    ``ValueError`` saying what is wrong otherwise."""
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box {list(box)}: every value must be a finite number")
    if w <= 0 or h <= 0:
        raise ValueError(f"box {list(box)}: width and height must be above 0 (no area)")
    eps = 1e-6
    if x < 0 or y < 0 or x + w > 1 + eps or y + h > 1 + eps:
        raise ValueError(
            f"box {list(box)}: x, y, width and height are fractions of the image, so x >= 0, "
            "y >= 0, x + width <= 1 and y + height <= 1"
        )
    return box


def parse_box(spec: str) -> tuple[float, float, float, float]:
    """Parse the CLI and query-string form ``X,Y,W,H`` of a box (then ``check_box``)."""
    parts = [p.strip() for p in spec.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"box {spec!r}: expected four numbers X,Y,W,H") from None
    if len(values) != 4:
        raise ValueError(f"box {spec!r}: expected four numbers X,Y,W,H, got {len(values)}")
    return check_box(values)  # type: ignore[arg-type]


class ImageQuery(BaseModel):
    """What an image (or a part of it) asks for: its embedding, its regions' embeddings with
    their boxes on the whole image, the class probabilities for labels, and a note when the
    box could not be used."""

    vector: list[float]
    regions: list[QueryRegion] = Field(default_factory=list)
    probabilities: list[float] = Field(default_factory=list, repr=False)
    note: str | None = None


def analyse_image(
    data: bytes,
    embedder: Embedder,
    settings: Settings | None = None,
    box: tuple[float, float, float, float] | None = None,
    with_regions: bool = True,
) -> ImageQuery:
    """Decode untrusted bytes (raises ``DecodeError``) and run the model on them, or on the
    ``box`` part of them (``check_box`` first). A box too small for the model's grid falls
    back to the whole image, and the note says so. The query's regions only
    ``with_regions`` (a search that does not rank by them need not build them)."""
    settings = settings or get_settings()
    min_size = embedder.spec.resize_size
    if box is not None:  # decode enough pixels that the crop still has them
        min_size = math.ceil(min_size / min(box[2], box[3]))
    image = decode_image(data, max_pixels=settings.max_image_pixels, min_size=min_size).image
    within: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    note = None
    if box is not None:
        left, top, right, bottom = regions.pixel_box(box, image.width, image.height)
        if min(right - left, bottom - top) < MIN_BOX_PIXELS:
            note = (
                f"the box is {right - left}x{bottom - top} pixels of this "
                f"{image.width}x{image.height} image, smaller than the model's "
                f"{MIN_BOX_PIXELS}-pixel grid cell: searched with the whole image instead"
            )
            # decoded as a whole-image query is, so that it gives the very same vector
            image = decode_image(
                data, max_pixels=settings.max_image_pixels, min_size=embedder.spec.resize_size
            ).image
        else:
            image = image.crop((left, top, right, bottom))
            within = box
    prediction = embedder.predict(embedder.preprocess(image)[None])
    query_regions = []
    if with_regions and embedder.region_levels:
        # decoded again with enough pixels for the smallest region (the first decode stays as
        # ingestion's, so the whole-image vector is the one the library holds)
        smallest = min(b[2] for b in regions.layout(embedder.region_levels))
        fine = decode_image(
            data, max_pixels=settings.max_image_pixels, min_size=math.ceil(min_size / smallest)
        ).image
        if within != (0.0, 0.0, 1.0, 1.0):
            fine = fine.crop(regions.pixel_box(within, fine.width, fine.height))
        found = embedder.cut_regions(fine)
        # boxes on the (cropped) image, as boxes on the whole image
        boxes = regions.to_image(np.array([r.box for r in found], np.float64), within)
        query_regions = [
            QueryRegion(box=box, vector=r.embedding) for box, r in zip(boxes, found, strict=True)
        ]
    return ImageQuery(
        vector=prediction.embeddings[0].tolist(),
        regions=query_regions,
        probabilities=prediction.probabilities[0].tolist(),
        note=note,
    )


def image_vector(data: bytes, embedder: Embedder, settings: Settings | None = None) -> list[float]:
    """The query embedding of an image file's bytes."""
    return analyse_image(data, embedder, settings, with_regions=False).vector


def detect_labels(
    data: bytes,
    embedder: Embedder,
    labeler: Labeler,
    min_confidence: float | None = None,
    max_labels: int | None = None,
    settings: Settings | None = None,
) -> list[Label]:
    """DetectLabels for one image."""
    query = analyse_image(data, embedder, settings, with_regions=False)
    probabilities = np.asarray(query.probabilities)
    return labeler.detect(probabilities, min_confidence=min_confidence, max_labels=max_labels)
