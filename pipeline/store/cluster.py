"""What the OpenSearch and Elasticsearch stores share: names, mappings, documents, filters, bulk
writes with retries, and the ``Store`` methods that do not depend on the vector query dialect.

Both clients descend from the same REST API, so one base class (``ClusterStore``) implements the
index lifecycle, the alias, writes, incremental state, quarantine and run records; the backends
(``pipeline/store/opensearch.py``, ``pipeline/store/elasticsearch.py``) add their vector field,
their vector and hybrid queries and how their similarity scores map back to cosine similarity.

Every request body is built by a pure function of this module or of a backend module, so the
contract tests can validate exactly what is sent against the OpenSearch API specification.

Layout on the cluster, for the base name ``assets`` (``LOOKALIKE_TABLE``):

* ``assets__<model_id>``: one concrete index per model version (same naming as the embedded
  store's tables), its ``_meta`` records the model id and the vector dimension;
* ``assets``: the alias searches follow, moved atomically by ``activate()``;
* ``assets-quarantine`` and ``assets-runs``: quarantine records and ingestion run summaries,
  shared by all model versions (they are about files and runs, not vectors), in indices of their
  own so Dashboards can chart them.
"""

from __future__ import annotations

import functools
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pipeline.document import AssetDocument, IngestSummary, QuarantineRecord, StoredState
from pipeline.settings import Settings
from pipeline.store.base import (
    Hit,
    IndexInfo,
    LabelFilter,
    SearchRequest,
    SearchResponse,
    Store,
    StoreError,
)


def client_options(settings: Settings, *, auth_key: str, timeout_key: str) -> dict[str, Any]:
    """Connection options both Python clients take, under the names each one uses for basic
    auth and the request timeout: TLS and auth as configured, transient 502/503/504 and
    time-outs retried."""
    auth = None
    if settings.cluster_user and settings.cluster_password:
        auth = (settings.cluster_user, settings.cluster_password.get_secret_value())
    return {
        "hosts": settings.cluster_urls,
        auth_key: auth,
        "verify_certs": settings.cluster_verify_certs,
        "ssl_show_warn": settings.cluster_verify_certs,
        "ca_certs": str(settings.cluster_ca_certs) if settings.cluster_ca_certs else None,
        timeout_key: settings.cluster_timeout_s,
        "max_retries": 3,
        "retry_on_timeout": True,
        "retry_on_status": (502, 503, 504),
        "http_compress": True,
    }


SCHEMA_VERSION = 1
"""Bumped when the mapping changes incompatibly; recorded in every index's ``_meta``."""
FOLD_NORMALIZER = "lookalike_folded"
TEXT_FIELDS = ["title", "description", "keywords.text"]
STATE_FIELDS = ["id", "uri", "sha256", "fingerprint", "size_bytes", "mtime_ns"]
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
"""Bulk item statuses worth retrying: rejected (queue full) or a shard/node briefly away."""
TEMPLATE_PRIORITY = 200
MAX_KNN_K = 10_000
"""The largest ``k`` (and candidate list) either cluster accepts in a kNN query."""

# -- names -------------------------------------------------------------------------------------


def index_name(base: str, model_id: str) -> str:
    """One concrete index per model version, e.g. ``assets__mobilenet_v2_imagenet_1``.

    The same rule as the embedded store's table names; the result is lower case ``[a-z0-9_]``,
    which every OpenSearch/Elasticsearch index name accepts."""
    return f"{base}__{re.sub(r'[^A-Za-z0-9]+', '_', model_id).strip('_').lower()}"


def quarantine_index(base: str) -> str:
    return f"{base}-quarantine"


def runs_index(base: str) -> str:
    return f"{base}-runs"


# -- mappings shared by both backends -----------------------------------------------------------

_KEYWORD = {"type": "keyword"}
_FOLDED = {"folded": {"type": "keyword", "normalizer": FOLD_NORMALIZER}}


def index_settings(shards: int) -> dict[str, Any]:
    """Shards as configured; replicas follow the cluster size (0 on one node, 1 from two), so
    a single-node development cluster stays green and a real cluster keeps a copy."""
    return {
        "index": {"number_of_shards": shards, "auto_expand_replicas": "0-1"},
        "analysis": {"normalizer": {FOLD_NORMALIZER: {"type": "custom", "filter": ["lowercase"]}}},
    }


