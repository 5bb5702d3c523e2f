"""Request and response models of the HTTP API.

They reuse the core library's models (``LabelFilter``, ``Label``, ``AssetDocument``, ``Hit``)
so the API cannot drift from what the stores understand, and add only what HTTP needs: bounds
on every input (so a request cannot ask for unbounded work), the ``NAME:MIN_CONFIDENCE`` and
``KEY=VALUE`` string forms for query strings and form fields (the CLI's syntax), and links to
the images.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from pipeline.document import AssetDocument, Judgement
from pipeline.search import (
    MAX_LABEL_NAME,
    Hit,
    LabelFilter,
    RegionMode,
    SearchRequest,
    TagName,
    check_box,
    metadata_key,
    parse_box,
    parse_metadata_filters,
)
from pipeline.tags import TagInfo, check_name

MAX_K = 100
MAX_OFFSET = 10_000
MAX_FILTERS = 20
MAX_FORM_EXCLUDE_IDS = 100

# Asset ids are hex digests of the source URI (pipeline.discover.asset_id); the pattern keeps
# anything else (slashes, dots, quotes) out of store lookups and file names.
ASSET_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
MAX_ASSET_ID = 128
AssetId = Annotated[
    str,
    Field(
        max_length=MAX_ASSET_ID,
        pattern=ASSET_ID_PATTERN,
        description="An indexed asset's id.",
        examples=["c9c3aab28a330cf8c4deecaf68a21e2c"],
    ),
]

_CONFIDENCE = r"(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)"
LABEL_SPEC_PATTERN = rf"^[^:]*[^:\s][^:]*(:{_CONFIDENCE})?$"
METADATA_KEY_PATTERN = r"^[^=<>!~]+$"
METADATA_SPEC_PATTERN = r"^[^=<>!~]+=.*$"


def _label_spec(value: str) -> str:
    if re.fullmatch(LABEL_SPEC_PATTERN, value) is None:
        raise ValueError(f"expected NAME or NAME:MIN_CONFIDENCE (0-100), got {value!r}")
    if len(value.partition(":")[0].strip()) > MAX_LABEL_NAME:
        raise ValueError(f"a label name has at most {MAX_LABEL_NAME} characters")
    return value


def _metadata_spec(value: str) -> str:
    """The core's grammar decides (the pattern only documents it)."""
    parse_metadata_filters([value])
    return value


def _metadata_key(value: str) -> str:
    metadata_key(value)
    return value


# The patterns are published in the schema (json_schema_extra) and checked by the validators,
# which say what is wrong in words rather than by quoting a regular expression.
LabelSpec = Annotated[
    str,
    Field(
        max_length=120,
        json_schema_extra={"pattern": LABEL_SPEC_PATTERN},
        description="A label filter as NAME or NAME:MIN_CONFIDENCE (percent), e.g. `Cat:80`.",
        examples=["Cat:80"],
    ),
    AfterValidator(_label_spec),
]
MetadataSpec = Annotated[
    str,
    Field(
        max_length=300,
        json_schema_extra={"pattern": METADATA_SPEC_PATTERN},
        description="A metadata filter as KEY=VALUE; repeat a key to accept several values.",
        examples=["source=scikit-image"],
    ),
    AfterValidator(_metadata_spec),
]
MetadataKey = Annotated[
    str,
    Field(min_length=1, max_length=100, json_schema_extra={"pattern": METADATA_KEY_PATTERN}),
    AfterValidator(_metadata_key),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Box = Annotated[
    tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat],
    Field(
        description="Search with this part of the query image (an upload or the `asset_id`'s): "
        "x, y, width, height as fractions 0..1 of its width and height.",
        examples=[[0.5, 0.0, 0.5, 0.5]],
    ),
    AfterValidator(check_box),
]
BoxSpec = Annotated[
    str,
    Field(
        max_length=200,
        description="Search with this part of the query image: X,Y,W,H as fractions 0..1.",
        examples=["0.5,0,0.5,0.5"],
    ),
    AfterValidator(parse_box),
]


def parse_label_specs(specs: list[str]) -> list[LabelFilter]:
    return [LabelFilter.parse(spec) for spec in specs]


