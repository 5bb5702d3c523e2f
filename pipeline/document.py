"""The one document model of an indexed asset, shared by the pipeline, every store and the API."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, PlainSerializer, PlainValidator, WithJsonSchema


class Label(BaseModel):
    """A label as Amazon Rekognition's DetectLabels returns it, stored in snake case.

    ``confidence`` is a percentage (0-100). ``parents`` lists the label's ancestors in the
    label hierarchy, nearest first; each ancestor usually appears as a label of its own too,
    with its aggregated confidence.
    """

    name: str
    confidence: float = Field(ge=0, le=100)
    parents: list[str] = Field(default_factory=list)

    def to_rekognition(self) -> dict[str, Any]:
        """The DetectLabels shape: ``{"Name", "Confidence", "Parents": [{"Name"}]}``."""
        return {
            "Name": self.name,
            "Confidence": round(self.confidence, 3),
            "Parents": [{"Name": p} for p in self.parents],
        }


def _vector(value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("a vector is a list of numbers") from None
    if array.ndim != 1 or not len(array):
        raise ValueError(f"a vector is a non-empty list of numbers, not of shape {array.shape}")
    return array


Vector = Annotated[
    np.ndarray,
    PlainValidator(_vector),
    PlainSerializer(lambda array: array.tolist(), when_used="json"),
    WithJsonSchema({"type": "array", "items": {"type": "number"}}),
]
"""A region's embedding, held as float32 numpy and a list only in JSON. Why: an asset has 29
regions of 1,280 numbers, and moving them through Python floats (``tolist``, validation,
Arrow's conversion) cost more CPU per image than the model itself (docs/benchmarks.md,
section 8)."""


class Region(BaseModel):
    """A part of an asset's image and its embedding (``pipeline/regions.py``), so that an
    object filling part of a photo is found from its own picture, and the other way round."""

    box: tuple[float, float, float, float] = Field(
        description="x, y, width, height: fractions 0..1 of the upright image."
    )
    embedding: Vector = Field(description="L2-normalised, comparable with `embedding`.")

    def __eq__(self, other: object) -> bool:
        """Field by field, the vector by value (numpy's ``==`` compares element-wise)."""
        if not isinstance(other, Region):
            return NotImplemented
        return self.box == other.box and np.array_equal(self.embedding, other.embedding)


TAG_NAME = r"[a-z][a-z0-9_]{0,39}"
"""A custom tag's name: lower-case letters, digits and ``_``, starting with a letter: a keyword
every store and query language takes as is."""


class TagScore(BaseModel):
    """A custom tag's verdict on an asset (``pipeline/tags.py``): the classifier's score, and
    whether it reaches the threshold chosen at training for the tolerated false-positive rate."""

    score: float = Field(ge=0, le=1, description="Probability the tag applies.")
    passed: bool = Field(description="Whether the score reaches the version's threshold.")
    version: int = Field(description="The tag classifier's version that scored it.")


class AssetDocument(BaseModel):
    """Everything the index knows about one media asset."""

    id: str = Field(description="Stable id derived from the source URI.")
    uri: str = Field(description="Where the asset lives (file:// URI for local files).")
    sha256: str = Field(description="SHA-256 of the file's bytes.")
    fingerprint: str = Field(
        description="Hash of the content and the manifest metadata: a change means re-index."
    )
    size_bytes: int = 0
    mtime_ns: int = 0
    width: int
    height: int
    format: str
    title: str | None = None
    description: str | None = None
    keywords: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Other manifest columns, as strings."
    )
    labels: list[Label] = Field(default_factory=list)
    tags: dict[str, TagScore] = Field(
        default_factory=dict, description="Custom tags learned from judgements, by name."
    )
    embedding: list[float] | None = Field(
        default=None, description="L2-normalised image embedding (omitted from API responses)."
    )
    regions: list[Region] = Field(
        default_factory=list,
        description="Region vectors with their boxes (read with the embedding only).",
    )
    model: str = Field(description="Backbone name from the model registry.")
    model_version: str
    ingested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Judgement(BaseModel):
    """A person's yes/no on whether a custom tag applies to an indexed asset: what a tag
    classifier learns from. The latest judgement of an asset for a tag replaces earlier ones."""

    tag: str
    asset_id: str
    uri: str = Field(description="The asset's URI when judged (kept if the asset goes away).")
    judge: Literal[0, 1] = Field(description="1: the tag applies; 0: it does not.")
    source: str = Field("cli", description="Where the judgement came from (cli, api, file).")
    judged_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def id(self) -> str:
        return judgement_id(self.tag, self.asset_id)


