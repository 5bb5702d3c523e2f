"""The embedded default store: LanceDB on local disk, no server.

Design notes (measured in ``../shared/notes/environment.md`` and ``benchmarks/``):

* Tables are laid out from the field tables (``pipeline/document.py``): one per model version
  (``assets__mobilenet_v2_imagenet_1``), one quarantine log and one run log per base name. The
  alias is a small JSON file replaced atomically.
* Upserts use ``merge_insert("id")`` so re-ingesting never duplicates an id. Vectors are
  L2-normalised and searched with the cosine distance; ``score = 1 - distance``.
* Below ``ann_min_rows`` rows there is no ANN index at all (exact search is fast there); above
  it ``optimize()`` builds IVF_SQ with partitions of about ``ann_partition_rows`` rows, queried
  with ``refine_factor`` and enough partitions probed (at least ``nprobes``) to hold about
  ``ann_candidates`` rows that pass the filter: a filter passing 1 % of a 1M-row table (10,000
  rows) probes 500 of its 1,000 partitions, no filter 20. A filtered IVF search only finds what
  passes in the partitions it probes; with a fixed 20 probes, recall@10 fell to about 0.75 at a
  5 % filter on 100k rows and to 0.88 at 1 % on 1M.
  The index is given a partition size, not a number of partitions: LanceDB's own index
  maintenance (``Table.optimize``) splits partitions that grow past the size it was given and
  joins smaller ones, and an index given only a number of partitions had them joined to about
  30,000 rows each, so that probing 60 searched every row (54 ms a query at 1M rows, 10 ms
  with partitions of 1,000; section 3 of ``docs/benchmarks.md``). The index's name records
  that size (``embedding_ivf_1000``); an index of another size is built again. A filtered
  search whose filter passes at most ``exact_search_max_rows`` rows bypasses the ANN index and
  ranks them exactly, as does one where the index found fewer than ``k``: a very selective
  filter never loses recall.
* LanceDB filters cannot look inside a list of ``{name, confidence}`` structs, so every label is
  also a ``name:whole-percent`` keyword (``label_keys``). "Label X with confidence >= c" is
  ``array_has_any`` over the buckets above ``c``, plus the ids of the documents in ``c``'s own
  bucket whose exact confidence passes (looked up when ``c`` has decimals): the predicate is
  exact, so counts are too.
* Text search is LanceDB's full-text index (with positions, so phrases work) over one ``text``
  column: title, description and keywords.
* Writes go through LanceDB's sync ``Table``; the reads a search makes go through its async
  ``AsyncTable`` on LanceDB's own event loop (``lancedb.background_loop.LOOP``, which LanceDB
  restarts in a forked child), one coroutine per read. The sync query builder asks the table
  for its schema several times per query, each a round trip to that loop. With this and
  region-free reads (``get(..., with_regions=False)``) an asset query on the sample library
  fell from 14.4 to 9.4 ms in one process (section 8 of ``docs/benchmarks.md``).
* A document is read from one JSON column (``document_json``, like OpenSearch's ``_source``)
  plus the tag columns ``set_tags`` rewrites, not from its 18 field columns: LanceDB reads each
  column of scattered rows separately, and at 1M rows the 11 documents of a page took 31 ms
  from the columns against 2.3 ms from one column (section 3 of ``docs/benchmarks.md``). The
  field columns stay for filters, indexes and counts. A ranking returns row ids, and its
  page's documents are taken by row id, skipping the id lookup.
* Each LanceDB query costs about 3 ms however few rows it reads, and an API process reads the
  same documents again and again, so reads keep what they found in a :class:`ReadCache` of the
  table's current version (checked once a search, 0.25 ms): documents by id, counts by
  filter, whether there is an ANN index. A vector or text ranking then reads only ids and
  scores, and the page's documents come from the cache.
* A table of at most ``memory_search_max_rows`` rows is ranked in memory (:class:`InMemory`,
  part of the read cache): numpy ranks 5,000 unit vectors in under 1 ms, where a LanceDB
  query costs 2.5-3 ms at any size. The rows a filter passes are still read from LanceDB, once
  per filter and version, so filters keep one meaning; the ids an asset query leaves out are
  applied in memory. A search checks the table version once (``snapshot``), not before each
  of its reads (0.25 ms each, and under load a queue at LanceDB's one event-loop thread). On
  the sample library an asset query fell from 6.4 to 1.0 ms in one process, with the same hits
  and scores as LanceDB's exact search.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cachetools import LRUCache
from lancedb.background_loop import LOOP
from lancedb.index import FTS, BTree, IvfSq, LabelList
from lancedb.table import AsyncTable
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
    Label,
    QuarantineRecord,
    StoredState,
    field,
    fields_for,
    label_key,
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

_LABEL = pa.struct(
    [("name", pa.string()), ("confidence", pa.float64()), ("parents", pa.list_(pa.string()))]
)
ARROW_TYPES: dict[str, pa.DataType] = {
    "keyword": pa.string(),
    "keywords": pa.list_(pa.string()),
    "text": pa.string(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float64(),
    "date": pa.timestamp("us", tz="UTC"),
    "json": pa.string(),
    "labels": pa.list_(_LABEL),
}
FIELDS = fields_for(ASSET_FIELDS, "embedded")
VECTOR_KINDS = ("vector", "regions")
TAG_UPDATE = [f for f in FIELDS if f.name in ("id", *TAG_FIELDS)]
"""The columns a tag update writes: the key, then what scoring a tag changes."""
REGION_BOXES = "region_boxes"
"""The column beside ``regions`` (one vector per region, a multivector column) that holds the
regions' boxes in the same order."""
REGION_COLUMNS = ["regions", REGION_BOXES]
SOURCE = "document_json"
"""The column a document is read from: its stored fields as JSON, less the vectors and the
tags (those ``set_tags`` rewrites stay in their columns and are read from them)."""
SOURCE_FIELDS = {
    f.name for f in FIELDS if f.stored and f.kind not in VECTOR_KINDS and f.name != "id"
} - set(TAG_FIELDS)
SOURCE_COMPLETE = {"lookalike:complete": "true"}
""":data:`SOURCE`'s field metadata once every row has it."""
READ_COLUMNS = ["id", SOURCE, *TAG_FIELDS]
"""What a document is read from, without its vectors."""
CACHED_FILTERS = 1_024
"""Filters whose counts (an int each) and, for a table in memory, whose passing rows (a bit
each) a :class:`ReadCache` keeps."""
Cached = tuple[dict[str, Any], np.ndarray | None]
"""A document as the read cache keeps it: its fields without vectors, and its embedding."""