def asset_properties(vector_field: dict[str, Any], analyzer: str) -> dict[str, Any]:
    """The asset fields, with the backend's vector field as ``embedding``.

    Labels are stored twice: ``labels`` (nested, so "label X with confidence >= c" matches name
    and confidence of the *same* label) and ``label_names`` (a flat keyword array: fast filters
    without a confidence, terms aggregations for Dashboards). ``*.folded`` sub-fields lower-case
    names so label filters are case-insensitive while aggregations keep the original spelling.
    Metadata is kept in ``_source`` only (any column name works, no mapping explosion) and
    indexed as ``key=value`` keywords in ``metadata_kv``, exactly as the embedded store filters.
    """
    text = {"type": "text", "analyzer": analyzer}
    return {
        "id": _KEYWORD,
        "uri": _KEYWORD,
        "sha256": _KEYWORD,
        "fingerprint": _KEYWORD,
        "size_bytes": {"type": "long"},
        "mtime_ns": {"type": "long"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "format": _KEYWORD,
        "title": {**text, "fields": {"raw": {"type": "keyword", "ignore_above": 512}}},
        "description": text,
        "keywords": {"type": "keyword", "fields": {"text": text}},
        "metadata": {"type": "object", "enabled": False},
        "metadata_kv": _KEYWORD,
        "labels": {
            "type": "nested",
            "properties": {
                "name": {"type": "keyword", "fields": _FOLDED},
                "confidence": {"type": "float"},
                "parents": _KEYWORD,
            },
        },
        "label_names": {"type": "keyword", "fields": _FOLDED},
        "embedding": vector_field,
        "model": _KEYWORD,
        "model_version": _KEYWORD,
        "ingested_at": {"type": "date"},
    }


def asset_mappings(
    vector_field: dict[str, Any], meta: dict[str, Any], analyzer: str
) -> dict[str, Any]:
    """``dynamic: strict``: a document with a field the mapping does not know is rejected (and
    reported) instead of silently growing the mapping."""
    return {
        "dynamic": "strict",
        "_meta": meta,
        "properties": asset_properties(vector_field, analyzer),
    }


def asset_meta(model_id: str | None, dim: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"managed_by": "lookalike", "schema_version": SCHEMA_VERSION}
    if model_id is not None:
        meta["model_id"] = model_id
    meta["dimension"] = dim
    return meta


def quarantine_template(base: str, shards: int = 1) -> dict[str, Any]:
    """Index template for quarantine records: one per file, with the reason, for Dashboards."""
    properties = {
        **{field: _KEYWORD for field in ("id", "uri", "sha256", "fingerprint")},
        "size_bytes": {"type": "long"},
        "mtime_ns": {"type": "long"},
        "reason": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 1024}}},
        "quarantined_at": {"type": "date"},
    }
    return _template([quarantine_index(base)], shards, properties, "quarantine records")


def runs_template(base: str, shards: int = 1) -> dict[str, Any]:
    """Index template for ingestion run summaries (``IngestSummary`` plus a quarantined count)."""
    properties = {
        "run_id": _KEYWORD,
        "source": _KEYWORD,
        "started_at": {"type": "date"},
        **{n: {"type": "integer"} for n in ("new", "updated", "unchanged", "deleted")},
        "quarantined": {"type": "object", "enabled": False},
        "quarantined_count": {"type": "integer"},
        "quarantined_earlier": {"type": "integer"},
        "outcome": _KEYWORD,
        "model": _KEYWORD,
        "duration_s": {"type": "float"},
        "images_per_s": {"type": "float"},
        "stage_seconds": {"type": "object", "enabled": False},
    }
    return _template([runs_index(base)], shards, properties, "ingestion run summaries")


def _template(
    patterns: list[str], shards: int, properties: dict[str, Any], what: str
) -> dict[str, Any]:
    meta = {"managed_by": "lookalike", "schema_version": SCHEMA_VERSION, "description": what}
    return {
        "index_patterns": patterns,
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": index_settings(shards),
            "mappings": {"dynamic": "strict", "_meta": meta, "properties": properties},
        },
        "_meta": meta,
    }


def index_body_from_template(template: dict[str, Any]) -> dict[str, Any]:
    """A create-index body equal to what the template gives, so creating an index works the
    same whether or not ``lookalike index apply`` ran first."""
    return {
        "settings": template["template"]["settings"],
        "mappings": template["template"]["mappings"],
    }


# -- documents ---------------------------------------------------------------------------------


def to_source(doc: AssetDocument) -> dict[str, Any]:
    """The ``_source`` of an asset: the document model plus the derived filter fields."""
    source = doc.model_dump(mode="json")
    source["label_names"] = [lab.name for lab in doc.labels]
    source["metadata_kv"] = [f"{k}={v}" for k, v in sorted(doc.metadata.items())]
    return source


def from_source(source: dict[str, Any], with_embedding: bool = False) -> AssetDocument:
    fields = {k: v for k, v in source.items() if k in AssetDocument.model_fields}
    if not with_embedding:
        fields.pop("embedding", None)
    return AssetDocument.model_validate(fields)