class SearchOptions(BaseModel):
    """Everything a search can add to its query, whatever the query is."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        None,
        max_length=500,
        description="Full-text query over titles, descriptions and keywords; with an image, "
        "asset or vector the search is hybrid.",
        examples=["sofa"],
    )
    k: int = Field(10, ge=1, le=MAX_K, description="Hits per page.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Hits to skip (pagination).")
    min_score: FiniteFloat | None = Field(
        None, description="Drop hits whose score is below this (the score the hits are ranked by)."
    )
    hybrid: Literal["rrf", "linear"] = Field(
        "rrf",
        description="How a hybrid search combines the vector and text rankings: reciprocal "
        "rank fusion, or a weighted sum of cosine similarity and normalised BM25.",
    )
    vector_weight: FiniteFloat = Field(
        0.5, ge=0, le=1, description="Share of the vector score in a `linear` hybrid score."
    )
    rrf_k: int = Field(60, ge=1, le=1000, description="Rank constant of `rrf` fusion.")
    exclude_ids: list[AssetId] = Field(
        default_factory=list, max_length=1000, description="Assets never returned."
    )
    regions: RegionMode = Field(
        "off",
        description="Region search: `library` also finds the query inside bigger images, "
        "`query` also finds what appears in parts of the query image, `both`, or `off` (whole "
        "images only, the default). A hit's `region` says which region matched, with its box.",
    )
    box: Box | None = None
    tags: list[TagName] = Field(
        default_factory=list,
        max_length=MAX_FILTERS,
        description="Custom tags every hit must pass (`GET /tags` lists them).",
    )
    tags_none: list[TagName] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="Custom tags no hit may pass."
    )


class LabelFilters(BaseModel):
    """Label filters, each with a minimum confidence in percent."""

    model_config = ConfigDict(extra="forbid")

    all: list[LabelFilter] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="Every one must match."
    )
    any: list[LabelFilter] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="At least one must match."
    )
    none: list[LabelFilter] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="None may match."
    )


class SearchQuery(SearchOptions):
    """A JSON search: by an indexed asset, by a vector, by text, or by filters alone."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"asset_id": "c9c3aab28a330cf8c4deecaf68a21e2c", "k": 5},
                {
                    "text": "espresso",
                    "labels": {"all": [{"name": "Cup", "min_confidence": 50}]},
                    "metadata": {"source": ["scikit-image"]},
                },
            ]
        },
    )

    asset_id: AssetId | None = Field(
        None, description="Find assets similar to this indexed one (it is left out of the hits)."
    )
    vector: list[FiniteFloat] | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="A query embedding of the active model's dimension (see /readyz).",
    )
    labels: LabelFilters = Field(default_factory=LabelFilters)
    metadata: dict[
        MetadataKey,
        Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=50)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_FILTERS,
        description="Metadata key -> accepted values (any of them).",
        examples=[{"source": ["scikit-image"]}],
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchQuery:
        if self.asset_id is not None and self.vector is not None:
            raise ValueError("give asset_id or vector, not both")
        if self.box is not None and self.asset_id is None:
            raise ValueError("a box is a part of the query image: give it with an asset_id")
        return self

    def to_request(self) -> SearchRequest:
        return _request(
            self,
            labels_all=self.labels.all,
            labels_any=self.labels.any,
            labels_none=self.labels.none,
            metadata=self.metadata,
            vector=self.vector,
        )


class FormFilters(SearchOptions):
    """Search options in the flat ``NAME:MIN_CONFIDENCE`` / ``KEY=VALUE`` form of query strings
    and multipart fields, where nested JSON does not fit."""

    # Fewer than in JSON: the longest valid query string must stay under the 64 KiB request
    # line the HTTP server accepts (uvicorn answers 400 above it, before the app sees it).
    exclude_ids: list[AssetId] = Field(
        default_factory=list, max_length=MAX_FORM_EXCLUDE_IDS, description="Assets never returned."
    )

    labels_all: list[LabelSpec] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="Labels that must all match."
    )
    labels_any: list[LabelSpec] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="At least one must match."
    )
    labels_none: list[LabelSpec] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="None may match."
    )
    metadata: list[MetadataSpec] = Field(
        default_factory=list, max_length=MAX_FILTERS, description="Metadata filters."
    )
    box: BoxSpec | None = None  # type: ignore[assignment]  # X,Y,W,H: one form field

    def to_request(self) -> SearchRequest:
        return _request(
            self,
            labels_all=parse_label_specs(self.labels_all),
            labels_any=parse_label_specs(self.labels_any),
            labels_none=parse_label_specs(self.labels_none),
            metadata=parse_metadata_filters(self.metadata),
            vector=None,
        )


