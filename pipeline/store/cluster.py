"""What the OpenSearch and Elasticsearch stores share: mappings generated from the field tables,
the filter tree as a ``bool`` query, documents, bulk writes with their one retry layer, and the
catalogue, index and logs on the REST API both clusters descend from.

A backend (``opensearch.py``, ``elasticsearch.py``) adds only what differs: its client, its
vector field, its kNN query, how its kNN score maps back to cosine similarity, and how it
returns a document's vector. Every request body is built by a pure function, so the contract
tests can check exactly what is sent against the OpenSearch API specification.

Layout on the cluster, for the base name ``assets`` (``LOOKALIKE_TABLE``):

* ``assets__<model_id>``: one index per model version (the embedded store's table names), the
  model id and the vector dimension in its ``_meta``;
* ``assets``: the alias searches follow, moved atomically by ``switch``;
* ``assets-quarantine`` and ``assets-runs``: the quarantine and run logs, shared by all model
  versions, in indices of their own so Dashboards can chart them.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from pipeline import filters
from pipeline.document import (
    ASSET_FIELDS,
    JUDGEMENT_FIELDS,
    QUARANTINE_FIELDS,
    RUN_FIELDS,
    STATE_FIELDS,
    TAG_FIELDS,
    AliasSwitch,
    AssetDocument,
    FieldSpec,
    IngestSummary,
    Judgement,
    QuarantineRecord,
    StoredState,
    field,
    fields_for,
)
from pipeline.settings import Settings
from pipeline.store.base import (
    Backend,
    BulkFailure,
    BulkWriteError,
    DocumentIndex,
    IndexCatalogue,
    IndexInfo,
    JudgementLog,
    QuarantineLog,
    Ranking,
    RunLog,
    StoreError,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""Bumped when the layout changes incompatibly; recorded in every index's ``_meta``."""
FIELDS = fields_for(ASSET_FIELDS, "cluster")
TAG_UPDATE = tuple(f for f in FIELDS if f.name in TAG_FIELDS)
"""The fields a tag update replaces."""
FOLD_NORMALIZER = "lookalike_folded"
TEMPLATE_PRIORITY = 200
MAX_KNN_K = 10_000
"""The largest ``k`` (and candidate list) either cluster accepts in a kNN query."""
UNANSWERED = 503
"""The status given to bulk items whose request got no answer (the node went away)."""
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
"""Bulk item statuses worth retrying: rejected (queue full) or a shard/node briefly away."""


def client_options(settings: Settings, *, auth_key: str, timeout_key: str) -> dict[str, Any]:
    """Connection options both Python clients take, under the names each one uses for basic
    auth and the request timeout: TLS and auth as configured. The client fails over to the
    next configured node on a connection error or a time-out (each node once) and retries
    nothing else: waiting and retrying is ``write_bulk``'s job alone, so one rejected write is
    tried a bounded, known number of times."""
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
        "max_retries": len(settings.cluster_urls) - 1,
        "retry_on_timeout": True,
        "retry_on_status": (),
        "http_compress": True,
    }


# -- names -------------------------------------------------------------------------------------


def index_name(base: str, model_id: str) -> str:
    """One index per model version, e.g. ``assets__mobilenet_v2_imagenet_1``: lower case
    ``[a-z0-9_]``, which every OpenSearch/Elasticsearch index name accepts."""
    return f"{base}__{re.sub(r'[^A-Za-z0-9]+', '_', model_id).strip('_').lower()}"


def quarantine_index(base: str) -> str:
    return f"{base}-quarantine"


def runs_index(base: str) -> str:
    return f"{base}-runs"


def judgements_index(base: str) -> str:
    return f"{base}-judgements"


# -- mappings, from the field tables -------------------------------------------------------------

_FOLDED = {"folded": {"type": "keyword", "normalizer": FOLD_NORMALIZER}}
_SCALARS = {
    "keyword": "keyword",
    "keywords": "keyword",
    "integer": "integer",
    "long": "long",
    "float": "double",
    "date": "date",
}