def run_source(summary: IngestSummary) -> dict[str, Any]:
    return {**summary.model_dump(mode="json"), "quarantined_count": len(summary.quarantined)}


def run_from_source(source: dict[str, Any]) -> IngestSummary:
    return IngestSummary.model_validate(
        {k: v for k, v in source.items() if k in IngestSummary.model_fields}
    )


# -- query pieces --------------------------------------------------------------------------------


def label_clause(f: LabelFilter) -> dict[str, Any]:
    """One label filter. Without a confidence the flat keyword array answers it; with one, a
    nested query requires name and confidence on the same label (exact, fractions included)."""
    if f.min_confidence <= 0:
        return {"term": {"label_names.folded": f.name}}
    return {
        "nested": {
            "path": "labels",
            "query": {
                "bool": {
                    "filter": [
                        {"term": {"labels.name.folded": f.name}},
                        {"range": {"labels.confidence": {"gte": f.min_confidence}}},
                    ]
                }
            },
        }
    }


def filter_query(request: SearchRequest) -> dict[str, Any] | None:
    """The request's label, metadata and id filters as one ``bool`` filter (no scoring), or
    ``None`` without filters. It goes *inside* the kNN clause (efficient filtering)."""
    filters = [label_clause(f) for f in request.labels_all]
    if request.labels_any:
        filters.append(
            {
                "bool": {
                    "should": [label_clause(f) for f in request.labels_any],
                    "minimum_should_match": 1,
                }
            }
        )
    filters += [
        {"terms": {"metadata_kv": [f"{key}={value}" for value in values]}}
        for key, values in sorted(request.metadata.items())
    ]
    must_not = [label_clause(f) for f in request.labels_none]
    if request.exclude_ids:
        must_not.append({"ids": {"values": list(request.exclude_ids)}})
    if not filters and not must_not:
        return None
    clauses: dict[str, Any] = {}
    if filters:
        clauses["filter"] = filters
    if must_not:
        clauses["must_not"] = must_not
    return {"bool": clauses}


def text_query(text: str) -> dict[str, Any]:
    """BM25 over title, description and keywords. ``most_fields`` sums the fields' scores, the
    closest match to the embedded store's single concatenated text column."""
    return {"multi_match": {"query": text, "fields": TEXT_FIELDS, "type": "most_fields"}}


def filtered_text_query(request: SearchRequest) -> dict[str, Any]:
    query: dict[str, Any] = {"must": [text_query(request.text or "")]}
    if (filters := filter_query(request)) is not None:
        query["filter"] = [filters]
    return {"bool": query}


def text_search_body(request: SearchRequest, size: int) -> dict[str, Any]:
    return {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "query": filtered_text_query(request),
    }


def listing_body(request: SearchRequest, size: int) -> dict[str, Any]:
    """Filters only (no vector, no text): hits score 0 and come in id order, like the embedded
    store's listing."""
    return {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "query": filter_query(request) or {"match_all": {}},
        "sort": ["id"],
    }


def count_body(request: SearchRequest) -> dict[str, Any]:
    """How many documents pass the filters (``SearchResponse.total_candidates``)."""
    return {"query": filter_query(request) or {"match_all": {}}}


def ids_text_body(request: SearchRequest, ids: Sequence[str]) -> dict[str, Any]:
    """BM25 scores of given hits (the text component of a fused hybrid score)."""
    return {
        "size": len(ids),
        "_source": False,
        "query": {"bool": {"must": [text_query(request.text or "")], "filter": [_ids(ids)]}},
    }


def get_body(asset_id: str, source: Any) -> dict[str, Any]:
    """One asset by id; ``source`` says whether the (large) embedding comes back."""
    return {"size": 1, "_source": source, "query": _ids([asset_id])}


def runs_body(limit: int) -> dict[str, Any]:
    """The newest runs first. The sort is in the body, in its long form: the ``field:desc``
    query parameter is OpenSearch's alone (Elasticsearch's client moves it into the body, where
    it names a field ``started_at:desc``), and the published OpenSearch specification's schema
    admits the long form only (two of its alternatives match ``{"field": "desc"}``)."""
    return {"size": limit, "query": {"match_all": {}}, "sort": [{"started_at": {"order": "desc"}}]}


def label_counts_body(min_confidence: float, limit: int) -> dict[str, Any]:
    """Nested terms aggregation over labels with at least ``min_confidence``; a label name
    appears once per asset, so a bucket's count is the number of assets."""
    return {
        "size": 0,
        "aggs": {
            "labels": {
                "nested": {"path": "labels"},
                "aggs": {
                    "confident": {
                        "filter": {"range": {"labels.confidence": {"gte": min_confidence}}},
                        "aggs": {
                            "names": {
                                "terms": {
                                    "field": "labels.name",
                                    "size": limit,
                                    "order": [{"_count": "desc"}, {"_key": "asc"}],
                                }
                            }
                        },
                    }
                },
            }
        },
    }