def _request(options: SearchOptions, **fields: Any) -> SearchRequest:
    return SearchRequest(
        text=options.text,
        k=options.k,
        offset=options.offset,
        min_score=options.min_score,
        hybrid=options.hybrid,
        vector_weight=options.vector_weight,
        rrf_k=options.rrf_k,
        exclude_ids=options.exclude_ids,
        regions=options.regions,
        tags=options.tags,
        tags_none=options.tags_none,
        **fields,
    )


class Asset(AssetDocument):
    """An indexed asset as the API shows it: the stored document without its embedding, plus
    links to its image and thumbnail."""

    embedding: SkipJsonSchema[None] = Field(None, exclude=True)
    regions: SkipJsonSchema[list[Any]] = Field(default_factory=list, exclude=True)
    image_url: str = Field(description="The original file (local files only).")
    thumbnail_url: str = Field(description="A JPEG thumbnail, cached by the server.")

    @classmethod
    def from_document(cls, doc: AssetDocument) -> Asset:
        # The content hash in the thumbnail URL lets browsers cache it until the file changes.
        return cls.model_validate(
            {
                **doc.model_dump(exclude={"embedding", "regions"}),
                "image_url": f"/assets/{doc.id}/image",
                "thumbnail_url": f"/assets/{doc.id}/thumbnail?v={doc.sha256[:12]}",
            }
        )


class SearchHit(Hit):
    """One hit. ``score`` ranks it; ``vector_score`` (cosine similarity) and ``text_score``
    (BM25) say which part of the query it matched, ``matched_labels`` which label filters."""

    rank: int = Field(description="1-based position in the whole result list.")
    document: Asset


_CAT_ID = "c9c3aab28a330cf8c4deecaf68a21e2c"
_CAT_LABEL = {
    "name": "Cat",
    "confidence": 99.85,
    "parents": ["Feline", "Carnivore", "Mammal", "Vertebrate", "Animal"],
}
_RESULT_EXAMPLE = {
    "hits": [
        {
            "rank": 1,
            "id": _CAT_ID,
            "score": 0.987,
            "vector_score": 0.987,
            "text_score": None,
            "matched_labels": [_CAT_LABEL],
            "document": {
                "id": _CAT_ID,
                "uri": "file:///home/ann/Pictures/chelsea_flip.jpg",
                "sha256": "2c0357a57121a80b7145db42b093f743c9a0405e33f9e48fd102319a6ce3af89",
                "fingerprint": "97dd530f25fb59fd7e7dbf099535da0a9284bbeafef5911800ababc27483e4fa",
                "size_bytes": 35042,
                "mtime_ns": 1795351371488478113,
                "width": 451,
                "height": 300,
                "format": "JPEG",
                "title": "Chelsea the cat (flip)",
                "description": "A tabby cat sitting on a rug, looking at the camera.",
                "keywords": ["cat", "pet", "animal"],
                "metadata": {"source": "scikit-image"},
                "labels": [
                    {"name": "Egyptian Cat", "confidence": 71.2, "parents": ["Domestic Cat"]},
                    _CAT_LABEL,
                ],
                "model": "mobilenet_v2-imagenet",
                "model_version": "1",
                "ingested_at": "2026-11-22T12:00:00Z",
                "image_url": f"/assets/{_CAT_ID}/image",
                "thumbnail_url": f"/assets/{_CAT_ID}/thumbnail?v=2c0357a57121",
            },
        }
    ],
    "total_candidates": 37,
    "k": 1,
    "offset": 0,
    "next_offset": 1,
    "query": "image",
    "model": "mobilenet_v2-imagenet@1",
    "took_ms": 46.2,
}