def properties(
    fields: Sequence[FieldSpec],
    analyzer: str,
    vector: dict[str, Any] | None = None,
    region_vector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The mapping of each field: keywords (indexed only when filterable; a case-insensitive
    ``folded`` sub-field where filters ignore case; a ``text`` sub-field where they are also
    searched as text), analysed text, numbers, dates, JSON kept in ``_source`` only (any
    metadata column works, no mapping explosion), labels as ``nested`` (so "label X with
    confidence >= c" matches name and confidence of the *same* label), the vector, and the
    region vectors as ``nested`` objects of a box and a vector (a kNN search over them ranks a
    document by its best region)."""
    text = {"type": "text", "analyzer": analyzer}
    mapped: dict[str, Any] = {}
    for spec in fields:
        if spec.kind in _SCALARS:
            prop: dict[str, Any] = {"type": _SCALARS[spec.kind]}
            if not spec.filterable:
                prop["index"] = False
            subfields = {**(_FOLDED if spec.case_insensitive else {})}
            if spec.kind in ("keyword", "keywords") and spec.analyzed:
                prop.pop("index", None)
                subfields["text"] = text
            if subfields:
                prop["fields"] = subfields
        elif spec.kind == "text":
            prop = dict(text)
        elif spec.kind == "json":
            prop = {"type": "object", "enabled": False}
        elif spec.kind == "labels":
            prop = {
                "type": "nested",
                "properties": {
                    "name": {"type": "keyword", "fields": _FOLDED},
                    "confidence": {"type": "double"},
                    "parents": {"type": "keyword"},
                },
            }
        elif spec.kind in ("vector", "regions"):
            if vector is None:
                raise ValueError(f"{spec.name}: a vector field needs the backend's mapping")
            prop = vector
            if spec.kind == "regions":  # many vectors per document: a hit is the document
                inner = region_vector or vector
                prop = {
                    "type": "nested",
                    "properties": {"box": {"type": "float", "index": False}, "embedding": inner},
                }
        else:
            raise ValueError(f"{spec.name}: no mapping for kind {spec.kind!r}")
        mapped[spec.name] = prop
    return mapped


def text_fields(fields: Sequence[FieldSpec]) -> list[str]:
    """The fields BM25 searches: analysed text, and the text sub-field of analysed keywords."""
    return [
        f"{spec.name}.text" if spec.kind in ("keyword", "keywords") else spec.name
        for spec in fields
        if spec.analyzed
    ]


def index_settings(shards: int) -> dict[str, Any]:
    """Shards as configured; replicas follow the cluster size (0 on one node, 1 from two), so
    a single-node development cluster stays green and a real cluster keeps a copy."""
    return {
        "index": {"number_of_shards": shards, "auto_expand_replicas": "0-1"},
        "analysis": {"normalizer": {FOLD_NORMALIZER: {"type": "custom", "filter": ["lowercase"]}}},
    }


def meta(what: str, **extra: Any) -> dict[str, Any]:
    return {
        "managed_by": "lookalike",
        "schema_version": SCHEMA_VERSION,
        "description": what,
        **extra,
    }


def template(
    patterns: list[str],
    settings: dict[str, Any],
    props: dict[str, Any],
    what: str,
    **extra: Any,
) -> dict[str, Any]:
    """An index template; ``dynamic: strict``: a document with a field the mapping does not
    know is refused (and reported) instead of silently growing the mapping."""
    return {
        "index_patterns": patterns,
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": settings,
            "mappings": {"dynamic": "strict", "_meta": meta(what, **extra), "properties": props},
        },
        "_meta": meta(what, **extra),
    }


def log_templates(base: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """The templates of the quarantine and run logs (no vectors: the same on both clusters)."""
    analyzer = settings.text_analyzer
    return {
        f"{base}-quarantine": template(
            [quarantine_index(base)],
            index_settings(1),
            properties(QUARANTINE_FIELDS, analyzer),
            "quarantine records",
        ),
        f"{base}-runs": template(
            [runs_index(base)],
            index_settings(1),
            properties(RUN_FIELDS, analyzer),
            "ingestion runs and alias switches",
        ),
        f"{base}-judgements": template(
            [judgements_index(base)],
            index_settings(1),
            properties(JUDGEMENT_FIELDS, analyzer),
            "judgements of custom tags",
        ),
    }


def create_body(template_body: dict[str, Any], **extra_meta: Any) -> dict[str, Any]:
    """A create-index body equal to what the template gives, so creating an index works the
    same whether or not ``lookalike index apply`` ran first."""
    mappings = dict(template_body["template"]["mappings"])
    mappings["_meta"] = {**mappings["_meta"], **extra_meta}
    return {"settings": template_body["template"]["settings"], "mappings": mappings}


# -- documents ---------------------------------------------------------------------------------


def to_source(record: BaseModel, fields: Sequence[FieldSpec]) -> dict[str, Any]:
    """The ``_source`` of a record: its fields as JSON, plus the derived ones."""
    values = record.model_dump(mode="json")
    source = {}
    for spec in fields:
        if spec.derive is not None:
            source[spec.name] = spec.derive(record)
        elif spec.name in values:
            source[spec.name] = values[spec.name]
    return source


VECTOR_FIELDS = ("embedding", "regions")
"""A document's vector fields: large, so ``_source`` carries them only when asked."""


def from_source(source: dict[str, Any], model: type[Any]) -> Any:
    """The record behind a ``_source`` (derived fields, the other kind's fields and keys set
    to null left out)."""
    return model.model_validate(
        {k: _present(v) for k, v in source.items() if k in model.model_fields and v is not None}
    )


def _present(value: Any) -> Any:
    """A map without the keys a partial update took off (null in ``_source``: ``set_tags``)."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


# -- queries -------------------------------------------------------------------------------------


def query(node: filters.Filter | None) -> dict[str, Any] | None:
    """The filter tree as a non-scoring query (``None``: no filter). It goes *inside* a kNN
    query (efficient filtering) and beside the text query."""
    match node:
        case None:
            return None
        case filters.Term(name, values) if name.startswith(filters.METADATA_PREFIX):
            key = name.removeprefix(filters.METADATA_PREFIX)
            return {"terms": {"metadata_kv": [f"{key}={v}" for v in values]}}
        case filters.Term(name, values):
            _filterable(name)
            return {"terms": {name: list(values)}}
        case filters.Range(name, gte, gt, lte, lt):
            _filterable(name)
            bounds = {"gte": gte, "gt": gt, "lte": lte, "lt": lt}
            return {
                "range": {
                    name: {
                        op: value.isoformat() if isinstance(value, datetime) else value
                        for op, value in bounds.items()
                        if value is not None
                    }
                }
            }
        case filters.HasLabel(name, min_confidence) if min_confidence <= 0:
            return {"term": {"label_names.folded": name}}
        case filters.HasLabel(name, min_confidence):
            return {
                "nested": {
                    "path": "labels",
                    "query": {
                        "bool": {
                            "filter": [
                                {"term": {"labels.name.folded": name}},
                                {"range": {"labels.confidence": {"gte": min_confidence}}},
                            ]
                        }
                    },
                }
            }
        case filters.And(items):
            return {"bool": {"filter": [query(i) or {"match_all": {}} for i in items]}}
        case filters.Or(items):
            should = [query(i) or {"match_all": {}} for i in items]
            return {"bool": {"should": should, "minimum_should_match": 1}}
        case filters.Not(item):
            return {"bool": {"must_not": [query(item) or {"match_all": {}}]}}
    raise TypeError(f"not a filter node: {node!r}")


def text_query(text: str) -> dict[str, Any] | None:
    """BM25 over the text fields: the words (``most_fields`` sums the fields' scores, the
    closest match to the embedded store's one concatenated column) and each phrase, so every
    store reads the same query (``filters.text_terms``); ``None`` when nothing is left."""
    words, phrases = filters.text_terms(text)
    fields = text_fields(FIELDS)
    should = [{"multi_match": {"query": " ".join(words), "fields": fields, "type": "most_fields"}}]
    should = should if words else []
    should += [{"multi_match": {"query": p, "fields": fields, "type": "phrase"}} for p in phrases]
    if not should:
        return None
    return should[0] if len(should) == 1 else {"bool": {"should": should}}


def with_filter(scoring: dict[str, Any], where: filters.Filter | None) -> dict[str, Any]:
    if (condition := query(where)) is None:
        return scoring
    return {"bool": {"must": [scoring], "filter": [condition]}}


def bm25_body(text_part: dict[str, Any], where: filters.Filter | None, k: int) -> dict[str, Any]:
    return {"size": k, "_source": False, "query": with_filter(text_part, where)}


def count_body(where: filters.Filter | None) -> dict[str, Any]:
    return {"query": query(where) or {"match_all": {}}}


def scan_body(where: filters.Filter | None, offset: int, limit: int) -> dict[str, Any]:
    """A page of ids in id order (the listing of a search without vector or text)."""
    return {
        "from": offset,
        "size": limit,
        "_source": False,
        "query": query(where) or {"match_all": {}},
        "sort": ["id"],
    }


def get_body(ids: Sequence[str], source: Any) -> dict[str, Any]:
    """Documents by id; ``source`` says whether the (large) embedding comes back."""
    return {"size": len(ids), "_source": source, "query": {"ids": {"values": list(ids)}}}


def runs_body(kind: str, limit: int) -> dict[str, Any]:
    """The newest entries of one kind first. The sort is in the body, in its long form: the
    ``field:desc`` query parameter is OpenSearch's alone (Elasticsearch's client moves it into
    the body, where it names a field ``started_at:desc``)."""
    return {
        "size": limit,
        "query": {"term": {"kind": kind}},
        "sort": [{"started_at": {"order": "desc"}}],
    }


def label_counts_body(min_confidence: float, limit: int) -> dict[str, Any]:
    """Nested terms aggregation over labels with at least ``min_confidence``; a label name
    appears once per asset, so a bucket's count is the number of assets."""
    names = {
        "terms": {
            "field": "labels.name",
            "size": limit,
            "order": [{"_count": "desc"}, {"_key": "asc"}],
        }
    }
    confident = {"range": {"labels.confidence": {"gte": min_confidence}}}
    return {
        "size": 0,
        "aggs": {
            "labels": {
                "nested": {"path": "labels"},
                "aggs": {"confident": {"filter": confident, "aggs": {"names": names}}},
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


def unit(vector: Sequence[float]) -> list[float]:
    """L2-normalise a query vector: stored embeddings are unit length, so the inner product the
    index computes is then exactly the cosine similarity."""
    norm = sum(x * x for x in vector) ** 0.5
    if norm == 0:
        raise ValueError("the query vector is all zeros")
    return [x / norm for x in vector]


def _filterable(name: str) -> FieldSpec:
    spec = field(FIELDS, name)
    if not spec.filterable:
        raise ValueError(f"field {name!r} cannot be filtered on")
    return spec


# -- bulk writes ---------------------------------------------------------------------------------


def index_action(index: str, doc_id: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"_op_type": "index", "_index": index, "_id": doc_id, "_source": source}


def update_action(index: str, doc_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A partial update: the node merges ``fields`` into the stored document and reindexes it
    itself, so nothing else of the document travels."""
    return {"_op_type": "update", "_index": index, "_id": doc_id, "doc": fields}


def delete_action(index: str, doc_id: str) -> dict[str, Any]:
    return {"_op_type": "delete", "_index": index, "_id": doc_id}


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
) -> int:
    """Send ``actions`` with the client library's ``helpers.streaming_bulk``; return how many
    succeeded, raise ``BulkWriteError`` listing every action that still failed.

    The one retry layer of every write: the helper sends each chunk once and, with
    ``raise_on_exception=False``, turns a failed request (a node that went away, a 503 from
    one that is starting) into per-item failures. Items that failed with a transient status
    (429 queue full, 502/503/504, or no answer at all) are sent again, in at most
    ``max_retries`` more rounds with exponential back-off (``initial_backoff`` doubling up to
    ``max_backoff``); any other failure (a mapping error, say) is final. Nothing is dropped
    silently: deleting or updating a missing document (404: deleted meanwhile) are the only
    non-2xx successes.
    """
    pending = {_action_key(a): a for a in actions}
    failed: dict[tuple[str, str, str], BulkFailure] = {}
    written = 0
    for attempt in range(max_retries + 1):
        if attempt:
            wait = min(max_backoff, initial_backoff * 2 ** (attempt - 1))
            statuses = sorted({failed[key].status for key in pending})
            log.info(
                "retrying %d bulk action(s) after HTTP %s in %.2f s (round %d of %d)",
                len(pending),
                "/".join(map(str, statuses)),
                wait,
                attempt,
                max_retries,
            )
            time.sleep(wait)
        retry: dict[tuple[str, str, str], dict[str, Any]] = {}
        for ok, item in streaming_bulk(
            client,
            list(pending.values()),
            chunk_size=chunk_size,
            max_retries=0,
            raise_on_error=False,
            raise_on_exception=False,
        ):
            ((op, info),) = item.items()
            key = (op, str(info.get("_index")), str(info.get("_id")))
            status = info.get("status")
            # A request that got no answer (connection refused or reset) has no HTTP status.
            status = status if isinstance(status, int) else UNANSWERED
            if ok or (op in ("delete", "update") and status == 404):
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


# -- the backend -----------------------------------------------------------------------------------

Method = TypeVar("Method", bound=Callable[..., Any])


def reported(method: Method) -> Method:
    """Cluster failures (unreachable, TLS, authentication, a refused request) leave the store
    as ``StoreError``, which the CLI prints as one line and the API answers 503 with, instead
    of a client library's traceback."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        backend: ClusterBackend = getattr(self, "backend", self)
        try:
            return method(self, *args, **kwargs)
        except backend.client_errors as exc:
            where = ", ".join(backend.settings.cluster_urls)
            raise StoreError(f"{backend.name} at {where}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def plain_body(response: Any) -> Any:
    """The JSON body of a response: Elasticsearch's client wraps it (``.body``), OpenSearch's
    returns it as is."""
    return getattr(response, "body", response)


class ClusterBackend(Backend):
    """A store on an OpenSearch or Elasticsearch cluster (see the module docstring).

    Reads after writes see the writes: the indices written to are refreshed before the next
    read (one refresh per burst of writes) and when the backend is closed, so the next process
    to read (``lookalike runs`` right after ``lookalike ingest``) sees them too.
    """

    name: ClassVar[str]
    not_found: ClassVar[type[Exception]]
    """The client's exception for HTTP 404."""
    client_errors: ClassVar[tuple[type[Exception], ...]]
    """The client's exceptions for failed requests, reported as ``StoreError``."""
    streaming_bulk: ClassVar[StreamingBulk]
    scan_helper: ClassVar[Callable[..., Iterator[dict[str, Any]]]]

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.alias = settings.table
        self.client = client if client is not None else self.connect(settings)
        self._dirty: set[str] = set()
        self._ready: set[str] = set()
        self.catalogue = ClusterCatalogue(self)
        self.quarantine = ClusterQuarantine(self)
        self.runs = ClusterRunLog(self)
        self.judgements = ClusterJudgements(self)

    # -- what a backend adds -------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def connect(cls, settings: Settings) -> Any:
        """A client for ``settings.cluster_*``."""

    @classmethod
    @abstractmethod
    def vector_field(cls, settings: Settings, dim: int) -> dict[str, Any]:
        """The mapping of the ``embedding`` field."""

    @classmethod
    def region_vector_field(cls, settings: Settings, dim: int) -> dict[str, Any]:
        """The mapping of the region vectors (inside the nested ``regions``)."""
        return cls.vector_field(settings, dim)

    @classmethod
    @abstractmethod
    def index_options(cls, settings: Settings) -> dict[str, Any]:
        """Index settings the backend adds to ``index_settings`` (k-NN switches)."""

    @abstractmethod
    def knn_body(
        self, vector: Sequence[float], where: filters.Filter | None, k: int, regions: bool
    ) -> dict[str, Any]:
        """A filtered kNN search for ``k`` ids, over the embedding or (``regions``) the
        documents' best region vectors."""

    @staticmethod
    @abstractmethod
    def cosine_from_score(score: float) -> float:
        """The cosine similarity behind one of the backend's kNN scores."""

    def source(self, excludes: list[str]) -> Any:
        """The ``_source`` option that returns a document without the ``excludes`` fields."""
        return {"excludes": excludes} if excludes else True

    # -- templates -----------------------------------------------------------------------------

    @classmethod
    def asset_template(cls, settings: Settings, dim: int) -> dict[str, Any]:
        """The index template of every model version's index (``<base>__*``)."""
        index = index_settings(settings.cluster_shards)
        index["index"].update(cls.index_options(settings))
        props = properties(
            FIELDS,
            settings.text_analyzer,
            cls.vector_field(settings, dim),
            cls.region_vector_field(settings, dim),
        )
        what = "asset documents of one model version"
        return template([f"{settings.table}__*"], index, props, what, dimension=dim)

    def templates(self, dim: int) -> dict[str, dict[str, Any]]:
        """Every index template ``lookalike index apply`` puts, by name."""
        assets = {f"{self.alias}-assets": self.asset_template(self.settings, dim)}
        return assets | log_templates(self.alias, self.settings)

    @reported
    def apply(self, dim: int) -> list[str]:
        """Put the index templates and create the log indices; return what was applied."""
        applied = []
        for name, body in self.templates(dim).items():
            self.client.indices.put_index_template(name=name, body=body)
            applied.append(f"index template {name}")
        for index in log_templates(self.alias, self.settings):
            self.ensure_log(index)
        return applied

    # -- plumbing shared by the catalogue, the indexes and the logs ------------------------------

    def index(self, model_id: str) -> ClusterIndex:
        return ClusterIndex(self, model_id)

    def create(self, index: str, body: dict[str, Any]) -> None:
        """Create an index; another process creating it first is fine."""
        try:
            self.client.indices.create(index=index, body=body)
        except self.client_errors as exc:
            if "resource_already_exists_exception" not in str(exc):
                raise

    def ensure_log(self, index: str) -> None:
        """The log indices are created with their mapping before the first write, so a write
        never auto-creates them with guessed field types."""
        if index in self._ready:
            return
        log_template = log_templates(self.alias, self.settings)[index]
        if not self.client.indices.exists(index=index):
            self.create(index, create_body(log_template))
        else:
            # The records gained fields (run outcomes, alias switches): a strict mapping made
            # by an earlier version would refuse them, so add what it lacks.
            properties = log_template["template"]["mappings"]["properties"]
            mapping = plain_body(self.client.indices.get_mapping(index=index))
            known = next(iter(mapping.values()))["mappings"].get("properties", {})
            if missing := {k: v for k, v in properties.items() if k not in known}:
                self.client.indices.put_mapping(index=index, body={"properties": missing})
        self._ready.add(index)

    def bulk(self, actions: Sequence[dict[str, Any]]) -> int:
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

    def refresh(self) -> None:
        """Make this process's writes searchable (once per burst of writes)."""
        if self._dirty:
            self.client.indices.refresh(
                index=",".join(sorted(self._dirty)), ignore_unavailable=True
            )
            self._dirty.clear()

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A search's whole response, or ``None`` when the index does not exist."""
        return self.read(
            lambda: self.client.search(index=index, body=body, allow_partial_search_results=False)
        )

    def count(self, index: str, body: dict[str, Any]) -> int:
        response = self.read(lambda: self.client.count(index=index, body=body))
        return int(response["count"]) if response else 0

    def read(self, request: Callable[[], Any]) -> dict[str, Any] | None:
        """Run a read (after making this process's writes searchable), or ``None`` when the
        index does not exist. A read is never answered from part of the index: while a shard
        has no copy to answer from (a node just went away and a replica is being promoted) it
        is tried again, ``read_max_retries`` times with the bulk back-off, instead of
        returning fewer hits or a smaller count than the index holds."""
        self.refresh()
        for attempt in range(self.settings.read_max_retries + 1):
            if attempt:
                time.sleep(
                    min(
                        self.settings.bulk_max_backoff_s,
                        self.settings.bulk_initial_backoff_s * 2 ** (attempt - 1),
                    )
                )
            try:
                response = plain_body(request())
            except self.not_found:
                return None
            except self.client_errors as exc:
                status = getattr(exc, "status_code", None)
                status = status if isinstance(status, int) else UNANSWERED
                if status not in RETRYABLE_STATUS or attempt == self.settings.read_max_retries:
                    raise
                log.info("retrying a read after HTTP %s: %s", status, exc)
                continue
            if not response.get("_shards", {}).get("failed"):
                return response
            log.info("retrying a read that %d shard(s) failed", response["_shards"]["failed"])
        raise StoreError(f"{self.name}: shards of the index did not answer: {response['_shards']}")

    def hits(self, index: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.search(index, body)
        return response["hits"]["hits"] if response else []

    def sources(
        self, index: str, fields: list[str] | None = None, query: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every document's ``_source`` (matching ``query``; scroll, so any number of them);
        none if no index."""
        self.refresh()
        body: dict[str, Any] = {"query": query or {"match_all": {}}}
        if fields is not None:
            body["_source"] = fields
        try:
            for hit in type(self).scan_helper(self.client, index=index, query=body, size=1000):
                yield hit["_source"]
        except self.not_found:
            return

    def close(self) -> None:
        """Make this backend's writes visible before letting go, then close the connections."""
        try:
            self.refresh()
        except self.client_errors as exc:  # closing must not hide the error that led here
            log.warning("could not refresh %s before closing: %s", self.name, exc)
        self.client.close()


class ClusterCatalogue(IndexCatalogue):
    def __init__(self, backend: ClusterBackend) -> None:
        self.backend = backend
        self.client = backend.client
        self.alias = backend.alias

    def _targets(self) -> list[str]:
        try:
            return sorted(plain_body(self.client.indices.get_alias(name=self.alias)))
        except self.backend.not_found:
            return []

    def _model(self, index: str) -> str | None:
        mapping = plain_body(self.client.indices.get_mapping(index=index))
        return next(iter(mapping.values()))["mappings"].get("_meta", {}).get("model_id")

    @reported
    def active(self) -> str | None:
        targets = self._targets()
        return self._model(targets[0]) if targets else None

    @reported
    def switch(self, model_id: str) -> str | None:
        index = index_name(self.alias, model_id)
        if not self.client.indices.exists(index=index):
            raise ValueError(f"no index for {model_id}: ingest with it first")
        current = self._targets()
        previous = self._model(current[0]) if current else None
        self.client.indices.update_aliases(body=alias_swap_body(self.alias, index, current))
        return previous

    @reported
    def indexes(self) -> list[IndexInfo]:
        try:
            found = plain_body(self.client.indices.get(index=f"{self.alias}__*"))
        except self.backend.not_found:
            return []
        self.backend.refresh()
        infos = []
        for name, info in sorted(found.items()):
            model = info["mappings"].get("_meta", {}).get("model_id", "")
            count = self.backend.count(name, count_body(None))
            infos.append(IndexInfo(model, name, count, self.alias in info.get("aliases", {})))
        return infos


class ClusterIndex(DocumentIndex):
    """One model version's index on the cluster."""

    def __init__(self, backend: ClusterBackend, model_id: str) -> None:
        self.backend = backend
        self.client = backend.client
        self.settings = backend.settings
        self.model_id = model_id
        self.name = index_name(self.settings.table, model_id)
        self._dimension: int | None = None

    @reported
    def exists(self) -> bool:
        return self._dimension is not None or bool(self.client.indices.exists(index=self.name))

    @reported
    def ensure(self, dim: int) -> None:
        if self._read_mapping() is None:
            asset_template = self.backend.asset_template(self.settings, dim)
            body = create_body(asset_template, model_id=self.model_id)
            self.backend.create(self.name, body)
            self._dimension = dim
        if self._dimension != dim:
            raise ValueError(
                f"index {self.name!r} holds {self._dimension}-d vectors, the model gives "
                f"{dim}-d; use a new index (model version) instead of mixing them"
            )

    def _read_mapping(self) -> int | None:
        """The existing index's vector dimension, read once (``None``: no index yet); an index
        from an earlier version gets the fields added since on the way."""
        if self._dimension is None:
            try:
                mapping = plain_body(self.client.indices.get_mapping(index=self.name))
            except self.backend.not_found:
                return None
            mappings = next(iter(mapping.values()))["mappings"]
            self._dimension = int(mappings.get("_meta", {})["dimension"])
            self._add_missing(self._dimension, mappings.get("properties", {}))
        return self._dimension

    def _add_missing(self, dim: int, known: dict[str, Any]) -> None:
        """Indexes created by an earlier version lack the fields added since (regions, custom
        tags), and their strict mapping would refuse every new document: add them (a new field
        is a mapping update, no reindex). Old documents get their regions when re-embedded,
        their tags when ``lookalike tags apply`` scores them."""
        template = self.backend.asset_template(self.settings, dim)
        wanted = template["template"]["mappings"]["properties"]
        if missing := {k: v for k, v in wanted.items() if k not in known}:
            log.warning("adding the fields %s to the index %s", ", ".join(missing), self.name)
            self.client.indices.put_mapping(index=self.name, body={"properties": missing})

    @reported
    def optimize(self) -> None:
        """Make the latest writes searchable now (HNSW graphs are built as segments are
        written; there is nothing else to build)."""
        self.backend._dirty.add(self.name)
        self.backend.refresh()

    @reported
    def upsert(self, docs: Sequence[AssetDocument]) -> int:
        if not docs:
            return 0
        if any(d.embedding is None for d in docs):
            raise ValueError("documents must carry their embedding to be indexed")
        if self._read_mapping() is None:
            self.ensure(len(docs[0].embedding or ()))
        return self.backend.bulk(
            [index_action(self.name, d.id, to_source(d, FIELDS)) for d in docs]
        )

    @reported
    def set_tags(self, docs: Sequence[AssetDocument]) -> int:
        if not docs or not self.exists():
            return len(docs)
        # A partial update merges objects: a tag the new map leaves out would stay. So every
        # stored tag is named, a dropped one as null (which ``from_source`` reads as absent).
        body = get_body([d.id for d in docs], ["tags"])
        stored = {
            h["_id"]: h["_source"].get("tags") or {} for h in self.backend.hits(self.name, body)
        }
        actions = []
        for doc in docs:
            if doc.id in stored:
                fields = to_source(doc, TAG_UPDATE)
                fields["tags"] = dict.fromkeys(stored[doc.id]) | fields["tags"]
                actions.append(update_action(self.name, doc.id, fields))
        self.backend.bulk(actions)
        return len(docs)

    @reported
    def delete(self, ids: Sequence[str]) -> int:
        if ids and self.exists():
            self.backend.bulk([delete_action(self.name, i) for i in ids])
        return len(ids)

    @reported
    def get(
        self, ids: Sequence[str], with_embedding: bool = False, with_regions: bool = False
    ) -> dict[str, AssetDocument]:
        if not ids:
            return {}
        wanted = {"embedding": with_embedding, "regions": with_regions}
        source = self.backend.source([f for f in VECTOR_FIELDS if not wanted[f]])
        found = self.backend.hits(self.name, get_body(ids, source))
        return {h["_id"]: from_source(h["_source"], AssetDocument) for h in found}

    @reported
    def states(self) -> dict[str, StoredState]:
        return {
            source["id"]: StoredState(**source)
            for source in self.backend.sources(self.name, STATE_FIELDS)
        }

    @reported
    def count(self, where: filters.Filter | None = None) -> int:
        return self.backend.count(self.name, count_body(where))

    @reported
    def knn(
        self,
        vector: Sequence[float],
        where: filters.Filter | None,
        k: int,
        documents: bool = False,
        regions: bool = False,
    ) -> Ranking:
        body = self.backend.knn_body(vector, where, k, regions) | {"_source": _source(documents)}
        found = self.backend.hits(self.name, body)
        return _ranking(found, lambda h: self.backend.cosine_from_score(h["_score"]))

    @reported
    def bm25(
        self, text: str, where: filters.Filter | None, k: int, documents: bool = False
    ) -> Ranking:
        if (scoring := text_query(text)) is None:
            return Ranking([])
        body = bm25_body(scoring, where, k) | {"_source": _source(documents)}
        return _ranking(self.backend.hits(self.name, body), lambda h: float(h["_score"]))

    @reported
    def scan(self, where: filters.Filter | None, offset: int, limit: int) -> list[str]:
        return [h["_id"] for h in self.backend.hits(self.name, scan_body(where, offset, limit))]

    @reported
    def label_counts(self, min_confidence: float, limit: int) -> dict[str, int]:
        response = self.backend.search(self.name, label_counts_body(min_confidence, limit))
        if response is None:
            return {}
        buckets = response["aggregations"]["labels"]["confident"]["names"]["buckets"]
        return {b["key"]: int(b["doc_count"]) for b in buckets}


class ClusterQuarantine(QuarantineLog):
    def __init__(self, backend: ClusterBackend) -> None:
        self.backend = backend
        self.name = quarantine_index(backend.alias)

    @reported
    def add(self, records: Sequence[QuarantineRecord]) -> None:
        if records:
            self.backend.ensure_log(self.name)
            self.backend.bulk(
                [index_action(self.name, r.id, to_source(r, QUARANTINE_FIELDS)) for r in records]
            )

    @reported
    def remove(self, ids: Sequence[str]) -> None:
        if ids:
            self.backend.ensure_log(self.name)
            self.backend.bulk([delete_action(self.name, i) for i in ids])

    @reported
    def records(self) -> list[QuarantineRecord]:
        records = [from_source(s, QuarantineRecord) for s in self.backend.sources(self.name)]
        return sorted(records, key=lambda r: r.uri)


class ClusterRunLog(RunLog):
    def __init__(self, backend: ClusterBackend) -> None:
        self.backend = backend
        self.name = runs_index(backend.alias)

    @reported
    def record(self, entry: IngestSummary | AliasSwitch) -> None:
        self.backend.ensure_log(self.name)
        self.backend.bulk([index_action(self.name, entry.run_id, to_source(entry, RUN_FIELDS))])

    @reported
    def runs(self, limit: int = 20) -> list[IngestSummary]:
        found = self.backend.hits(self.name, runs_body("ingest", limit))
        return [from_source(h["_source"], IngestSummary) for h in found]

    @reported
    def switches(self, limit: int = 20) -> list[AliasSwitch]:
        found = self.backend.hits(self.name, runs_body("switch", limit))
        return [from_source(h["_source"], AliasSwitch) for h in found]


class ClusterJudgements(JudgementLog):
    def __init__(self, backend: ClusterBackend) -> None:
        self.backend = backend
        self.name = judgements_index(backend.alias)

    @reported
    def add(self, judgements: Sequence[Judgement]) -> None:
        if judgements:
            self.backend.ensure_log(self.name)
            latest = {j.id: j for j in judgements}
            self.backend.bulk(
                [
                    index_action(self.name, key, to_source(j, JUDGEMENT_FIELDS))
                    for key, j in latest.items()
                ]
            )

    @reported
    def judgements(self, tag: str | None = None) -> list[Judgement]:
        where = None if tag is None else {"term": {"tag": tag}}
        found = [from_source(s, Judgement) for s in self.backend.sources(self.name, query=where)]
        return sorted(found, key=lambda j: (j.tag, j.asset_id))

    @reported
    def remove(self, tag: str) -> int:
        # Deleted by id, not by query: _delete_by_query lives in a module (reindex) that not
        # every node has, and a tag's judgements are few.
        found = self.judgements(tag)
        self.backend.bulk([delete_action(self.name, j.id) for j in found])
        return len(found)


def _source(documents: bool) -> Any:
    """The ``_source`` option of a ranking: nothing, or the documents without their vectors."""
    return {"excludes": list(VECTOR_FIELDS)} if documents else False


def _ranking(hits: list[dict[str, Any]], score: Callable[[dict[str, Any]], float]) -> Ranking:
    """Best first, ties by id (the clusters order equal scores by internal document number)."""
    scored = sorted(((h["_id"], score(h)) for h in hits), key=lambda pair: (-pair[1], pair[0]))
    docs = {h["_id"]: from_source(h["_source"], AssetDocument) for h in hits if "_source" in h}
    return Ranking(scored, docs)
