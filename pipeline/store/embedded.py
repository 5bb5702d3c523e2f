"""The embedded default store: LanceDB on local disk, no server.

Design notes (measured in ``../shared/notes/environment.md`` and ``benchmarks/``):

* Upserts use ``merge_insert("id")`` so re-ingesting never duplicates an id.
* Vectors are L2-normalised and searched with the cosine distance; ``score = 1 - distance``.
* Below ``ann_min_rows`` rows there is no ANN index at all (exact search is fast there);
  above it ``optimize()`` builds IVF_SQ (sqrt(n) partitions), queried with ``refine_factor``
  and ``nprobes_fraction`` of the partitions (at least ``nprobes``).
* A filtered vector search first counts the rows passing the filter; when at most
  ``exact_search_max_rows`` pass, it bypasses the ANN index and ranks them exactly, so a
  selective filter can never return fewer than k hits or silently lose recall.
* LanceDB filters cannot look inside a list of ``{name, confidence}`` structs, so every label
  is also stored as a ``"name:floor(confidence)"`` key; "label X with confidence >= c" becomes
  ``array_has_any(label_keys, ['x:c', ..., 'x:100'])`` and the exact confidence is re-checked.
* Text search uses LanceDB's full-text index over one ``text`` column (title, description,
  keywords); hybrid search fuses the vector and text rankings with RRF or a weighted sum.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, IvfSq, LabelList

from pipeline.document import (
    AssetDocument,
    IngestSummary,
    Label,
    QuarantineRecord,
    StoredState,
)
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

QUARANTINE_TABLE = "quarantine"
RUNS_TABLE = "runs"
_STATE_COLUMNS = ["id", "uri", "sha256", "fingerprint", "size_bytes", "mtime_ns"]

_LABEL_TYPE = pa.struct(
    [("name", pa.string()), ("confidence", pa.float64()), ("parents", pa.list_(pa.string()))]
)
_QUARANTINE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("fingerprint", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("reason", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)

_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("summary_json", pa.string()),
    ]
)


def asset_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("uri", pa.string()),
            ("sha256", pa.string()),
            ("fingerprint", pa.string()),
            ("size_bytes", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("format", pa.string()),
            ("title", pa.string()),
            ("description", pa.string()),
            ("keywords", pa.list_(pa.string())),
            ("metadata_json", pa.string()),
            ("metadata_kv", pa.list_(pa.string())),
            ("labels", pa.list_(_LABEL_TYPE)),
            ("label_keys", pa.list_(pa.string())),
            ("text", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("ingested_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def table_name(base: str, model_id: str) -> str:
    """One table per model version, e.g. ``assets__mobilenet_v2_imagenet_1``."""
    return f"{base}__{re.sub(r'[^A-Za-z0-9]+', '_', model_id).strip('_').lower()}"


Method = TypeVar("Method", bound=Callable[..., Any])
# LanceDB's errors end with the Rust source line that raised them: nothing for a user.
_RUST_LOCATION = re.compile(r",\s*/\S+\.rs:\d+:\d+")


def reported(method: Method) -> Method:
    """The store's files failing (moved or deleted under a running server, a full or read-only
    disk, a corrupt table) leave the store as ``StoreError``, which the CLI prints as one line
    and the API answers with 503, instead of LanceDB's ``RuntimeError`` or an ``OSError``."""

    @functools.wraps(method)
    def wrapper(self: EmbeddedStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError, json.JSONDecodeError) as exc:
            reason = _RUST_LOCATION.sub("", str(exc)) or type(exc).__name__
            raise StoreError(f"the embedded store in {self.path} cannot be used: {reason}") from exc

    return wrapper  # type: ignore[return-value]