def alias_swap_body(alias: str, index: str, current: Sequence[str]) -> dict[str, Any]:
    """One ``_aliases`` call: remove the alias from its current indices and add it to ``index``.
    The actions apply atomically, so searches never see no alias or two targets."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": name, "alias": alias}} for name in current if name != index
    ]
    actions.append({"add": {"index": index, "alias": alias}})
    return {"actions": actions}


def _ids(ids: Sequence[str]) -> dict[str, Any]:
    return {"ids": {"values": list(ids)}}


def unit(vector: Sequence[float]) -> list[float]:
    """L2-normalise a query vector: stored embeddings are unit length, so the inner product the
    index computes is then exactly the cosine similarity the embedded store reports."""
    norm = sum(x * x for x in vector) ** 0.5
    if norm == 0:
        raise ValueError("the query vector is all zeros")
    return [x / norm for x in vector]


def fuse(
    request: SearchRequest,
    vector_hits: Sequence[tuple[str, float]],
    text_hits: Sequence[tuple[str, float]],
) -> list[tuple[str, float]]:
    """Client-side hybrid fusion with the embedded store's formulas: RRF is
    ``sum(1 / (rrf_k + rank))`` (ranks from 1); linear is ``w * cosine + (1 - w) * bm25 /
    best_bm25``. Inputs are ``(id, score)`` best first; returns ``(id, fused)`` best first."""
    vec = {i: (rank, s) for rank, (i, s) in enumerate(vector_hits, 1)}
    txt = {i: (rank, s) for rank, (i, s) in enumerate(text_hits, 1)}
    top_text = max((s for _, s in text_hits), default=0.0) or 1.0
    fused = []
    for asset_id in {*vec, *txt}:
        v, t = vec.get(asset_id), txt.get(asset_id)
        if request.hybrid == "rrf":
            score = sum(1.0 / (request.rrf_k + rank) for rank, _ in filter(None, (v, t)))
        else:
            w = request.vector_weight
            score = w * (v[1] if v else 0.0) + (1 - w) * (t[1] / top_text if t else 0.0)
        fused.append((asset_id, score))
    fused.sort(key=lambda pair: (-pair[1], pair[0]))
    return fused


# -- bulk writes ---------------------------------------------------------------------------------


def index_action(index: str, doc_id: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"_op_type": "index", "_index": index, "_id": doc_id, "_source": source}


def delete_action(index: str, doc_id: str) -> dict[str, Any]:
    return {"_op_type": "delete", "_index": index, "_id": doc_id}


@dataclass(frozen=True)
class BulkFailure:
    """One bulk action that did not succeed, as the cluster explained it."""

    op: str
    index: str
    id: str
    status: int
    error: str

    @classmethod
    def from_item(cls, op: str, info: dict[str, Any]) -> BulkFailure:
        error = info.get("error")
        if isinstance(error, dict):  # an item error: {"type", "reason", "caused_by"?}
            text = f"{error.get('type')}: {error.get('reason')}"
            if cause := error.get("caused_by"):
                text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
        else:  # the whole request failed: the helper reports the exception's text
            text = str(error)
        return cls(op, str(info.get("_index")), str(info.get("_id")), int(info["status"]), text)


class BulkWriteError(StoreError):
    """Some bulk actions still failed after the retries; everything else was written."""

    def __init__(self, failures: Sequence[BulkFailure], written: int) -> None:
        self.failures = list(failures)
        self.written = written
        shown = "; ".join(
            f"{f.op} {f.index}/{f.id}: HTTP {f.status} {f.error}" for f in self.failures[:5]
        )
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(
            f"{len(self.failures)} bulk action(s) failed after retries, {written} succeeded: "
            f"{shown}{more}"
        )


StreamingBulk = Callable[..., Iterable[tuple[bool, dict[str, Any]]]]


def write_bulk(
    client: Any,
    actions: Sequence[dict[str, Any]],
    streaming_bulk: StreamingBulk,
    *,
    chunk_size: int,
    max_retries: int,
    initial_backoff: float,
    max_backoff: float,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send ``actions`` with the client library's ``helpers.streaming_bulk``; return how many
    succeeded, raise ``BulkWriteError`` listing every action that still failed.

    The helper itself retries items rejected with 429 (``max_retries``, exponential back-off)
    and, with ``raise_on_exception=False``, turns a failed request (e.g. a 503 from a node
    that is starting) into per-item failures instead of an exception. On top of that, items
    that failed with a retryable status (429/502/503/504) are sent again in rounds with
    exponential back-off; any other failure (a mapping error, say) is final. Nothing is
    dropped silently: deleting a missing document (404) is the only non-2xx success.
    """
    pending = {_action_key(a): a for a in actions}
    failed: dict[tuple[str, str, str], BulkFailure] = {}
    written = 0
    for attempt in range(max_retries + 1):
        if attempt:
            sleep(min(max_backoff, initial_backoff * 2 ** (attempt - 1)))
        retry: dict[tuple[str, str, str], dict[str, Any]] = {}
        for ok, item in streaming_bulk(
            client,
            list(pending.values()),
            chunk_size=chunk_size,
            max_retries=max_retries,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            raise_on_error=False,
            raise_on_exception=False,
        ):
            ((op, info),) = item.items()
            key = (op, str(info.get("_index")), str(info.get("_id")))
            status = int(info.get("status", 500))
            if ok or (op == "delete" and status == 404):
                written += 1
                failed.pop(key, None)
                continue
            failed[key] = BulkFailure.from_item(op, {**info, "status": status})
            if status in RETRYABLE_STATUS and key in pending:
                retry[key] = pending[key]
        if not retry:
            break
        pending = retry
    if failed:
        raise BulkWriteError(list(failed.values()), written)
    return written