class SearchResult(BaseModel):
    """One page of hits."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RESULT_EXAMPLE]})

    hits: list[SearchHit]
    total_candidates: int | None = Field(
        None, description="How many assets passed the filters, where the store knows."
    )
    k: int
    offset: int
    next_offset: int | None = Field(
        description="`offset` of the next page, or null when this page is the last."
    )
    query: Literal["image", "asset", "vector", "text", "filters"] = Field(
        description="What the hits were ranked by (text joins an image, asset or vector query)."
    )
    model: str = Field(description="Model version of the index searched.")
    took_ms: float = Field(description="Server time for this search, embedding included.")
    note: str | None = Field(
        None,
        description="What could not be done as asked, and why (e.g. a box too small for the "
        "model's grid: the whole image was searched instead).",
    )


class JudgementIn(BaseModel):
    """A yes/no on whether a custom tag applies to the asset."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"tag": "room", "judge": 1}]}
    )

    tag: Annotated[TagName, AfterValidator(check_name)]
    judge: Literal[0, 1] = Field(description="1 (or true): the tag applies; 0 (or false): not.")


class JudgementOut(BaseModel):
    judgement: Judgement
    count: int = Field(description="Judgements of this tag in the store now.")


class Judgements(BaseModel):
    judgements: list[Judgement]


class Tag(TagInfo):
    roc: str | None = Field(None, description="URL of the newest version's ROC curve (PNG).")

    @classmethod
    def from_info(cls, info: TagInfo) -> Tag:
        roc = f"/tags/{info.name}/roc.png" if info.version is not None else None
        return cls(**info.model_dump(), roc=roc)


class Tags(BaseModel):
    """The custom tags: trained ones with their figures, and judged ones not trained yet."""

    tags: list[Tag]


class LabelCount(BaseModel):
    name: str
    count: int


class LabelCounts(BaseModel):
    """Label facets: how many assets carry each label with at least ``min_confidence``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "min_confidence": 50,
                    "labels": [{"name": "Animal", "count": 8}, {"name": "Cat", "count": 6}],
                }
            ]
        }
    )

    min_confidence: float
    labels: list[LabelCount]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "model": "mobilenet_v2-imagenet@1",
                    "dimension": 1280,
                    "store": "embedded",
                    "documents": 37,
                    "reason": None,
                }
            ]
        }
    )

    status: Literal["ready", "not ready"]
    model: str | None = Field(None, description="Model version being served.")
    dimension: int | None = Field(None, description="Length of the model's vectors.")
    store: str = Field(description="Store backend.")
    documents: int | None = Field(None, description="Assets in the active index.")
    reason: str | None = Field(None, description="Why the service is not ready.")


class ErrorResponse(BaseModel):
    """Every error but validation errors: a message saying what went wrong."""

    detail: str = Field(examples=["no indexed asset with id 'abc'"])


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query, path or form, then the field.")
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: which fields are wrong and why."""

    detail: list[ValidationIssue]
    message: str = Field(
        description="The same in one line, e.g. `query.k: Input should be less than or equal "
        "to 100`."
    )


def error_message(loc: list[str | int] | tuple[str | int, ...], msg: str) -> str:
    """``body.labels.all.0.min_confidence: ...``: the field named the way a client wrote it."""
    where = ".".join(str(part) for part in loc)
    return f"{where}: {msg}" if where else msg


def unit_vector(vector: list[float], dim: int) -> list[float]:
    """``vector`` scaled to unit length, as the stores expect; ``ValueError`` if it cannot be.

    Scaled by its largest component first, so neither huge nor tiny finite values overflow or
    vanish on the way (a zero-length query would make every cosine score NaN).
    """
    if len(vector) != dim:
        raise ValueError(f"vector has {len(vector)} dimensions; the active model gives {dim}")
    largest = max(abs(x) for x in vector)
    if largest == 0:
        raise ValueError("vector must not be all zeros: it has no direction to compare")
    scaled = [x / largest for x in vector]
    norm = math.sqrt(math.fsum(x * x for x in scaled))
    return [x / norm for x in scaled]