class EmbeddedStore(Store):
    """A ``Store`` on LanceDB under ``settings.store_dir`` (safe for concurrent readers).

    The alias is a small JSON file (``aliases.json``) replaced atomically with ``os.replace``:
    a reader sees the old or the new target, never a half-written file.
    """

    @reported
    def __init__(self, settings: Settings, model_id: str) -> None:
        self.settings = settings
        self.model_id = model_id
        self.path = settings.store_dir
        self.path.mkdir(parents=True, exist_ok=True)
        # Interval 0: every query sees the latest committed version, so a long-running API
        # process notices ingests made by the CLI or Airflow without a restart.
        self.db = lancedb.connect(self.path, read_consistency_interval=timedelta(0))
        self.table_name = table_name(settings.table, model_id)
        self._table: lancedb.table.Table | None = None
        # Shared by every model version: both are about files and runs, not vectors.
        self._quarantine = self._open_or_create(
            f"{settings.table}__{QUARANTINE_TABLE}", _QUARANTINE_SCHEMA
        )
        self._runs = self._open_or_create(f"{settings.table}__{RUNS_TABLE}", _RUNS_SCHEMA)

    # -- alias ---------------------------------------------------------------------------------

    @property
    def _alias_file(self) -> Path:
        return self.path / "aliases.json"

    def _aliases(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self._alias_file.read_text())
        except FileNotFoundError:
            return {}

    @reported
    def active_model(self) -> str | None:
        entry = self._aliases().get(self.settings.table)
        return entry["model"] if entry else None

    @reported
    def activate(self) -> str | None:
        aliases = self._aliases()
        previous = aliases.get(self.settings.table, {}).get("model")
        aliases[self.settings.table] = {"model": self.model_id, "table": self.table_name}
        tmp = self._alias_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(aliases, indent=2, sort_keys=True))
        os.replace(tmp, self._alias_file)
        return previous

    @reported
    def indexes(self) -> list[IndexInfo]:
        active = self.active_model()
        prefix = f"{self.settings.table}__"
        infos = []
        for name in self.db.list_tables(limit=1000).tables:
            table = self.db.open_table(name)
            if not name.startswith(prefix) or "vector" not in table.schema.names:
                continue
            model = (table.schema.metadata or {}).get(b"model_id", b"").decode()
            infos.append(
                IndexInfo(
                    model_id=model, name=name, count=table.count_rows(), active=model == active
                )
            )
        return infos

    # -- lifecycle ---------------------------------------------------------------------------

    def _open_or_create(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        try:
            return self.db.open_table(name)
        except ValueError:
            return self.db.create_table(name, schema=schema, exist_ok=True)

    @property
    def table(self) -> lancedb.table.Table | None:
        if self._table is None:
            try:
                self._table = self.db.open_table(self.table_name)
            except ValueError:  # not created yet: nothing ingested with this model
                return None
        return self._table

    @reported
    def ensure(self, dim: int) -> None:
        if self.table is None:
            schema = asset_schema(dim).with_metadata({"model_id": self.model_id})
            self._table = self.db.create_table(self.table_name, schema=schema, exist_ok=True)
        existing = self._table.schema.field("vector").type.list_size
        if existing != dim:
            raise ValueError(
                f"table {self.table_name!r} holds {existing}-d vectors, the model gives {dim}-d; "
                "use a new table (model version) instead of mixing them"
            )

    # -- writes ------------------------------------------------------------------------------

    @reported
    def upsert(self, docs: Sequence[AssetDocument]) -> int:
        if not docs:
            return 0
        if any(d.embedding is None for d in docs):
            raise ValueError("documents must carry their embedding to be indexed")
        self.ensure(len(docs[0].embedding or ()))
        rows = pa.Table.from_pylist([_to_row(d) for d in docs], schema=self._table.schema)
        (
            self._table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(rows)
        )
        self._quarantine.delete(_in_list("id", [d.id for d in docs]))
        return len(docs)

    @reported
    def delete(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        where = _in_list("id", ids)
        if self.table is not None:
            self.table.delete(where)
        self._quarantine.delete(where)
        return len(ids)

    @reported
    def quarantine(self, records: Sequence[QuarantineRecord]) -> None:
        if not records:
            return
        rows = pa.Table.from_pylist([r.model_dump() for r in records], schema=_QUARANTINE_SCHEMA)
        (
            self._quarantine.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(rows)
        )
        if self.table is not None:
            self.table.delete(_in_list("id", [r.id for r in records]))

    @reported
    def optimize(self) -> None:
        """Compact files and build or refresh the indexes a large table needs."""
        table = self.table
        if table is None or table.count_rows() == 0:
            return
        indexed = {tuple(i.columns): i.index_type for i in table.list_indices()}
        if ("text",) not in indexed:
            table.create_index("text", config=FTS())
        for column in ("label_keys", "metadata_kv"):  # serve array_has_any filters
            if (column,) not in indexed:
                table.create_index(column, config=LabelList())
        rows = table.count_rows()
        if ("vector",) not in indexed and rows >= self.settings.ann_min_rows:
            table.create_index(
                "vector",
                config=IvfSq(distance_type="cosine", num_partitions=max(1, int(math.sqrt(rows)))),
            )
        # Folds new rows into existing indexes and compacts; keeps recent versions for readers.
        table.optimize(cleanup_older_than=timedelta(hours=1))

    @reported
    def record_run(self, summary: IngestSummary) -> None:
        row = {
            "run_id": summary.run_id,
            "started_at": summary.started_at.astimezone(UTC),
            "summary_json": summary.model_dump_json(),
        }
        self._runs.merge_insert(
            "run_id"
        ).when_matched_update_all().when_not_matched_insert_all().execute(
            pa.Table.from_pylist([row], schema=_RUNS_SCHEMA)
        )

    @reported
    def runs(self, limit: int = 20) -> list[IngestSummary]:
        rows = self._runs.search().limit(None).to_arrow().to_pylist()
        rows.sort(key=lambda r: r["started_at"], reverse=True)
        return [IngestSummary.model_validate_json(r["summary_json"]) for r in rows[:limit]]

    # -- reads -------------------------------------------------------------------------------

    @reported
    def count(self) -> int:
        return 0 if self.table is None else self.table.count_rows()

    @reported
    def get(self, asset_id: str, with_embedding: bool = True) -> AssetDocument | None:
        if self.table is None:
            return None
        rows = self.table.search().where(_in_list("id", [asset_id])).limit(1).to_list()
        return _from_row(rows[0], with_embedding) if rows else None

    @reported
    def states(self) -> dict[str, StoredState]:
        states: dict[str, StoredState] = {}
        for table, quarantined in ((self.table, False), (self._quarantine, True)):
            if table is None:
                continue
            for row in table.search().select(_STATE_COLUMNS).limit(None).to_arrow().to_pylist():
                states[row["id"]] = StoredState(quarantined=quarantined, **row)
        return states

    @reported
    def label_counts(self, min_confidence: float = 50.0, limit: int = 100) -> dict[str, int]:
        if self.table is None:
            return {}
        labels = self.table.search().select(["labels"]).limit(None).to_arrow()["labels"]
        flat = pc.list_flatten(labels)
        names = pc.filter(
            pc.struct_field(flat, "name"),
            pc.greater_equal(pc.struct_field(flat, "confidence"), min_confidence),
        )
        counts = sorted(
            ((c["values"].as_py(), c["counts"].as_py()) for c in pc.value_counts(names)),
            key=lambda nc: (-nc[1], nc[0]),
        )
        return dict(counts[:limit])

    @reported
    def quarantined(self) -> list[QuarantineRecord]:
        rows = self._quarantine.search().limit(None).to_arrow().to_pylist()
        return sorted((QuarantineRecord(**r) for r in rows), key=lambda r: r.uri)

    @reported
    def search(self, request: SearchRequest) -> SearchResponse:
        table = self.table
        if table is None or table.count_rows() == 0:
            return SearchResponse(hits=[], total_candidates=0)
        where = _where(request)
        total = table.count_rows(where) if where else table.count_rows()
        needed = request.offset + request.k
        exact_labels = _needs_label_recheck(request)
        fetch = needed * 2 if exact_labels else needed
        while True:
            vector_rows = (
                self._vector(table, request, where, fetch, total) if request.vector else []
            )
            text_rows = self._text(table, request, where, fetch) if request.text else []
            if request.vector is None and request.text is None:
                vector_rows = (
                    table.search().where(where).limit(fetch).to_list()
                    if where
                    else (table.search().limit(fetch).to_list())
                )
            hits = _fuse(request, vector_rows, text_rows)
            if exact_labels:
                hits = [h for h in hits if request.label_filters_match(h.document.labels)]
            exhausted = max(len(vector_rows), len(text_rows)) < fetch or fetch >= total
            if len(hits) >= needed or exhausted:
                break
            fetch *= 4
        if request.min_score is not None:
            hits = [h for h in hits if h.score >= request.min_score]
        return SearchResponse(hits=hits[request.offset : needed], total_candidates=total)

    def _vector(
        self, table: Any, request: SearchRequest, where: str | None, limit: int, total: int
    ) -> list[dict[str, Any]]:
        query = (
            table.search(np.asarray(request.vector, dtype=np.float32), vector_column_name="vector")
            .distance_type("cosine")
            .limit(limit)
        )
        if where:
            query = query.where(where, prefilter=True)
        has_ann = any(i.columns == ["vector"] for i in table.list_indices())
        if has_ann and total <= self.settings.exact_search_max_rows:
            query = query.bypass_vector_index()
        elif has_ann:
            partitions = max(1, int(math.sqrt(table.count_rows())))  # as optimize() builds it
            probes = max(
                self.settings.nprobes, math.ceil(self.settings.nprobes_fraction * partitions)
            )
            query = query.nprobes(probes).refine_factor(self.settings.refine_factor)
        rows = query.to_list()
        if has_ann and len(rows) < min(limit, total):
            # The ANN index missed matches a selective filter let through: rank exactly instead.
            rows = query.bypass_vector_index().to_list()
        return rows

    @staticmethod
    def _text(table: Any, request: SearchRequest, where: str | None, limit: int) -> list[dict]:
        query = table.search(request.text, query_type="fts", fts_columns="text").limit(limit)
        if where:
            query = query.where(where, prefilter=True)
        return query.to_list()


# -- row conversion ----------------------------------------------------------------------------


def _to_row(doc: AssetDocument) -> dict[str, Any]:
    return {
        **doc.model_dump(exclude={"labels", "metadata", "embedding"}),
        "metadata_json": json.dumps(doc.metadata, sort_keys=True),
        "metadata_kv": [f"{k}={v}" for k, v in sorted(doc.metadata.items())],
        "labels": [lab.model_dump() for lab in doc.labels],
        "label_keys": [_label_key(lab.name, lab.confidence) for lab in doc.labels],
        "text": "\n".join(filter(None, [doc.title, doc.description, " ".join(doc.keywords)])),
        "vector": doc.embedding,
        "ingested_at": doc.ingested_at.astimezone(UTC),
    }


def _from_row(row: dict[str, Any], with_embedding: bool = False) -> AssetDocument:
    return AssetDocument(
        **{
            k: row[k]
            for k in AssetDocument.model_fields
            if k in row and k not in ("labels", "metadata", "embedding")
        },
        labels=[Label(**lab) for lab in row.get("labels") or []],
        metadata=json.loads(row.get("metadata_json") or "{}"),
        embedding=list(row["vector"]) if with_embedding and row.get("vector") is not None else None,
    )


# -- filters -----------------------------------------------------------------------------------


def _label_key(name: str, confidence: float) -> str:
    return f"{name.casefold()}:{math.floor(confidence)}"


def _label_clause(f: LabelFilter, *, inclusive: bool) -> str:
    """SQL candidates for one label filter. ``inclusive`` adds the bucket that holds the
    threshold itself when it is fractional (a superset, re-checked exactly afterwards)."""
    low = math.floor(f.min_confidence) if inclusive else math.ceil(f.min_confidence)
    keys = [f"{f.name.casefold()}:{b}" for b in range(low, 101)]
    return f"array_has_any(label_keys, [{', '.join(_quote(k) for k in keys)}])"


def _where(request: SearchRequest) -> str | None:
    clauses = [_label_clause(f, inclusive=True) for f in request.labels_all]
    if request.labels_any:
        clauses.append(
            "(" + " OR ".join(_label_clause(f, inclusive=True) for f in request.labels_any) + ")"
        )
    clauses += [f"NOT {_label_clause(f, inclusive=False)}" for f in request.labels_none]
    for key, values in sorted(request.metadata.items()):
        kv = ", ".join(_quote(f"{key}={v}") for v in values)
        clauses.append(f"array_has_any(metadata_kv, [{kv}])")
    if request.exclude_ids:
        clauses.append(f"NOT ({_in_list('id', request.exclude_ids)})")
    return " AND ".join(clauses) or None


def _needs_label_recheck(request: SearchRequest) -> bool:
    filters = [*request.labels_all, *request.labels_any, *request.labels_none]
    return any(f.min_confidence != math.floor(f.min_confidence) for f in filters)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(_quote(v) for v in values)})"