def _action_key(action: dict[str, Any]) -> tuple[str, str, str]:
    return (action["_op_type"], action["_index"], action["_id"])


# -- the shared store ----------------------------------------------------------------------------

Method = TypeVar("Method", bound=Callable[..., Any])


def reported(method: Method) -> Method:
    """Cluster failures (unreachable, TLS, authentication, a rejected request) leave the store
    as ``StoreError``, which the CLI prints as one line and the API maps to an error response,
    instead of a client library's traceback."""

    @functools.wraps(method)
    def wrapper(self: ClusterStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except self.client_errors as exc:
            where = ", ".join(self.settings.cluster_urls)
            raise StoreError(f"{self.backend} at {where}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


class ClusterStore(Store):
    """A ``Store`` on an OpenSearch or Elasticsearch cluster (see the module docstring).

    Reads after writes in the same process see the writes: the indices written to are
    refreshed before the next count, search or state read (one refresh per burst of writes, not
    one per bulk request), so e.g. ingestion's "activate the first index" check counts the
    documents it has just written. Other processes see writes within the refresh interval (1 s).
    """

    backend: ClassVar[str]
    not_found: ClassVar[type[Exception]]
    """The client's exception for HTTP 404."""
    client_errors: ClassVar[tuple[type[Exception], ...]]
    """The client's exceptions for failed requests, reported as ``StoreError``."""
    streaming_bulk: ClassVar[StreamingBulk]
    scan: ClassVar[Callable[..., Iterator[dict[str, Any]]]]
    embedding_source: ClassVar[Any] = True
    """The ``_source`` option that returns a document with its embedding."""

    def __init__(self, settings: Settings, model_id: str, client: Any | None = None) -> None:
        self.settings = settings
        self.model_id = model_id
        self.alias = settings.table
        self.index = index_name(settings.table, model_id)
        self.quarantine_index = quarantine_index(settings.table)
        self.runs_index = runs_index(settings.table)
        self.client = client if client is not None else self.connect(settings)
        self._dirty: set[str] = set()
        self._dimension: int | None = None
        self._exists = False
        self._ready: set[str] = set()

    # -- backend hooks -----------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def connect(cls, settings: Settings) -> Any:
        """A client for ``settings.cluster_*`` (TLS, basic auth, retries on 502/503/504)."""

    @abstractmethod
    def asset_template(self, dim: int) -> dict[str, Any]:
        """The index template of the asset indices, with an ``embedding`` of ``dim``."""

    @abstractmethod
    def _similar(self, request: SearchRequest, size: int) -> list[Hit]:
        """Vector (or hybrid, when the request has text too) hits, best first."""

    @abstractmethod
    def vector_body(self, request: SearchRequest, size: int) -> dict[str, Any]:
        """A filtered kNN search for the request's vector, ``size`` hits."""

    @staticmethod
    @abstractmethod
    def cosine_from_score(score: float) -> float:
        """The cosine similarity behind one of the backend's kNN scores."""

    @staticmethod
    @abstractmethod
    def ids_vector_body(request: SearchRequest, ids: Sequence[str]) -> dict[str, Any]:
        """A kNN search restricted to ``ids`` (exact, as only they pass its filter)."""

    def templates(self, dim: int) -> dict[str, dict[str, Any]]:
        """Every index template ``lookalike index apply`` puts, by name."""
        base = self.settings.table
        return {
            f"{base}-assets": self.asset_template(dim),
            f"{base}-quarantine": quarantine_template(base),
            f"{base}-runs": runs_template(base),
        }

    @reported
    def apply(self, dim: int) -> list[str]:
        """Put the index templates (and the backend's search pipelines); return their names."""
        applied = []
        for name, body in self.templates(dim).items():
            self.client.indices.put_index_template(name=name, body=body)
            applied.append(f"index template {name}")
        for index in (self.quarantine_index, self.runs_index):
            self._ensure_support_index(index)
        return applied

    # -- alias -------------------------------------------------------------------------------

    def _alias_targets(self) -> list[str]:
        try:
            return sorted(plain_body(self.client.indices.get_alias(name=self.alias)))
        except self.not_found:
            return []

    def _mapping(self, index: str) -> dict[str, Any]:
        return next(iter(plain_body(self.client.indices.get_mapping(index=index)).values()))[
            "mappings"
        ]

    def _meta(self, index: str) -> dict[str, Any]:
        return self._mapping(index).get("_meta", {})

    @reported
    def active_model(self) -> str | None:
        targets = self._alias_targets()
        return self._meta(targets[0]).get("model_id") if targets else None

    @reported
    def activate(self) -> str | None:
        if not self._index_exists():
            raise StoreError(
                f"index {self.index!r} does not exist: ingest with model {self.model_id} "
                "before making it the active one"
            )
        current = self._alias_targets()
        previous = self._meta(current[0]).get("model_id") if current else None
        self.client.indices.update_aliases(body=alias_swap_body(self.alias, self.index, current))
        return previous

    @reported
    def indexes(self) -> list[IndexInfo]:
        try:
            found = plain_body(self.client.indices.get(index=f"{self.alias}__*"))
        except self.not_found:
            return []
        self._refresh_if_dirty()
        return [
            IndexInfo(
                model_id=info["mappings"].get("_meta", {}).get("model_id", ""),
                name=name,
                count=self._count(name),
                active=self.alias in info.get("aliases", {}),
            )
            for name, info in sorted(found.items())
        ]

    # -- lifecycle ---------------------------------------------------------------------------

    def _index_exists(self) -> bool:
        """Whether this model version's index exists (once it does, it is not asked again)."""
        if self._dimension is None and not self._exists:
            self._exists = bool(self.client.indices.exists(index=self.index))
        return self._dimension is not None or self._exists

    @reported
    def ensure(self, dim: int) -> None:
        if self._dimension is None:
            try:
                mapping = self._mapping(self.index)
            except self.not_found:
                body = index_body_from_template(self.asset_template(dim))
                body["mappings"]["_meta"] = asset_meta(self.model_id, dim)
                self._create(self.index, body)
                self._dimension = dim
            else:
                vector = mapping.get("properties", {}).get("embedding", {})
                found = mapping.get("_meta", {}).get("dimension")
                self._dimension = int(found or vector.get("dimension") or vector.get("dims"))
        if self._dimension != dim:
            raise ValueError(
                f"index {self.index!r} holds {self._dimension}-d vectors, the model gives "
                f"{dim}-d; use a new index (model version) instead of mixing them"
            )

    def _create(self, index: str, body: dict[str, Any]) -> None:
        """Create an index; another process creating it first is fine."""
        try:
            self.client.indices.create(index=index, body=body)
        except Exception as exc:
            if "resource_already_exists_exception" not in str(exc):
                raise

    def _ensure_support_index(self, index: str) -> None:
        """Quarantine and run indices are created with their mapping before the first write, so
        a write never auto-creates them with guessed field types."""
        if index in self._ready:
            return
        template = (quarantine_template if index == self.quarantine_index else runs_template)(
            self.settings.table
        )
        if not self.client.indices.exists(index=index):
            self._create(index, index_body_from_template(template))
        elif index == self.runs_index:
            # Run summaries gained fields (outcome, quarantined_earlier): a strict mapping made
            # by an earlier version would reject them, so add what it lacks.
            properties = template["template"]["mappings"]["properties"]
            known = self._mapping(index).get("properties", {})
            if missing := {k: v for k, v in properties.items() if k not in known}:
                self.client.indices.put_mapping(index=index, body={"properties": missing})
        self._ready.add(index)

    @reported
    def optimize(self) -> None:
        """Make the latest writes searchable now (HNSW graphs are built as segments are
        written; there is nothing else to build)."""
        self._dirty.update({self.index, self.quarantine_index, self.runs_index})
        self._refresh_if_dirty()

    def close(self) -> None:
        self.client.close()

    # -- writes ------------------------------------------------------------------------------

    def _bulk(self, actions: Sequence[dict[str, Any]]) -> int:
        if not actions:
            return 0
        self._dirty.update(a["_index"] for a in actions)
        return write_bulk(
            self.client,
            actions,
            type(self).streaming_bulk,
            chunk_size=self.settings.bulk_chunk_size,
            max_retries=self.settings.bulk_max_retries,
            initial_backoff=self.settings.bulk_initial_backoff_s,
            max_backoff=self.settings.bulk_max_backoff_s,
        )

    @reported
    def upsert(self, docs: Sequence[AssetDocument]) -> int:
        if not docs:
            return 0
        if any(d.embedding is None for d in docs):
            raise ValueError("documents must carry their embedding to be indexed")
        self.ensure(len(docs[0].embedding or ()))
        self._ensure_support_index(self.quarantine_index)
        written = self._bulk([index_action(self.index, d.id, to_source(d)) for d in docs])
        self._bulk([delete_action(self.quarantine_index, d.id) for d in docs])
        return written

    @reported
    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        self._ensure_support_index(self.quarantine_index)
        targets = [self.quarantine_index] + ([self.index] if self._index_exists() else [])
        self._bulk([delete_action(index, i) for index in targets for i in ids])
        return len(ids)

    @reported
    def quarantine(self, records: Sequence[QuarantineRecord]) -> None:
        if not records:
            return
        self._ensure_support_index(self.quarantine_index)
        self._bulk(
            [index_action(self.quarantine_index, r.id, r.model_dump(mode="json")) for r in records]
        )
        if self._index_exists():
            self._bulk([delete_action(self.index, r.id) for r in records])

    @reported
    def record_run(self, summary: IngestSummary) -> None:
        self._ensure_support_index(self.runs_index)
        self._bulk([index_action(self.runs_index, summary.run_id, run_source(summary))])

    # -- reads -------------------------------------------------------------------------------

    def _refresh_if_dirty(self) -> None:
        if self._dirty:
            self.client.indices.refresh(
                index=",".join(sorted(self._dirty)), ignore_unavailable=True
            )
            self._dirty.clear()

    def _count(self, index: str, body: dict[str, Any] | None = None) -> int:
        try:
            return int(self.client.count(index=index, body=body)["count"])
        except self.not_found:
            return 0

    def _search(self, index: str, body: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
        try:
            return plain_body(self.client.search(index=index, body=body, **params))["hits"]["hits"]
        except self.not_found:
            return []

    @reported
    def count(self) -> int:
        self._refresh_if_dirty()
        return self._count(self.index)

    @reported
    def get(self, asset_id: str, with_embedding: bool = True) -> AssetDocument | None:
        self._refresh_if_dirty()
        source = self.embedding_source if with_embedding else {"excludes": ["embedding"]}
        hits = self._search(self.index, get_body(asset_id, source))
        return from_source(hits[0]["_source"], with_embedding) if hits else None

    def _scan(self, index: str, fields: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every document's ``_source`` (scroll, so any number of them); none if no index."""
        query: dict[str, Any] = {"query": {"match_all": {}}}
        if fields is not None:
            query["_source"] = fields
        try:
            for hit in type(self).scan(self.client, index=index, query=query, size=1000):
                yield hit["_source"]
        except self.not_found:
            return

    @reported
    def states(self) -> dict[str, StoredState]:
        self._refresh_if_dirty()
        states: dict[str, StoredState] = {}
        for index, quarantined in ((self.index, False), (self.quarantine_index, True)):
            for source in self._scan(index, STATE_FIELDS):
                states[source["id"]] = StoredState(quarantined=quarantined, **source)
        return states

    @reported
    def quarantined(self) -> list[QuarantineRecord]:
        self._refresh_if_dirty()
        records = [QuarantineRecord.model_validate(s) for s in self._scan(self.quarantine_index)]
        return sorted(records, key=lambda r: r.uri)

    @reported
    def runs(self, limit: int = 20) -> list[IngestSummary]:
        self._refresh_if_dirty()
        hits = self._search(self.runs_index, runs_body(limit))
        return [run_from_source(h["_source"]) for h in hits]

    @reported
    def label_counts(self, min_confidence: float = 50.0, limit: int = 100) -> dict[str, int]:
        self._refresh_if_dirty()
        try:
            response = plain_body(
                self.client.search(index=self.index, body=label_counts_body(min_confidence, limit))
            )
        except self.not_found:
            return {}
        buckets = response["aggregations"]["labels"]["confident"]["names"]["buckets"]
        return {b["key"]: int(b["doc_count"]) for b in buckets}

    @reported
    def search(self, request: SearchRequest) -> SearchResponse:
        if not self._index_exists():
            return SearchResponse(hits=[], total_candidates=0)
        self._refresh_if_dirty()
        total = self._count(self.index, count_body(request))
        if total == 0:
            return SearchResponse(hits=[], total_candidates=0)
        needed = request.offset + request.k
        if request.vector is not None:
            hits = self._similar(request, needed)
        elif request.text:
            hits = [
                self.hit(request, h, score=h["_score"], text_score=h["_score"])
                for h in self._search(self.index, text_search_body(request, needed))
            ]
        else:
            hits = [
                self.hit(request, h, score=0.0)
                for h in self._search(self.index, listing_body(request, needed))
            ]
        hits.sort(key=lambda h: (-h.score, h.id))  # deterministic order among equal scores
        if request.min_score is not None:
            hits = [h for h in hits if h.score >= request.min_score]
        return SearchResponse(hits=hits[request.offset : needed], total_candidates=total)

    def vector_hits(self, request: SearchRequest, raw_hits: list[dict[str, Any]]) -> list[Hit]:
        """Hits of a kNN search, scored by cosine similarity."""
        hits = []
        for raw in raw_hits:
            cosine = self.cosine_from_score(raw["_score"])
            hits.append(self.hit(request, raw, score=cosine, vector_score=cosine))
        return hits

    def fused_hits(self, request: SearchRequest, raw_hits: list[dict[str, Any]]) -> list[Hit]:
        """Hits of a hybrid search fused by the cluster, with their vector and text components
        fetched for these ids only (the fused score alone does not say why a hit matched)."""
        ids = [h["_id"] for h in raw_hits]
        vector_scores = self.vector_scores(request, ids)
        text_scores = self.text_scores(request, ids)
        return [
            self.hit(
                request,
                h,
                score=h["_score"],
                vector_score=vector_scores.get(h["_id"]),
                text_score=text_scores.get(h["_id"]),
            )
            for h in raw_hits
        ]

    def client_fused_hits(self, request: SearchRequest, size: int) -> list[Hit]:
        """Hybrid hits fused here: the vector and the text search run separately and ``fuse``
        combines them with the embedded store's formulas (where the cluster cannot fuse)."""
        vector_raw = self._search(self.index, self.vector_body(request, size))
        text_raw = self._search(self.index, text_search_body(request, size))
        vector_scores = {h["_id"]: self.cosine_from_score(h["_score"]) for h in vector_raw}
        text_scores = {h["_id"]: float(h["_score"]) for h in text_raw}
        raw = {h["_id"]: h for h in [*text_raw, *vector_raw]}
        fused = fuse(request, list(vector_scores.items()), list(text_scores.items()))
        return [
            self.hit(
                request,
                raw[asset_id],
                score=score,
                vector_score=vector_scores.get(asset_id),
                text_score=text_scores.get(asset_id),
            )
            for asset_id, score in fused[:size]
        ]

    def vector_scores(self, request: SearchRequest, ids: Sequence[str]) -> dict[str, float]:
        """Cosine similarity of the given hits to the query vector."""
        if not ids:
            return {}
        return {
            h["_id"]: self.cosine_from_score(h["_score"])
            for h in self._search(self.index, self.ids_vector_body(request, ids))
        }

    def text_scores(self, request: SearchRequest, ids: Sequence[str]) -> dict[str, float]:
        """BM25 of the given hits for the request's text: the text component of hybrid hits."""
        if not ids or not request.text:
            return {}
        return {
            h["_id"]: float(h["_score"])
            for h in self._search(self.index, ids_text_body(request, ids))
        }

    @staticmethod
    def hit(
        request: SearchRequest,
        raw: dict[str, Any],
        *,
        score: float,
        vector_score: float | None = None,
        text_score: float | None = None,
    ) -> Hit:
        doc = from_source(raw["_source"])
        wanted = {f.name.casefold() for f in [*request.labels_all, *request.labels_any]}
        return Hit(
            id=doc.id,
            score=float(score),
            vector_score=vector_score,
            text_score=None if text_score is None else float(text_score),
            matched_labels=[lab for lab in doc.labels if lab.name.casefold() in wanted],
            document=doc,
        )


def plain_body(response: Any) -> Any:
    """The JSON body of a response: Elasticsearch's client wraps it (``.body``), OpenSearch's
    returns it as is."""
    return getattr(response, "body", response)


def mapping_files(settings: Settings, dim: int) -> dict[str, dict[str, Any]]:
    """The JSON files of ``mappings/`` (file name -> body) for these settings and dimension:
    what ``lookalike index export`` writes and ``lookalike index apply`` puts."""
    from pipeline.store import elasticsearch, opensearch

    base = settings.table
    return {
        "opensearch-template-assets.json": opensearch.asset_template(base, dim, settings),
        "elasticsearch-template-assets.json": elasticsearch.asset_template(base, dim, settings),
        "template-quarantine.json": quarantine_template(base),
        "template-runs.json": runs_template(base),
        "opensearch-pipeline-hybrid-rrf.json": opensearch.rrf_pipeline(),
        "opensearch-pipeline-hybrid-linear.json": opensearch.linear_pipeline(),
    }