def judgement_id(tag: str, asset_id: str) -> str:
    return f"{tag}/{asset_id}"


class QuarantineRecord(BaseModel):
    """A source file that could not be indexed, with the reason. Kept so it is not retried
    until the file changes."""

    id: str
    uri: str
    sha256: str
    fingerprint: str
    size_bytes: int = 0
    mtime_ns: int = 0
    reason: str
    quarantined_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class StoredState(BaseModel):
    """What incremental ingestion needs to know about an id already in the store."""

    uri: str
    sha256: str
    fingerprint: str
    size_bytes: int
    mtime_ns: int
    quarantined: bool = False


STATE_FIELDS = ["id", *(name for name in StoredState.model_fields if name != "quarantined")]
"""The stored fields ``StoredState`` is read from."""


def compute_fingerprint(sha256: str, fields: dict[str, Any]) -> str:
    """Content hash plus the indexed metadata, so a manifest edit also triggers a re-index."""
    payload = json.dumps({"sha256": sha256, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class QuarantinedItem(BaseModel):
    uri: str
    reason: str


Outcome = Literal["running", "interrupted", "indexed", "quarantined"]


class IngestSummary(BaseModel):
    """What an ingestion run did: printed by ``lookalike ingest --json``, returned by the
    Airflow DAG as XCom, and kept in the run log (``RunLog``) for Dashboards.

    A run with work to do is recorded when it starts (``outcome`` "running"), so a run that is
    killed still shows up; the next run over the same source marks it "interrupted"."""

    kind: Literal["ingest"] = "ingest"
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    source: str = ""
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    quarantined: list[QuarantinedItem] = Field(
        default_factory=list, description="Files this run quarantined, with the reason."
    )
    quarantined_earlier: int = Field(
        0,
        description="Files of the source that an earlier run quarantined and that did not change "
        "since (not retried; `lookalike quarantine` lists them).",
    )
    outcome: Outcome = Field(
        "indexed",
        description="indexed: every file of the source is indexed; quarantined: some are "
        "quarantined (this run or earlier); running: not finished (yet); interrupted: it never "
        "finished (killed or failed; a later run over the source completed its work).",
    )
    model: str = ""
    duration_s: float = 0.0
    images_per_s: float = 0.0
    stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="Time spent per stage (read wait, embed, write)."
    )


class AliasSwitch(BaseModel):
    """One move of the alias searches follow, kept in the run log next to the ingest runs: a
    rollout's switch (with what its backfill did), a rollback, or ``lookalike index
    activate``. ``rollback`` finds where "back" is from these."""

    kind: Literal["switch"] = "switch"
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str = Field(description="The model version the alias names now.")
    previous: str | None = Field(None, description="The one it named before (None: nothing).")
    trigger: Literal["rollout", "rollback", "activate", "first ingest"]
    embedded: int = Field(0, description="Documents a rollout embedded for the new version.")
    resumed: int = Field(0, description="Documents an earlier attempt of the rollout wrote.")
    duration_s: float = 0.0


# -- the field table --------------------------------------------------------------------------

Kind = Literal[
    "keyword",
    "keywords",
    "text",
    "integer",
    "long",
    "float",
    "date",
    "vector",
    "regions",
    "labels",
    "json",
]
Backend = Literal["embedded", "cluster"]


@dataclass(frozen=True)
class FieldSpec:
    """One field of an indexed record, as every store lays it out.

    ``kind`` decides the physical type in each store (``pipeline/store/``: the Arrow schema of
    the embedded store, the OpenSearch and Elasticsearch mappings, all generated from the
    tables below). ``filterable`` fields may be named by a filter and are indexed for it;
    ``analyzed`` fields are searched as full text (BM25, with ``LOOKALIKE_TEXT_ANALYZER`` on a
    cluster); ``case_insensitive`` keywords match filters whatever their case. Fields with
    ``derive`` are not part of the document model: a store computes them
    from the document to search it (``stores`` says which stores need them), and never reads
    them back.
    """

    name: str
    kind: Kind
    description: str
    filterable: bool = False
    analyzed: bool = False
    case_insensitive: bool = False
    derive: Callable[[Any], Any] | None = None
    stores: frozenset[Backend] = frozenset({"embedded", "cluster"})

    @property
    def stored(self) -> bool:
        return self.derive is None


def label_key(name: str, confidence: float) -> str:
    """``"tabby cat:71"``: a label as one keyword per whole percent, which the embedded store
    filters on (LanceDB filters cannot look inside a list of structs)."""
    return f"{name.casefold()}:{math.floor(confidence)}"


def metadata_pairs(metadata: dict[str, str]) -> list[str]:
    """``["source=scikit-image"]``: metadata as keywords, so any column is filterable without
    a mapping of its own."""
    return [f"{key}={value}" for key, value in sorted(metadata.items())]


ASSET_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("id", "keyword", "Stable id from the source URI.", filterable=True),
    FieldSpec("uri", "keyword", "Where the asset lives.", filterable=True),
    FieldSpec("sha256", "keyword", "SHA-256 of the file's bytes."),
    FieldSpec("fingerprint", "keyword", "Content and metadata hash: a change means re-index."),
    FieldSpec("size_bytes", "long", "File size.", filterable=True),
    FieldSpec("mtime_ns", "long", "File modification time (ns)."),
    FieldSpec("width", "integer", "Width in pixels, upright.", filterable=True),
    FieldSpec("height", "integer", "Height in pixels, upright.", filterable=True),
    FieldSpec("format", "keyword", "Image format (JPEG, PNG...).", filterable=True),
    FieldSpec("title", "text", "Title from the manifest.", analyzed=True),
    FieldSpec("description", "text", "Description from the manifest.", analyzed=True),
    FieldSpec("keywords", "keywords", "Keywords from the manifest.", True, analyzed=True),
    FieldSpec("metadata", "json", "Other manifest columns, as strings."),
    FieldSpec("labels", "labels", "Labels with confidences and parents."),
    FieldSpec("tags", "json", "Custom tags: name -> score, passed, classifier version."),
    FieldSpec("embedding", "vector", "L2-normalised image embedding."),
    FieldSpec("regions", "regions", "Region boxes and vectors, a document's many vectors."),
    FieldSpec("model", "keyword", "Backbone name from the model registry.", filterable=True),
    FieldSpec("model_version", "keyword", "Backbone version.", filterable=True),
    FieldSpec("ingested_at", "date", "When the document was written.", filterable=True),
    FieldSpec(
        "metadata_kv",
        "keywords",
        "Metadata as KEY=VALUE keywords, for metadata filters.",
        filterable=True,
        derive=lambda doc: metadata_pairs(doc.metadata),
    ),
    FieldSpec(
        "label_names",
        "keywords",
        "Label names, for filters without a confidence and for facets.",
        filterable=True,
        case_insensitive=True,
        derive=lambda doc: [lab.name for lab in doc.labels],
        stores=frozenset({"cluster"}),
    ),
    FieldSpec(
        "label_keys",
        "keywords",
        "Labels as name:whole-percent keywords, for confidence filters.",
        filterable=True,
        derive=lambda doc: [label_key(lab.name, lab.confidence) for lab in doc.labels],
        stores=frozenset({"embedded"}),
    ),
    FieldSpec(
        "tag_names",
        "keywords",
        "The custom tags an asset passes, for tag filters.",
        filterable=True,
        derive=lambda doc: sorted(name for name, tag in doc.tags.items() if tag.passed),
    ),
    FieldSpec(
        "tag_versions",
        "keywords",
        "Custom tags as NAME@VERSION of the classifier that scored them, to find stale ones.",
        filterable=True,
        derive=lambda doc: sorted(f"{name}@{tag.version}" for name, tag in doc.tags.items()),
    ),
    FieldSpec(
        "text",
        "text",
        "Title, description and keywords in one column, for its full-text index.",
        analyzed=True,
        derive=lambda doc: "\n".join(
            filter(None, [doc.title, doc.description, " ".join(doc.keywords)])
        ),
        stores=frozenset({"embedded"}),
    ),
)
"""The asset index. Document fields in ``AssetDocument`` order, then the derived ones."""