def arrow_schema(fields: Sequence[FieldSpec], dim: int | None = None) -> pa.Schema:
    """The Arrow schema of a table of ``fields`` (vectors of ``dim`` float32)."""
    columns: list[tuple[str, pa.DataType]] = []
    for f in fields:
        if f.kind == "vector":
            columns.append((f.name, pa.list_(pa.float32(), dim)))
        elif f.kind == "regions":
            columns.append((f.name, pa.list_(pa.list_(pa.float32(), dim))))
            columns.append((REGION_BOXES, pa.list_(pa.list_(pa.float32(), 4))))
        else:
            columns.append((f.name, ARROW_TYPES[f.kind]))
    return pa.schema(columns)


def asset_schema(dim: int) -> pa.Schema:
    """The Arrow schema of an asset table: its fields' columns and :data:`SOURCE` (marked
    complete: a new table's every row is written with it)."""
    source = pa.field(SOURCE, pa.string(), metadata=SOURCE_COMPLETE)
    return arrow_schema(FIELDS, dim).append(source)


_to_json = json.JSONEncoder(sort_keys=True, default=str).encode
"""``json.dumps(value, sort_keys=True, default=str)`` without building an encoder per value
(4 of the 7 us a small value took)."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused, while rows are built: rows hold no reference cycles,
    and its passes over the new rows and dumps took half the time of building 10k rows (0.42
    against 0.19 s, docs/benchmarks.md section 3). Cycles other threads make meanwhile are
    collected once it runs again; a collector that was already off stays off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def to_rows(records: Sequence[BaseModel], fields: Sequence[FieldSpec]) -> list[dict[str, Any]]:
    """Table rows: each record's fields as the schema types them, plus the derived ones.
    What to do with each field is worked out once per call, not once per row (0.44 against
    0.38 s for 10k rows, docs/benchmarks.md section 3). A vector is taken as the
    record holds it, not dumped: a copy of its floats per row was about a fifth of a bulk
    write's time.

    A JSON field's empty value (``{}``, ``[]``, none) is written as NULL, which reads back as
    the field's default (every JSON field defaults to empty): a column of mostly ``"{}"``
    (``tags`` before any custom tag is applied) made a search's read of its 11 documents by row
    id take 8 instead of 4 ms at 1M rows. Lance takes rows slowly from pages of identical
    strings: 6.4 ms for 11 of 1M rows, against 1.6 ms from NULLs and 2.5 ms from distinct
    strings (docs/benchmarks.md, section 3)."""
    special = ("vector", "json", "date", "regions")  # converted, or taken as they are
    dumped = {spec.name for spec in fields if spec.stored and spec.kind != "vector"}
    plain = [s.name for s in fields if s.stored and s.kind not in special]
    derived = [(s.name, s.derive) for s in fields if s.derive and s.kind not in special]
    vectors = [s.name for s in fields if s.kind == "vector"]
    json_fields = [(s.name, s.derive) for s in fields if s.kind == "json"]
    dates = [(s.name, s.derive) for s in fields if s.kind == "date"]
    regions = [s.name for s in fields if s.kind == "regions"]
    rows = []
    with _collector_paused():
        for record in records:
            values = record.model_dump(include=dumped)
            row = {name: values.get(name) for name in plain}
            row.update((name, getattr(record, name)) for name in vectors)
            row.update((name, derive(record)) for name, derive in derived)
            for name, derive in json_fields:
                value = derive(record) if derive else values.get(name)
                row[name] = _to_json(value) if value else None
            for name, derive in dates:
                value = derive(record) if derive else values.get(name)
                row[name] = None if value is None else value.astimezone(UTC)
            for name in regions:
                value = values.get(name) or []
                row[REGION_BOXES] = [region["box"] for region in value]
                row[name] = [region["embedding"] for region in value]
            rows.append(row)
    return rows


def source(doc: AssetDocument) -> str:
    """The document's :data:`SOURCE` column (pydantic's own JSON encoder: 3x faster than
    ``json.dumps`` of a dump)."""
    return doc.model_dump_json(include=SOURCE_FIELDS)


def asset_rows(docs: Sequence[AssetDocument]) -> list[dict[str, Any]]:
    """Rows of an asset table (:func:`asset_schema`)."""
    with _collector_paused():
        rows = to_rows(docs, FIELDS)
        for row, doc in zip(rows, docs, strict=True):
            row[SOURCE] = source(doc)
    return rows


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows of :func:`to_rows` as an Arrow table of ``schema``. Region vectors (numpy, a
    ``(regions, dim)`` stack per row) go in as one numpy buffer: Arrow's conversion of their
    37,000 Python floats per asset took 9 ms, more than the model (docs/benchmarks.md,
    section 8)."""
    if "regions" not in schema.names:
        return pa.Table.from_pylist(rows, schema=schema)
    at = schema.get_field_index("regions")
    field = schema.field(at)
    dim = field.type.value_type.list_size
    stacks = [np.asarray(row.pop("regions") or (), np.float32).reshape(-1, dim) for row in rows]
    offsets = np.cumsum([0, *map(len, stacks)], dtype=np.int32)
    flat = np.concatenate([np.zeros((0, dim), np.float32), *stacks]).reshape(-1)
    column = pa.ListArray.from_arrays(
        pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    )
    return pa.Table.from_pylist(rows, schema=schema.remove(at)).add_column(at, field, column)


def from_table(table: pa.Table) -> list[dict[str, Any]]:
    """:func:`to_table` backwards: rows whose region vectors are numpy stacks (views of the
    table's buffer, no Python floats)."""
    if "regions" not in table.column_names:
        return table.to_pylist()
    column = table.column("regions").combine_chunks()
    rows = table.drop_columns(["regions"]).to_pylist()
    dim = column.type.value_type.list_size
    flat = column.values.flatten().to_numpy().reshape(-1, dim)  # the rows' regions, in order
    offsets = column.offsets.to_numpy()
    for n, row in enumerate(rows):
        row["regions"] = flat[offsets[n] : offsets[n + 1]]
    return rows


