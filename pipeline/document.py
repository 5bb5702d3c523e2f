"""The one document model of an indexed asset, shared by the pipeline, every store and the API."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


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
    embedding: list[float] | None = Field(
        default=None, description="L2-normalised image embedding (omitted from API responses)."
    )
    model: str = Field(description="Backbone name from the model registry.")
    model_version: str
    ingested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


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
    Airflow DAG as XCom, and kept by the store (``Store.record_run``) for Dashboards.

    A run with work to do is recorded when it starts (``outcome`` "running"), so a run that is
    killed still shows up; the next run over the same source marks it "interrupted"."""

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