TAG_FIELDS = ("tags", "tag_names", "tag_versions")
"""What scoring custom tags changes in a document: all that ``DocumentIndex.set_tags`` writes."""

QUARANTINE_FIELDS: tuple[FieldSpec, ...] = (
    *(f for f in ASSET_FIELDS if f.name in ("id", "uri", "sha256", "fingerprint")),
    *(f for f in ASSET_FIELDS if f.name in ("size_bytes", "mtime_ns")),
    FieldSpec("reason", "text", "Why the file could not be indexed.", analyzed=True),
    FieldSpec("quarantined_at", "date", "When.", filterable=True),
)
"""The quarantine log: one record per file that could not be indexed."""


JUDGEMENT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "id",
        "keyword",
        "TAG/ASSET_ID: one judgement per asset and tag.",
        filterable=True,
        derive=lambda judgement: judgement.id,
    ),
    FieldSpec("tag", "keyword", "The custom tag judged.", filterable=True),
    FieldSpec("asset_id", "keyword", "The asset judged.", filterable=True),
    FieldSpec("uri", "keyword", "The asset's URI when judged."),
    FieldSpec("judge", "integer", "1: the tag applies; 0: it does not.", filterable=True),
    FieldSpec("source", "keyword", "Where it came from: cli, api, file.", filterable=True),
    FieldSpec("judged_at", "date", "When.", filterable=True),
)
"""The judgements custom tags are trained from."""