def from_row(row: dict[str, Any], fields: Sequence[FieldSpec]) -> dict[str, Any]:
    """The record's fields of one row (the derived ones left out)."""
    values = {}
    for spec in fields:
        if spec.stored and spec.name in row:
            value = row[spec.name]
            if spec.kind == "json":
                if value is None:  # empty when written, or a column added since: the default
                    continue
                value = json.loads(value)
            elif spec.kind == "regions":
                boxes = row.get(REGION_BOXES) or []
                vectors = () if value is None else value
                value = [{"box": b, "embedding": e} for b, e in zip(boxes, vectors, strict=True)]
            values[spec.name] = value
    return values


Method = TypeVar("Method", bound=Callable[..., Any])
# LanceDB's errors end with the Rust source line that raised them: nothing for a user.
_RUST_LOCATION = re.compile(r",\s*/\S+\.rs:\d+:\d+")


def reported(method: Method) -> Method:
    """The store's files failing (moved or deleted under a running server, a full or read-only
    disk, a corrupt table) leave the store as ``StoreError``, which the CLI prints as one line
    and the API answers with 503, instead of LanceDB's ``RuntimeError`` or an ``OSError``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (OSError, RuntimeError, json.JSONDecodeError) as exc:
            reason = _RUST_LOCATION.sub("", str(exc)) or type(exc).__name__
            where = self.settings.store_dir
            raise StoreError(f"the embedded store in {where} cannot be used: {reason}") from exc

    return wrapper  # type: ignore[return-value]


def table_name(base: str, model_id: str) -> str:
    """One table per model version, e.g. ``assets__mobilenet_v2_imagenet_1``."""
    return f"{base}__{re.sub(r'[^A-Za-z0-9]+', '_', model_id).strip('_').lower()}"


class EmbeddedBackend(Backend):
    """The LanceDB store under ``settings.store_dir`` (safe for concurrent readers)."""

    @reported
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.store_dir.mkdir(parents=True, exist_ok=True)
        # Interval 0: every query sees the latest committed version, so a long-running API
        # process notices ingests made by the CLI or Airflow without a restart.
        fresh = timedelta(0)
        # One cache of indexes and file metadata for both connections (each would make its own).
        self.session = lancedb.Session()
        where = settings.store_dir
        self.db = lancedb.connect(where, read_consistency_interval=fresh, session=self.session)
        self.reads = LOOP.run(
            lancedb.connect_async(where, read_consistency_interval=fresh, session=self.session)
        )
        self.catalogue = EmbeddedCatalogue(self)
        self.quarantine = EmbeddedQuarantine(self)
        self.runs = EmbeddedRunLog(self)
        self.judgements = EmbeddedJudgements(self)

    def index(self, model_id: str) -> EmbeddedIndex:
        return EmbeddedIndex(self, model_id)

    def open_table(self, name: str) -> lancedb.table.Table | None:
        try:
            return self.db.open_table(name)
        except ValueError:  # not created yet
            return None

    def open_or_create(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        return self.open_table(name) or self.db.create_table(name, schema=schema, exist_ok=True)


# -- the alias ----------------------------------------------------------------------------------


class EmbeddedCatalogue(IndexCatalogue):
    """Tables per model version; the alias is ``aliases.json``, replaced with ``os.replace`` so
    a reader sees the old or the new target, never a half-written file."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.base = backend.settings.table
        self.path = backend.settings.store_dir / "aliases.json"

    def _aliases(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    @reported
    def active(self) -> str | None:
        entry = self._aliases().get(self.base)
        return entry["model"] if entry else None

    @reported
    def switch(self, model_id: str) -> str | None:
        name = table_name(self.base, model_id)
        if self.backend.open_table(name) is None:
            raise ValueError(f"no index for {model_id}: ingest with it first")
        aliases = self._aliases()
        previous = aliases.get(self.base, {}).get("model")
        aliases[self.base] = {"model": model_id, "table": name}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(aliases, indent=2, sort_keys=True))
        os.replace(tmp, self.path)
        return previous

    @reported
    def indexes(self) -> list[IndexInfo]:
        active = self.active()
        infos = []
        for name in self.backend.db.list_tables(limit=1000).tables:
            if not name.startswith(f"{self.base}__"):
                continue
            table = self.backend.db.open_table(name)
            model = (table.schema.metadata or {}).get(b"model_id", b"").decode()
            if model:
                count = table.count_rows()
                infos.append(IndexInfo(model, name, count, model == active))
        return infos


# -- documents ----------------------------------------------------------------------------------


class ReadCache:
    """What reads of one version of a table found, to answer the same reads again without a
    LanceDB query (see the module docstring).

    Everything here belongs to ``version``: the index replaces the cache when a read finds a
    newer version, and a read stores what it found only in the cache it started with. A read
    never sees data older than the version it checked, so the cache serves nothing that a read
    of the latest version would not. Documents are kept without their region vectors (150 kB
    each; the reads that need them go to the table) and with their embedding as float32, not
    as 1,280 Python floats (8 kB against 41 kB a document), as the fields a document is
    validated from on every read (16 us; a caller may change its copy)."""

    def __init__(self, version: int, documents: int) -> None:
        self.version = version
        self.documents: LRUCache[str, Cached] | None = LRUCache(documents) if documents else None
        self.counts: LRUCache[str | None, int] = LRUCache(CACHED_FILTERS)
        self.indexed: bool | None = None
        self.memory: InMemory | None = None
        self.memory_read = False  # whether ``memory`` was looked for (it stays None if too big)
        self.lock = threading.Lock()  # the API reads from several threads

    def lookup(self, ids: Sequence[str]) -> dict[str, Cached]:
        if self.documents is None:
            return {}
        with self.lock:
            return {i: self.documents[i] for i in ids if i in self.documents}

    def keep(self, found: dict[str, Cached]) -> None:
        if self.documents is not None:
            with self.lock:
                self.documents.update(found)

    async def count(self, reader: AsyncTable, sql: str | None) -> int:
        with self.lock:
            rows = self.counts.get(sql)
        if rows is None:
            rows = await reader.count_rows(sql)
            with self.lock:
                self.counts[sql] = rows
        return rows

    async def read_memory(self, reader: AsyncTable, max_rows: int) -> None:
        """Read the whole table into ``memory`` if it has at most ``max_rows`` rows."""
        if max_rows:
            query = reader.query().select(["id", "embedding"]).limit(max_rows + 1)
            table = await query.to_arrow()
            if table.num_rows <= max_rows:
                self.memory = InMemory(table)
        self.memory_read = True