# -- scoring -----------------------------------------------------------------------------------


def _fuse(request: SearchRequest, vector_rows: list[dict], text_rows: list[dict]) -> list[Hit]:
    """Merge the vector and text rankings into hits ordered by the request's scoring."""
    # Rows of a filter-only listing carry no distance: they score 0.
    vec = {
        r["id"]: (rank, 1.0 - float(r["_distance"]))
        for rank, r in enumerate(vector_rows)
        if "_distance" in r
    }
    txt = {r["id"]: (rank, float(r["_score"])) for rank, r in enumerate(text_rows)}
    rows = {r["id"]: r for r in [*text_rows, *vector_rows]}
    hybrid = bool(request.vector is not None and request.text)
    top_text = max((s for _, s in txt.values()), default=0.0) or 1.0
    scored = []
    for asset_id, row in rows.items():
        v, t = vec.get(asset_id), txt.get(asset_id)
        if not hybrid:
            score = v[1] if v else (t[1] if t else 0.0)
        elif request.hybrid == "rrf":
            score = sum(1.0 / (request.rrf_k + rank + 1) for rank, _ in filter(None, (v, t)))
        else:
            # Cosine is already in [0, 1] for these non-negative features; BM25 is scaled by
            # the best text score so both legs weigh what the weights say.
            score = request.vector_weight * (v[1] if v else 0.0) + (1 - request.vector_weight) * (
                (t[1] / top_text) if t else 0.0
            )
        scored.append((score, asset_id, row, v, t))
    if request.vector is not None or request.text:
        # A filter-only listing keeps the scan order: sorting each page's partial fetch by id
        # would make consecutive pages overlap.
        scored.sort(key=lambda s: (-s[0], s[1]))
    wanted = {f.name.casefold() for f in [*request.labels_all, *request.labels_any]}
    hits = []
    for score, _, row, v, t in scored:
        doc = _from_row(row)
        hits.append(
            Hit(
                id=doc.id,
                score=score,
                vector_score=v[1] if v else None,
                text_score=t[1] if t else None,
                matched_labels=[lab for lab in doc.labels if lab.name.casefold() in wanted],
                document=doc,
            )
        )
    return hits