RUN_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("run_id", "keyword", "The run's (or switch's) id.", filterable=True),
    FieldSpec("kind", "keyword", "ingest or switch.", filterable=True),
    FieldSpec("started_at", "date", "When it started.", filterable=True),
    FieldSpec("model", "keyword", "The model version written (or now searched).", True),
    FieldSpec("source", "keyword", "Ingest: the folder's URI.", filterable=True),
    *(
        FieldSpec(name, "integer", f"Ingest: assets {name}.")
        for name in ("new", "updated", "unchanged", "deleted")
    ),
    FieldSpec("quarantined", "json", "Ingest: the files quarantined, with reasons."),
    FieldSpec("quarantined_earlier", "integer", "Ingest: unchanged files quarantined before."),
    FieldSpec("outcome", "keyword", "Ingest: indexed, quarantined, running, interrupted.", True),
    FieldSpec(
        "quarantined_count",
        "integer",
        "Ingest: how many files were quarantined.",
        derive=lambda run: len(getattr(run, "quarantined", [])),
    ),
    FieldSpec("duration_s", "float", "Seconds it took."),
    FieldSpec("images_per_s", "float", "Ingest: images embedded per second."),
    FieldSpec("stage_seconds", "json", "Ingest: seconds per stage."),
    FieldSpec("previous", "keyword", "Switch: the model version searched before.", True),
    FieldSpec("trigger", "keyword", "Switch: rollout, rollback, activate, first ingest.", True),
    FieldSpec("embedded", "integer", "Switch: documents the rollout embedded."),
    FieldSpec("resumed", "integer", "Switch: documents an earlier attempt wrote."),
)
"""The run log: ingest runs and alias switches, told apart by ``kind``."""


def fields_for(fields: tuple[FieldSpec, ...], backend: Backend) -> tuple[FieldSpec, ...]:
    """The fields one kind of store lays out."""
    return tuple(f for f in fields if backend in f.stores)


def field(fields: tuple[FieldSpec, ...], name: str) -> FieldSpec:
    """The spec of ``name``; ``KeyError`` naming the fields there are."""
    for spec in fields:
        if spec.name == name:
            return spec
    raise KeyError(f"no field {name!r}; fields: {', '.join(f.name for f in fields)}")