class InMemory:
    """A small table's rows in memory, to rank and count them without a LanceDB query: their
    ids, their embeddings scaled to unit length (as the cosine distance does), and the rows
    each filter passes, read once per filter from LanceDB (so a filter means here exactly what
    it means in SQL). Filters that only leave ids out (an asset query leaves out the asset
    itself) are applied here, so they do not make every query a new filter to read."""

    def __init__(self, table: pa.Table) -> None:
        self.ids: list[str] = table.column("id").to_pylist()
        self.positions = {asset_id: n for n, asset_id in enumerate(self.ids)}
        vectors, missing = _vectors(table.column("embedding"))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        self.embedded = ~missing & (norms[:, 0] > 0)
        self.passing: LRUCache[str, np.ndarray] = LRUCache(CACHED_FILTERS)
        self.lock = threading.Lock()

    def rows(
        self, sql: str | None, excluded: set[str], read: Callable[[str], list[str]]
    ) -> np.ndarray:
        """Which rows pass the filter ``sql`` and are not among the ``excluded`` ids; ``read``
        gives the ids a filter passes, the first time it is seen."""
        if sql is None:
            mask = np.ones(len(self.ids), dtype=bool)
        else:
            with self.lock:
                found = self.passing.get(sql)
            if found is None:
                found = np.zeros(len(self.ids), dtype=bool)
                found[[self.positions[i] for i in read(sql) if i in self.positions]] = True
                with self.lock:
                    self.passing[sql] = found
            mask = found.copy()
        mask[[self.positions[i] for i in excluded if i in self.positions]] = False
        return mask

    def rank(self, vector: np.ndarray, mask: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` passing rows nearest to ``vector`` by cosine, best first, ties by id."""
        norm = float(np.linalg.norm(vector))
        candidates = np.flatnonzero(mask & self.embedded)
        if norm == 0 or not len(candidates):
            return []
        scores = self.vectors[candidates] @ (vector / norm)
        if len(candidates) > k:  # the best k and every row tied with the k-th
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= kth
            candidates, scores = candidates[keep], scores[keep]
        ranked = sorted(
            ((self.ids[n], float(s)) for n, s in zip(candidates, scores, strict=True)),
            key=lambda pair: (-pair[1], pair[0]),
        )
        return ranked[:k]


class EmbeddedIndex(DocumentIndex):
    """One model version's table (see the module docstring)."""

    def __init__(self, backend: EmbeddedBackend, model_id: str) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.model_id = model_id
        self.name = table_name(self.settings.table, model_id)
        self._table: lancedb.table.Table | None = None
        self._reader: AsyncTable | None = None
        self._cache: ReadCache | None = None
        self._warm = False  # whether to load the vector index on each new version (``warm``)
        self._pinned = threading.local()  # the read cache a ``snapshot`` holds, per thread

    @property
    @reported
    def table(self) -> lancedb.table.Table | None:
        if self._table is None:
            self._table = self.backend.open_table(self.name)
            if self._table is not None:
                legacy = "vector" in self._table.schema.names
                if legacy:
                    self._migrate(self._table)
                self._add_missing(self._table)
                self._add_source(self._table)
                if legacy:
                    self.optimize()
        return self._table

    @property
    @reported
    def reader(self) -> AsyncTable | None:
        """The same table for reads, through the async API (see the module docstring); opened
        after ``table``, so that an old table is upgraded before it is read."""
        if self._reader is None and self.table is not None:
            self._reader = LOOP.run(self.backend.reads.open_table(self.name))
        return self._reader

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        reader = self.reader
        if reader is None or getattr(self._pinned, "cache", None) is not None:
            yield  # nothing to read yet, or already inside a snapshot
            return
        self._pinned.cache = self._current(reader)
        try:
            yield
        finally:
            self._pinned.cache = None

    @reported
    def _current(self, reader: AsyncTable) -> ReadCache:
        """The read cache of the table's latest version (a new, empty one after a write), or
        the one the thread's ``snapshot`` holds."""
        if (pinned := getattr(self._pinned, "cache", None)) is not None:
            return pinned
        version = LOOP.run(reader.version())
        cache = self._cache
        if cache is None or cache.version != version:
            cache = self._cache = ReadCache(version, self.settings.read_cache_documents)
            if self._warm:  # in the background: this read goes on meanwhile
                asyncio.run_coroutine_threadsafe(self._prewarm(reader), LOOP.loop)
        return cache

    @reported
    def warm(self) -> None:
        reader = self.reader
        if reader is not None:
            LOOP.run(self._prewarm(reader))
        self._warm = True

    async def _prewarm(self, reader: AsyncTable) -> None:
        """Load the IVF index into LanceDB's index cache: a process otherwise loads it a
        partition at a time on the searches that first touch them (at 1M rows, 0.9 s of this
        took the first unfiltered searches' p50 from 35 to 21 ms, and a 1 % filter's p99 from
        448 to 63 ms; docs/benchmarks.md section 3). LanceDB skips what its cache holds (a
        second call took 4 ms at 1M), so calling it on every new version only loads what a
        write rebuilt."""
        try:
            for index in await reader.list_indices():
                if index.columns == ["embedding"]:
                    await reader.prewarm_index(index.name)
        except (OSError, RuntimeError) as exc:  # searches still work, and load it themselves
            log.warning("cannot load the vector index of %s ahead of searches: %s", self.name, exc)

    def _add_missing(self, table: lancedb.table.Table) -> None:
        """Tables written by an earlier version lack the columns of later fields (regions,
        custom tags): add them, empty (a document gets its regions when it is re-embedded, its
        tags when ``lookalike tags apply`` scores it)."""
        dim = table.schema.field("embedding").type.list_size
        names = set(table.schema.names)
        missing = [f for f in FIELDS if f.name not in names]
        if missing:
            added = ", ".join(f.name for f in missing)
            log.warning("adding the columns %s to the table %s", added, self.name)
            table.add_columns(list(arrow_schema(missing, dim)))

    def _add_source(self, table: lancedb.table.Table) -> None:
        """Tables written before documents were read from :data:`SOURCE` lack it: write it
        from the field columns, once, so the read path has one layout to read. Rows still
        without it (an upgrade that was interrupted) are written on the next open. Once none
        is left the column's metadata says so (:data:`SOURCE_COMPLETE`), and later opens skip
        the count of rows without it (0.7-1.1 s at 1M rows): every write of this version
        writes the column."""
        if SOURCE not in table.schema.names:
            table.add_columns([pa.field(SOURCE, pa.string())])
        if _source_complete(table):
            return
        missing = f"{SOURCE} IS NULL"
        if table.count_rows(missing):
            log.warning("writing the %s column of the table %s", SOURCE, self.name)
            columns = [f.name for f in FIELDS if f.name == "id" or f.name in SOURCE_FIELDS]
            query = table.search().where(missing).select(columns).limit(None)
            written: list[pa.Table] = []
            # Merged 100k rows at a time: a merge of 1M rows overflows LanceDB's 300 MB join
            # pool, and 100 merges of 10k rows took 647 s at 1M rows.
            for batch in query.to_batches(10_000):
                rows = batch.to_pylist()
                docs = (AssetDocument.model_validate(from_row(r, FIELDS)) for r in rows)
                sources = pa.array([source(d) for d in docs], pa.string())
                written.append(pa.table({"id": batch.column("id"), SOURCE: sources}))
                if sum(t.num_rows for t in written) >= 100_000:
                    _update(table, pa.concat_tables(written))
                    written = []
            if written:
                _update(table, pa.concat_tables(written))
        try:
            table.update_field_metadata({"path": SOURCE, "metadata": SOURCE_COMPLETE})
        except RuntimeError:
            # Lance refuses a metadata update that races another one ("incompatible
            # transaction"): fine if it was another process's open marking the same.
            table.checkout_latest()
            if not _source_complete(table):
                raise

    def _migrate(self, table: lancedb.table.Table) -> None:
        """Tables written by Lookalike 0.1 name two columns differently and have a full-text
        index without positions (phrases failed): rename, and drop the indexes (the caller builds
        them again once the columns added since are there)."""
        log.warning("upgrading the table %s to the current layout", self.name)
        for index in table.list_indices():
            table.drop_index(index.name)
        table.alter_columns(
            {"path": "vector", "rename": "embedding"},
            {"path": "metadata_json", "rename": "metadata"},
        )

    @reported
    def exists(self) -> bool:
        return self.table is not None

    @reported
    def ensure(self, dim: int) -> None:
        if self.table is None:
            schema = asset_schema(dim).with_metadata({"model_id": self.model_id})
            self._table = self.backend.db.create_table(self.name, schema=schema, exist_ok=True)
        existing = self._table.schema.field("embedding").type.list_size
        if existing != dim:
            raise ValueError(
                f"table {self.name!r} holds {existing}-d vectors, the model gives {dim}-d; "
                "use a new table (model version) instead of mixing them"
            )

    @reported
    def optimize(self) -> None:
        """Build whatever index is missing (the full-text index, scalar indexes for filters,
        IVF once the table is large), fold new rows into existing ones and compact. Cheap when
        all is built and nothing was written, so every run can call it: a run killed before
        this step is repaired by the next one."""
        table = self.table
        if table is None or table.count_rows() == 0:
            return
        listed = table.list_indices()
        indexed = {tuple(i.columns) for i in listed}
        missing: list[tuple[str, Any, str | None]] = []
        if ("text",) not in indexed:
            missing.append(("text", FTS(with_position=True), None))
        for spec in FIELDS:
            if spec.filterable and (spec.name,) not in indexed:
                kind = LabelList() if spec.kind == "keywords" else BTree()
                missing.append((spec.name, kind, None))
        rows = table.count_rows()
        ann = [i.name for i in listed if i.columns == ["embedding"]]
        wanted = f"embedding_ivf_{self.settings.ann_partition_rows}"
        if rows >= self.settings.ann_min_rows and wanted not in ann:
            size = self.settings.ann_partition_rows
            config = IvfSq(distance_type="cosine", target_partition_size=size)
            missing.append(("embedding", config, wanted))
        for column, config, name in missing:
            table.create_index(column, config=config, name=name)
        # The index of the wanted size replaces any other (LanceDB searches with the first it
        # lists), including one a run killed between the two steps left.
        if wanted in ann or any(name == wanted for _, _, name in missing):
            for name in ann:
                if name != wanted:
                    table.drop_index(name)
        # Fold new rows into the indexes and compact the files, but only when something was
        # written or built (LanceDB writes a new version even when there is nothing to do).
        # Compaction matters for search, not only for disk: an IVF search with a filter over
        # many small uncompacted fragments lost recall (0.57 instead of 1.0 at a 5 % filter in
        # benchmarks/store.py, 100k rows).
        if missing or any(
            table.index_stats(i.name).num_unindexed_rows for i in table.list_indices()
        ):
            table.optimize(cleanup_older_than=timedelta(hours=1))

    # -- writes --------------------------------------------------------------------------------

    @reported
    def upsert(self, docs: Sequence[AssetDocument]) -> int:
        if not docs:
            return 0
        if any(d.embedding is None for d in docs):
            raise ValueError("documents must carry their embedding to be indexed")
        if self.table is None:
            self.ensure(len(docs[0].embedding or ()))
        dim = self._table.schema.field("embedding").type.list_size
        good = [d for d in docs if len(d.embedding or ()) == dim]
        if good:
            rows = asset_rows(good)
            _merge(self._table, to_table(rows, self._table.schema))
        if len(good) < len(docs):  # refused per document, as a cluster's mapping does
            raise BulkWriteError(
                [
                    BulkFailure(
                        "index",
                        self.name,
                        d.id,
                        400,
                        f"vector of {len(d.embedding or ())} dimensions, the index holds {dim}",
                    )
                    for d in docs
                    if len(d.embedding or ()) != dim
                ],
                written=len(good),
            )
        return len(good)

    @reported
    def set_tags(self, docs: Sequence[AssetDocument]) -> int:
        if not docs or self.table is None:
            return 0
        # A merge of the id and tag columns only: LanceDB rewrites those columns of the matched
        # rows and leaves the vectors' files alone; unmatched ids insert nothing. The changed
        # rows are folded into the indexes at once: a merge against rows an earlier merge
        # changed costs more with each of them (128 documents took 0.04 s at the start of a
        # 5,000-document backfill, 1.2 s at its end; 0.12-0.14 s throughout when optimized,
        # docs/benchmarks.md section 7).
        schema = pa.schema([self._table.schema.field(f.name) for f in TAG_UPDATE])
        rows = pa.Table.from_pylist(to_rows(docs, TAG_UPDATE), schema=schema)
        _update(self._table, rows)
        self.optimize()
        return len(docs)

    @reported
    def delete(self, ids: Sequence[str]) -> int:
        if ids and self.table is not None:
            self.table.delete(_in_list("id", ids))
        return len(ids)

    # -- reads -------------------------------------------------------------------------------

    @reported
    def get(
        self, ids: Sequence[str], with_embedding: bool = False, with_regions: bool = False
    ) -> dict[str, AssetDocument]:
        reader = self.reader
        if not ids or reader is None:
            return {}
        return self._get(reader, self._current(reader), ids, with_embedding, with_regions)

    def _get(
        self,
        reader: AsyncTable,
        cache: ReadCache,
        ids: Sequence[str],
        with_embedding: bool = False,
        with_regions: bool = False,
        row_ids: dict[str, int] | None = None,
    ) -> dict[str, AssetDocument]:
        """The documents by id; ``row_ids`` (a ranking's, of the cache's version) lets them be
        taken by row id, without the id lookup (about 10 ms at 1M rows)."""
        # Region vectors are not cached: a read that wants them goes to the table.
        found = {} if with_regions else cache.lookup(ids)
        if missing := [i for i in dict.fromkeys(ids) if i not in found]:
            columns = [*READ_COLUMNS, "embedding", *(REGION_COLUMNS if with_regions else [])]
            read: dict[str, Cached] = {}
            if row_ids and all(i in row_ids for i in missing):
                taken = reader.take_row_ids([row_ids[i] for i in missing]).select(columns)
                read = _documents(LOOP.run(taken.to_arrow()))
                read = {i: read[i] for i in missing if i in read}  # a row id of another version
            if rest := [i for i in missing if i not in read]:
                query = reader.query().where(_in_list("id", rest)).select(columns)
                read |= _documents(LOOP.run(query.limit(len(rest)).to_arrow()))
            kept = {
                i: ({k: v for k, v in d.items() if k != "regions"}, e) for i, (d, e) in read.items()
            }
            cache.keep(kept)
            found |= read
        # Validated from the kept fields each time: a caller changing its document (a shallow
        # copy would share its labels) must not change the cache's.
        return {
            i: AssetDocument.model_validate(
                values | {"embedding": e.tolist() if with_embedding and e is not None else None}
            )
            for i, (values, e) in found.items()
        }

    @reported
    def states(self) -> dict[str, StoredState]:
        reader = self.reader
        if reader is None:
            return {}
        rows = LOOP.run(reader.query().select(STATE_FIELDS).to_list())
        return {row["id"]: StoredState(**row) for row in rows}

    @reported
    def count(self, where: filters.Filter | None = None) -> int:
        reader = self.reader
        if reader is None:
            return 0
        cache = self._current(reader)
        if memory := cache.memory:  # only if a search read it: a count alone needs no vectors
            return int(self._passing(reader, memory, where).sum())
        return LOOP.run(cache.count(reader, self.sql(where)))

    def _in_memory(self, reader: AsyncTable, cache: ReadCache) -> InMemory | None:
        """The table in memory, if it is small enough (``memory_search_max_rows``)."""
        if not cache.memory_read:
            LOOP.run(cache.read_memory(reader, self.settings.memory_search_max_rows))
        return cache.memory

    def _passing(
        self, reader: AsyncTable, memory: InMemory, where: filters.Filter | None
    ) -> np.ndarray:
        """The rows of the table in memory that pass the filter."""

        def read(sql: str) -> list[str]:
            found = LOOP.run(reader.query().where(sql).select(["id"]).to_arrow())
            return found.column("id").to_pylist()

        rest, excluded = _without_exclusions(where)
        return memory.rows(self.sql(rest), excluded, read)

    @reported
    def knn(
        self,
        vector: Sequence[float],
        where: filters.Filter | None,
        k: int,
        documents: bool = False,
        regions: bool = False,
    ) -> Ranking:
        reader = self.reader
        if reader is None:
            return Ranking([])
        cache = self._current(reader)
        query_vector = np.asarray(vector, dtype=np.float32)
        if not regions and (memory := self._in_memory(reader, cache)):
            mask = self._passing(reader, memory, where)
            return self._ranking(reader, cache, memory.rank(query_vector, mask, k), documents)
        sql = self.sql(where)
        # A multivector column ranks a row by its best vector (MaxSim of one query vector).
        column, query_vector = (
            ("regions", query_vector[None]) if regions else ("embedding", query_vector)
        )
        query = (
            reader.query()
            .nearest_to(query_vector)
            .column(column)
            .distance_type("cosine")
            .select(["id", "_distance"])
            .with_row_id()
            .limit(k)
        )
        if sql:
            query = query.where(sql)  # a prefilter: k hits that pass, not k hits filtered

        async def search() -> list[dict[str, Any]]:
            if cache.indexed is None:
                listed = await reader.list_indices()
                cache.indexed = any(i.columns == ["embedding"] for i in listed)
            if regions or not cache.indexed:
                return await query.to_list()
            rows = await cache.count(reader, None)
            passing = await cache.count(reader, sql) if sql else rows
            if passing <= self.settings.exact_search_max_rows:
                return await query.bypass_vector_index().to_list()
            # Enough partitions to hold about ``ann_candidates`` rows that pass, taking the
            # filter's share of a partition to be its share of the table (LanceDB keeps the
            # partitions at ``ann_partition_rows``): a selective filter probes more of them.
            passing_per_partition = max(1, passing) * self.settings.ann_partition_rows / rows
            probes = max(
                self.settings.nprobes,
                math.ceil(self.settings.ann_candidates / passing_per_partition),
            )
            found = await query.nprobes(probes).refine_factor(self.settings.refine_factor).to_list()
            if len(found) < min(k, passing):
                # The ANN index missed matches a selective filter let through: rank exactly.
                found = await query.bypass_vector_index().to_list()
            return found

        found = LOOP.run(search())
        scored = [(r["id"], 1.0 - float(r["_distance"])) for r in found]
        return self._ranking(reader, cache, scored, documents, _row_ids(found))

    @reported
    def bm25(
        self, text: str, where: filters.Filter | None, k: int, documents: bool = False
    ) -> Ranking:
        reader = self.reader
        query_text = lance_text(text)
        if reader is None or not query_text:
            return Ranking([])
        cache = self._current(reader)
        query = (
            reader.query()
            .nearest_to_text(query_text, columns="text")
            .select(["id", "_score"])
            .with_row_id()
            .limit(k)
        )
        if sql := self.sql(where):
            query = query.where(sql)  # a prefilter, as for knn
        found = LOOP.run(query.to_list())
        scored = [(r["id"], float(r["_score"])) for r in found]
        return self._ranking(reader, cache, scored, documents, _row_ids(found))

    def _ranking(
        self,
        reader: AsyncTable,
        cache: ReadCache,
        scored: list[tuple[str, float]],
        documents: bool,
        row_ids: dict[str, int] | None = None,
    ) -> Ranking:
        """Best first, ties by id (LanceDB orders ties arbitrarily); the documents, when asked
        for, from the read cache or one read of those missing from it."""
        scored.sort(key=lambda pair: (-pair[1], pair[0]))
        ids = [i for i, _ in scored]
        documents_ = self._get(reader, cache, ids, row_ids=row_ids) if documents else {}
        return Ranking(scored, documents_)

    @reported
    def scan(self, where: filters.Filter | None, offset: int, limit: int) -> list[str]:
        reader = self.reader
        if reader is None:
            return []
        query = reader.query().select(["id"]).offset(offset).limit(limit)
        if sql := self.sql(where):
            query = query.where(sql)
        return [row["id"] for row in LOOP.run(query.to_list())]

    @reported
    def label_counts(self, min_confidence: float, limit: int) -> dict[str, int]:
        reader = self.reader
        if reader is None:
            return {}
        labels = LOOP.run(reader.query().select(["labels"]).to_arrow())["labels"]
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

    # -- filters ---------------------------------------------------------------------------------

    @reported
    def sql(self, node: filters.Filter | None) -> str | None:
        """The filter tree as a LanceDB SQL predicate (``None``: no filter)."""
        match node:
            case None:
                return None
            case filters.Term(name, values) if name.startswith(filters.METADATA_PREFIX):
                key = name.removeprefix(filters.METADATA_PREFIX)
                return _has_any("metadata_kv", [f"{key}={v}" for v in values])
            case filters.Term(name, values):
                spec = _filterable(name)
                if spec.kind == "keywords":
                    return _has_any(name, values)
                return _in_list(name, values)
            case filters.Range(name, gte, gt, lte, lt):
                spec = _filterable(name)
                bounds = [(">=", gte), (">", gt), ("<=", lte), ("<", lt)]
                parts = [_bound(spec, name, op, v) for op, v in bounds if v is not None]
                return "(" + " AND ".join(parts or ["true"]) + ")"
            case filters.HasLabel():
                return self._label_sql(node)
            case filters.And(items):
                return "(" + " AND ".join(self.sql(i) or "true" for i in items) + ")"
            case filters.Or(items):
                return "(" + " OR ".join(self.sql(i) or "true" for i in items) + ")"
            case filters.Not(item):
                # SQL's NOT of a null (a column added after the row was written) is null, which
                # drops the row; the filter's meaning (``filters.matches``) keeps it.
                return f"NOT coalesce({self.sql(item) or 'true'}, false)"
        raise TypeError(f"not a filter node: {node!r}")

    def _label_sql(self, node: filters.HasLabel) -> str:
        """Exact: the whole-percent buckets above the threshold, and the documents of the
        threshold's own bucket whose confidence passes (looked up when it has decimals)."""
        threshold = node.min_confidence
        first = math.ceil(threshold)
        above = [label_key(node.name, b) for b in range(first, 101)]
        clause = _has_any("label_keys", above) if above else "false"
        reader = self.reader
        if threshold == first or reader is None:
            return clause
        boundary = _has_any("label_keys", [label_key(node.name, math.floor(threshold))])
        rows = LOOP.run(reader.query().where(boundary).select(["id", "labels"]).to_list())
        passing = [r["id"] for r in rows if node.matches([Label(**lab) for lab in r["labels"]])]
        return f"({clause} OR {_in_list('id', passing)})" if passing else clause


# -- the logs ----------------------------------------------------------------------------------


class EmbeddedQuarantine(QuarantineLog):
    @reported
    def __init__(self, backend: EmbeddedBackend) -> None:
        self.settings = backend.settings
        name = f"{backend.settings.table}__quarantine"
        self.table = backend.open_or_create(name, arrow_schema(QUARANTINE_FIELDS))

    @reported
    def add(self, records: Sequence[QuarantineRecord]) -> None:
        if records:
            rows = to_rows(records, QUARANTINE_FIELDS)
            _merge(self.table, pa.Table.from_pylist(rows, schema=self.table.schema))

    @reported
    def remove(self, ids: Sequence[str]) -> None:
        if ids:
            self.table.delete(_in_list("id", ids))

    @reported
    def records(self) -> list[QuarantineRecord]:
        rows = self.table.search().limit(None).to_arrow().to_pylist()
        records = [QuarantineRecord(**from_row(r, QUARANTINE_FIELDS)) for r in rows]
        return sorted(records, key=lambda r: r.uri)


class EmbeddedRunLog(RunLog):
    @reported
    def __init__(self, backend: EmbeddedBackend) -> None:
        self.settings = backend.settings
        name = f"{backend.settings.table}__runs"
        legacy: list[IngestSummary | AliasSwitch] = []
        old = backend.open_table(name)
        if old is not None and "summary_json" in old.schema.names:  # Lookalike 0.1's layout
            rows = old.to_arrow().to_pylist()
            legacy = [_upgrade_run(json.loads(row["summary_json"])) for row in rows]
            backend.db.drop_table(name)
        self.table = backend.open_or_create(name, arrow_schema(RUN_FIELDS))
        if legacy:
            rows = to_rows(legacy, RUN_FIELDS)
            _merge(self.table, pa.Table.from_pylist(rows, schema=self.table.schema), "run_id")

    @reported
    def record(self, entry: IngestSummary | AliasSwitch) -> None:
        rows = to_rows([entry], RUN_FIELDS)
        _merge(self.table, pa.Table.from_pylist(rows, schema=self.table.schema), key="run_id")

    def _recent(self, kind: str, limit: int) -> list[dict[str, Any]]:
        rows = self.table.search().where(f"kind = '{kind}'").limit(None).to_arrow().to_pylist()
        rows.sort(key=lambda r: r["started_at"], reverse=True)
        return [from_row(r, RUN_FIELDS) for r in rows[:limit]]

    @reported
    def runs(self, limit: int = 20) -> list[IngestSummary]:
        return [_model(IngestSummary, values) for values in self._recent("ingest", limit)]

    @reported
    def switches(self, limit: int = 20) -> list[AliasSwitch]:
        return [_model(AliasSwitch, values) for values in self._recent("switch", limit)]


class EmbeddedJudgements(JudgementLog):
    @reported
    def __init__(self, backend: EmbeddedBackend) -> None:
        name = f"{backend.settings.table}__judgements"
        self.table = backend.open_or_create(name, arrow_schema(JUDGEMENT_FIELDS))

    @reported
    def add(self, judgements: Sequence[Judgement]) -> None:
        if judgements:
            latest = {j.id: j for j in judgements}  # one row per key in a merge
            rows = to_rows(list(latest.values()), JUDGEMENT_FIELDS)
            _merge(self.table, pa.Table.from_pylist(rows, schema=self.table.schema))

    @reported
    def judgements(self, tag: str | None = None) -> list[Judgement]:
        query = self.table.search()
        if tag is not None:
            query = query.where(_in_list("tag", [tag]))
        rows = query.limit(None).to_arrow().to_pylist()
        found = [Judgement(**from_row(r, JUDGEMENT_FIELDS)) for r in rows]
        return sorted(found, key=lambda j: (j.tag, j.asset_id))

    @reported
    def remove(self, tag: str) -> int:
        where = _in_list("tag", [tag])
        count = self.table.count_rows(where)
        if count:
            self.table.delete(where)
        return count


def _upgrade_run(summary: dict[str, Any]) -> IngestSummary | AliasSwitch:
    """A run recorded by Lookalike 0.1, which kept alias switches as runs whose source was
    ``index:<previous model>``."""
    source = summary.get("source", "")
    if not source.startswith("index:"):
        return IngestSummary.model_validate(summary)
    return AliasSwitch(
        run_id=summary["run_id"],
        started_at=summary["started_at"],
        model=summary["model"],
        previous=source.removeprefix("index:") or None,
        trigger="rollout" if summary.get("new") else "rollback",
        embedded=summary.get("new", 0),
        resumed=summary.get("unchanged", 0),
        duration_s=summary.get("duration_s", 0.0),
    )


def _model(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """A run-log row as its record type (the columns of the other kind are left out)."""
    return cls.model_validate(
        {k: v for k, v in values.items() if k in cls.model_fields and v is not None}
    )


# -- SQL helpers -------------------------------------------------------------------------------


def _filterable(name: str) -> FieldSpec:
    spec = field(FIELDS, name)
    if not spec.filterable:
        raise ValueError(f"field {name!r} cannot be filtered on")
    return spec


def _source_complete(table: lancedb.table.Table) -> bool:
    """Whether :data:`SOURCE`'s metadata marks it written for every row."""
    metadata = table.schema.field(SOURCE).metadata or {}
    return {k.decode(): v.decode() for k, v in metadata.items()}.items() >= SOURCE_COMPLETE.items()


def _merge(table: Any, rows: pa.Table, key: str = "id") -> None:
    table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(rows)


def _update(table: Any, rows: pa.Table) -> None:
    """Write these columns of the rows with these ids; ids not in the table insert nothing."""
    table.merge_insert("id").when_matched_update_all().execute(rows)


def _documents(table: pa.Table) -> dict[str, Cached]:
    """The documents' fields by id, each without its embedding and with it as float32 beside
    it (views of the column's one buffer, no Python floats)."""
    vectors, missing = _vectors(table.column("embedding"))
    return {
        row["id"]: (
            json.loads(row.pop(SOURCE)) | from_row(row, FIELDS),
            None if missing[n] else vectors[n],
        )
        for n, row in enumerate(from_table(table.drop_columns(["embedding"])))
    }


def _row_ids(found: list[dict[str, Any]]) -> dict[str, int]:
    """A ranking's row ids by document id."""
    return {r["id"]: r["_rowid"] for r in found}


def _vectors(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size list column as one float32 matrix (a view of its buffer) and which rows
    are null (their rows in the matrix are meaningless)."""
    array = column.combine_chunks()
    vectors = array.values.to_numpy().reshape(len(array), array.type.list_size)
    return vectors, array.is_null().to_numpy(zero_copy_only=False)


def _without_exclusions(node: filters.Filter | None) -> tuple[filters.Filter | None, set[str]]:
    """The filter less its top-level "not these ids" parts, and those ids."""
    match node:
        case filters.Not(filters.Term("id", values)):
            return None, set(values)
        case filters.And(items):
            parts = [_without_exclusions(i) for i in items]
            rest = [part for part, _ in parts if part is not None]
            return filters.all_of(rest), set().union(*(ids for _, ids in parts))
    return node, set()


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _bound(spec: FieldSpec, column: str, op: str, value: float | datetime) -> str:
    """``column op value`` with the literal typed as the column is (LanceDB does not compare
    an integer column with a fractional literal: the bound is rounded the way that keeps the
    same integers in)."""
    if isinstance(value, datetime):
        stamp = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"{column} {op} timestamp '{stamp}'"
    if spec.kind in ("integer", "long"):
        if value != int(value):
            op, value = {">=": (">=", math.ceil(value)), ">": (">=", math.ceil(value))}.get(
                op, ("<=", math.floor(value))
            )
        return f"{column} {op} {int(value)}"
    return f"{column} {op} {float(value)!r}"


def _in_list(column: str, values: Sequence[str]) -> str:
    if not values:
        return "false"
    return f"{column} IN ({', '.join(_quote(v) for v in values)})"


def _has_any(column: str, values: Sequence[str]) -> str:
    if not values:
        return "false"
    return f"array_has_any({column}, [{', '.join(_quote(v) for v in values)}])"


def lance_text(text: str) -> str:
    """A full-text query LanceDB reads as words and "phrases", whatever the user typed: the
    query parser's operators (``AND``, ``+``, ``:`` ...) are taken as plain words."""
    words, phrases = filters.text_terms(text)
    return " ".join([*words, *(f'"{p}"' for p in phrases)])
