"""What is the embedded LanceDB store's alone, on synthetic vectors (no model needed): exact
label thresholds through the bucket keys, the ANN index and the exact fallback under selective
filters, the search structures ``optimize`` builds (and rebuilds after an interrupted run),
writes that change nothing leaving the table version alone, and the upgrade of tables written
by Lookalike 0.1. What every store must do is in test_store_contract.py."""

from __future__ import annotations

import gc
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.index import IvfSq

from pipeline.document import AssetDocument, Label
from pipeline.library import Library
from pipeline.search import LabelFilter, Searcher, SearchRequest
from pipeline.settings import Settings
from pipeline.store.embedded import LOOP, SOURCE, SOURCE_COMPLETE, _collector_paused

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_doc(i: int, vector: np.ndarray, labels: list[Label] | None = None, **kw) -> AssetDocument:
    return AssetDocument(
        id=f"id{i:05d}",
        uri=f"file:///lib/{i}.jpg",
        sha256=f"sha{i}",
        fingerprint=f"fp{i}",
        size_bytes=i,
        mtime_ns=i,
        width=10,
        height=10,
        format="JPEG",
        labels=labels or [],
        embedding=vector.tolist(),
        model="test",
        model_version="1",
        **kw,
    )


@pytest.fixture
def library(tmp_path: Path):
    with Library.open(Settings(home=tmp_path)) as library:
        yield library


def test_label_thresholds_with_decimals_are_exact_in_counts_too(library: Library) -> None:
    index = library.index("test@1")
    vecs = unit(np.random.default_rng(3).random((6, DIM)))
    confs = [79.9, 80.0, 80.4, 80.6, 95.0, 10.0]
    index.upsert(
        [
            make_doc(i, v, [Label(name="Cat", confidence=c)])
            for i, (v, c) in enumerate(zip(vecs, confs, strict=True))
        ]
    )
    searcher = Searcher(index)
    q = vecs[0].tolist()

    def ids(**filters) -> set[int]:
        response = searcher.search(SearchRequest(vector=q, k=10, **filters))
        assert response.total_candidates == len(response.hits), "counted exactly"
        return {int(h.id[2:]) for h in response.hits}

    assert ids(labels_all=[LabelFilter(name="cat", min_confidence=80)]) == {1, 2, 3, 4}
    assert ids(labels_all=[LabelFilter(name="Cat", min_confidence=80.5)]) == {3, 4}
    assert ids(labels_none=[LabelFilter(name="Cat", min_confidence=80.5)]) == {0, 1, 2, 5}
    assert ids(labels_all=[LabelFilter(name="Cat", min_confidence=80.45)]) == {3, 4}
    assert ids(
        labels_any=[LabelFilter(name="Dog"), LabelFilter(name="Cat", min_confidence=95)]
    ) == {4}
    assert index.label_counts(min_confidence=80, limit=10) == {"Cat": 4}


def test_selective_filter_returns_k_hits_with_ann_index(tmp_path: Path) -> None:
    """3,000 rows with an IVF index; a filter passing 1 % must still return k exact hits,
    both via the exact path and when forced through the ANN index with one partition probed
    (which holds about one passing row: the "fewer than k" fallback ranks them exactly)."""
    rng = np.random.default_rng(5)
    centres = unit(rng.normal(size=(8, DIM)))
    vecs = unit(centres[rng.integers(0, 8, 3000)] + 0.3 * rng.normal(size=(3000, DIM)))
    docs = [
        make_doc(i, v, [Label(name="Rare" if i % 100 == 0 else "Common", confidence=90)])
        for i, v in enumerate(vecs)
    ]
    for exact_max in (50_000, 0):
        settings = Settings(
            home=tmp_path,
            ann_min_rows=1000,
            ann_partition_rows=100,
            exact_search_max_rows=exact_max,
            nprobes=1,  # of 30 partitions
            ann_candidates=1,  # probes no more for the filter's sake
            memory_search_max_rows=0,  # LanceDB's own search, not the in-memory one
        )
        with Library.open(settings) as library:
            index = library.index("t@1")
            for start in range(0, 3000, 1000):
                index.upsert(docs[start : start + 1000])
            index.optimize()
            assert any(i.columns == ["embedding"] for i in index.table.list_indices())
            q = unit(rng.normal(size=DIM))
            response = Searcher(index, settings).search(
                SearchRequest(vector=q.tolist(), k=10, labels_all=[LabelFilter(name="Rare")])
            )
            assert response.total_candidates == 30
            assert len(response.hits) == 10
            rare = np.arange(0, 3000, 100)
            expected = rare[np.argsort(-(vecs[rare] @ q))[:10]]
            got = [int(h.id[2:]) for h in response.hits]
            if exact_max:
                assert got == expected.tolist()
            else:
                assert len(set(got) & set(expected.tolist())) >= 8


def test_a_filtered_ann_search_probes_enough_partitions_to_keep_its_recall(
    tmp_path: Path,
) -> None:
    """An IVF search with a filter only ranks the passing rows of the partitions it probes.
    A filter passing 20 % of 3,000 rows returns k hits from one partition of 100 rows (so no
    fallback), but the wrong ones; probing enough partitions to hold ``ann_candidates``
    passing rows finds the true top 10."""
    vecs = unit(np.random.default_rng(8).normal(size=(3000, DIM)))
    docs = [
        make_doc(i, v, [Label(name="Some" if i % 5 == 0 else "Other", confidence=90)])
        for i, v in enumerate(vecs)
    ]
    some = np.arange(0, 3000, 5)
    queries = unit(np.random.default_rng(9).normal(size=(10, DIM)))
    recalls = {}
    for candidates in (1, 2_000):
        settings = Settings(
            home=tmp_path / str(candidates),
            ann_min_rows=1000,
            ann_partition_rows=100,
            exact_search_max_rows=0,  # always the ANN index
            nprobes=1,
            ann_candidates=candidates,
            memory_search_max_rows=0,
        )
        with Library.open(settings) as library:
            index = library.index("t@1")
            index.upsert(docs)
            index.optimize()
            assert any(i.columns == ["embedding"] for i in index.table.list_indices())
            found = []
            for q in queries:
                response = Searcher(index, settings).search(
                    SearchRequest(vector=q.tolist(), k=10, labels_all=[LabelFilter(name="Some")])
                )
                assert len(response.hits) == 10
                expected = some[np.argsort(-(vecs[some] @ q))[:10]]
                got = {int(h.id[2:]) for h in response.hits}
                found.append(len(got & set(expected.tolist())) / 10)
            recalls[candidates] = float(np.mean(found))
    assert recalls[1] < 0.5, recalls
    assert recalls[2_000] >= 0.95, recalls


def test_the_ann_index_keeps_its_partition_size_as_the_table_grows(tmp_path: Path) -> None:
    """LanceDB's ``optimize`` joined the partitions of an index built with a number of them
    to about 30,000 rows each (seen at 100k and 1M rows, not at this size), and each search
    then probed every row: the index is built with a partition size, which that maintenance
    keeps as rows are added (it splits a partition at about three times the size). An index
    of another size (or from before) is built again, and replaces the old one."""
    settings = Settings(
        home=tmp_path, ann_min_rows=500, ann_partition_rows=50, memory_search_max_rows=0
    )
    vecs = unit(np.random.default_rng(11).normal(size=(6000, DIM)))
    docs = [make_doc(i, v) for i, v in enumerate(vecs)]
    with Library.open(settings) as library:
        index = library.index("t@1")

        def ann() -> list[str]:
            return [i.name for i in index.table.list_indices() if i.columns == ["embedding"]]

        def rows_probed() -> int:
            plan = index.table.search(vecs[0], vector_column_name="embedding").nprobes(1)
            found = re.search(r"ANNSubIndex.*?index_comparisons=(\d+)\b", plan.analyze_plan())
            return int(found[1])

        index.upsert(docs[:1000])
        index.table.create_index(
            "embedding", config=IvfSq(distance_type="cosine", num_partitions=20)
        )
        assert ann() == ["embedding_idx"]
        index.optimize()
        assert ann() == ["embedding_ivf_50"]
        assert rows_probed() <= 150, "one partition of about 50 rows"
        index.upsert(docs[1000:])
        index.optimize()
        assert ann() == ["embedding_ivf_50"]
        assert index.table.index_stats("embedding_ivf_50").num_unindexed_rows == 0
        assert rows_probed() <= 150, "partitions split as they grow: at 6x the rows, not 300"
        found = Searcher(index, settings).search(SearchRequest(vector=vecs[4000].tolist(), k=3))
        assert found.hits[0].id == "id04000"
        version = index.table.version
        index.optimize()
        assert index.table.version == version, "nothing to build, nothing written"


def test_optimize_builds_every_index_once_and_repairs_an_interrupted_run(
    library: Library,
) -> None:
    index = library.index("test@1")
    vecs = unit(np.random.default_rng(7).random((20, DIM)))
    index.upsert([make_doc(i, v, title=f"photo {i}") for i, v in enumerate(vecs)])
    assert index.table.list_indices() == [], "a run killed before optimize() builds nothing"
    index.optimize()
    built = {tuple(i.columns) for i in index.table.list_indices()}
    assert {("text",), ("label_keys",), ("metadata_kv",), ("id",)} <= built
    version = index.table.version
    index.optimize()
    assert index.table.version == version, "nothing to build, nothing written"
    index.upsert([make_doc(20, vecs[0], title="photo new")])
    index.optimize()
    assert all(
        index.table.index_stats(i.name).num_unindexed_rows == 0 for i in index.table.list_indices()
    ), "new rows are folded into the indexes"
    assert [h.id for h in Searcher(index).search(SearchRequest(text="new")).hits] == ["id00020"]


def test_tables_of_lookalike_0_1_are_upgraded(tmp_path: Path) -> None:
    """0.1 named the vector ``vector`` and the metadata ``metadata_json``, built the full-text
    index without positions (phrase queries failed) and kept alias switches as runs whose
    source was ``index:<previous>``: all of it upgrades in place on first use."""
    store = tmp_path / "store"
    db = lancedb.connect(store)
    schema = pa.schema(
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
            (
                "labels",
                pa.list_(
                    pa.struct(
                        [
                            ("name", pa.string()),
                            ("confidence", pa.float32()),
                            ("parents", pa.list_(pa.string())),
                        ]
                    )
                ),
            ),
            ("label_keys", pa.list_(pa.string())),
            ("text", pa.string()),
            ("vector", pa.list_(pa.float32(), DIM)),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("ingested_at", pa.timestamp("us", tz="UTC")),
        ]
    ).with_metadata({"model_id": "old@1"})
    vector = unit(np.random.default_rng(8).random(DIM))
    row = {
        **make_doc(0, vector, title="An espresso cup").model_dump(exclude={"labels", "metadata"}),
        "metadata_json": json.dumps({"k": "v"}),
        "metadata_kv": ["k=v"],
        "labels": [{"name": "Cup", "confidence": 80.0, "parents": []}],
        "label_keys": ["cup:80"],
        "text": "An espresso cup",
        "vector": vector.tolist(),
    }
    del row["embedding"]
    table = db.create_table("assets__old_1", data=pa.Table.from_pylist([row], schema=schema))
    table.create_index("text", config=lancedb.index.FTS())  # 0.1: no positions
    runs = db.create_table(
        "assets__runs",
        schema=pa.schema(
            [
                ("run_id", pa.string()),
                ("started_at", pa.timestamp("us", tz="UTC")),
                ("summary_json", pa.string()),
            ]
        ),
    )
    started = datetime(2026, 1, 1, tzinfo=UTC)
    summaries = [
        {"run_id": run, "source": source, "new": 1, "model": "old@1", "started_at": f"{started}"}
        for run, source in (("r1", "file:///lib"), ("s1", "index:older@1"))
    ]
    runs.add(
        [
            {"run_id": s["run_id"], "started_at": started, "summary_json": json.dumps(s)}
            for s in summaries
        ]
    )
    with Library.open(Settings(home=tmp_path)) as library:
        index = library.index("old@1")
        doc = index.get(["id00000"], with_embedding=True)["id00000"]
        assert doc.metadata == {"k": "v"} and np.allclose(doc.embedding, vector, atol=1e-6)
        phrase = Searcher(index).search(SearchRequest(text='"espresso cup"')).hits
        assert [h.id for h in phrase] == ["id00000"]
        assert [r.run_id for r in library.runs.runs()] == ["r1"]
        [switch] = library.runs.switches()
        assert (switch.model, switch.previous, switch.trigger) == ("old@1", "older@1", "rollout")


class CountingReader:
    """The index's real async table, counting the queries it is asked to build and the checks
    for a newer version."""

    def __init__(self, table) -> None:
        self.table = table
        self.queries = 0
        self.versions = 0

    def query(self):
        self.queries += 1
        return self.table.query()

    def version(self):
        self.versions += 1
        return self.table.version()

    def __getattr__(self, name: str):
        return getattr(self.table, name)


@pytest.mark.parametrize("in_memory", [5_000, 0])
def test_repeated_reads_come_from_the_cache_until_another_process_writes(
    tmp_path: Path, in_memory: int
) -> None:
    """An API process keeps what its reads found for the table's current version, and a write
    made through another connection (the CLI, Airflow) is seen by its very next read. A small
    table is ranked in memory, so a repeated asset query asks LanceDB nothing at all."""
    settings = Settings(home=tmp_path, memory_search_max_rows=in_memory)
    vecs = unit(np.random.default_rng(5).random((4, DIM)))
    with Library.open(settings) as api, Library.open(settings) as writer:
        writer.index("test@1").upsert([make_doc(i, v) for i, v in enumerate(vecs)])
        index = api.index("test@1")
        reader = index._reader = CountingReader(index.reader)
        searcher = Searcher(index)
        first = searcher.similar("id00000", SearchRequest(k=3))
        queries, versions = reader.queries, reader.versions
        again = searcher.similar("id00000", SearchRequest(k=3))
        assert again.hits == first.hits
        assert reader.versions == versions + 1, "one search, one version check"
        ranking = 0 if in_memory else 1
        assert reader.queries == queries + ranking, "only the ranking itself ran again, if that"
        assert index.get(["id00001"], with_embedding=True)["id00001"].embedding == pytest.approx(
            vecs[1].tolist()
        )

        # A returned document is the caller's own copy.
        index.get(["id00002"])["id00002"].labels.append(Label(name="Mine", confidence=1.0))
        assert index.get(["id00002"])["id00002"].labels == []

        changed = make_doc(2, vecs[2], [Label(name="Cat", confidence=90.0)])
        writer.index("test@1").upsert([changed])
        writer.index("test@1").delete(["id00003"])
        assert index.get(["id00002"])["id00002"].labels == changed.labels
        assert "id00003" not in index.get(["id00003"])
        assert index.count() == 3
        hits = searcher.similar("id00000", SearchRequest(k=3)).hits
        assert [h.id for h in hits if h.document.labels] == ["id00002"]
        assert "id00003" not in {h.id for h in hits}


def test_reads_with_the_cache_off_or_with_region_vectors_read_the_table(tmp_path: Path) -> None:
    from pipeline.document import Region

    vecs = unit(np.random.default_rng(6).random((3, DIM)))
    regions = [Region(box=(0, 0, 0.5, 0.5), embedding=v) for v in vecs[::-1]]
    docs = [make_doc(i, v, regions=regions[:i]) for i, v in enumerate(vecs)]
    for size in (0, 5_000):
        with Library.open(Settings(home=tmp_path / str(size), read_cache_documents=size)) as lib:
            index = lib.index("test@1")
            index.upsert(docs)
            reader = index._reader = CountingReader(index.reader)
            for _ in range(2):
                plain = index.get(["id00002"])["id00002"]
                assert plain.regions == [] and plain.embedding is None
                full = index.get(["id00002"], with_embedding=True, with_regions=True)["id00002"]
                assert full.regions == regions[:2]
                assert full.embedding == pytest.approx(vecs[2].tolist())
            # Region reads always go to the table; plain ones only while nothing is cached.
            assert reader.queries == (4 if size == 0 else 3)


def test_a_small_table_ranked_in_memory_answers_as_lancedb_does(tmp_path: Path) -> None:
    """The same requests on the same table, ranked in memory and by LanceDB's exact search:
    the same hits, order (ties by id), scores, totals and pages, under label, tag, metadata and
    id filters, hybrid text included; and a table above the limit is not read into memory."""
    rng = np.random.default_rng(11)
    vecs = unit(rng.normal(size=(300, DIM)))
    vecs[7] = vecs[3]  # a tie
    docs = [
        make_doc(
            i,
            v,
            [Label(name="Cat" if i % 3 else "Dog", confidence=float(50 + i % 50))],
            title=f"photo {i} {'red' if i % 4 == 0 else 'blue'}",
            metadata={"camera": "a" if i % 5 else "b"},
        )
        for i, v in enumerate(vecs)
    ]
    requests = [
        SearchRequest(k=10),
        SearchRequest(k=10, offset=7, exclude_ids=["id00003", "id00010", "id00012"]),
        SearchRequest(k=20, labels_all=[LabelFilter(name="Cat", min_confidence=80.5)]),
        SearchRequest(k=5, labels_any=[LabelFilter(name="Dog")], metadata={"camera": ["b"]}),
        SearchRequest(k=10, text="red", labels_all=[LabelFilter(name="Cat")]),
        SearchRequest(k=10, labels_all=[LabelFilter(name="Nobody")]),
    ]
    answers = []
    for rows in (5_000, 0, 299):
        settings = Settings(home=tmp_path / str(rows), memory_search_max_rows=rows)
        with Library.open(settings) as library:
            index = library.index("test@1")
            index.upsert(docs)
            searcher = Searcher(index, settings)
            answers.append(
                [
                    searcher.similar(f"id{q:05d}", request).model_dump()
                    for q in (3, 42, 299)
                    for request in requests
                ]
            )
            assert (index._cache.memory is not None) == (rows == 5_000)
    for memory, lance, over in zip(*answers, strict=True):
        for got in (memory, over):
            assert [h["id"] for h in got["hits"]] == [h["id"] for h in lance["hits"]]
            assert [h["score"] for h in got["hits"]] == pytest.approx(
                [h["score"] for h in lance["hits"]], abs=1e-6
            )
            assert (got["total_candidates"], got["more"]) == (
                lance["total_candidates"],
                lance["more"],
            )
    twin = answers[0][0]["hits"][0]  # id00003's twin, the asset itself left out
    assert twin["id"] == "id00007" and twin["score"] == pytest.approx(1.0, abs=1e-6)


def test_a_rankings_documents_are_taken_by_row_id_and_a_stale_row_id_reads_by_id(
    tmp_path: Path,
) -> None:
    """LanceDB's own ranking returns row ids, and the page's documents are taken by them (one
    JSON column, no id lookup). A row id of an older version (the row was rewritten since)
    takes nothing, so that document is read by its id: never a stale or a wrong document."""
    settings = Settings(home=tmp_path, memory_search_max_rows=0, read_cache_documents=0)
    vecs = unit(np.random.default_rng(8).random((6, DIM)))
    labels = [Label(name="Cat", confidence=91.5, parents=["Animal"])]
    docs = [make_doc(i, v, labels, title=f"photo {i}") for i, v in enumerate(vecs)]
    with Library.open(settings) as library:
        index = library.index("test@1")
        index.upsert(docs)
        ranking = index.knn(vecs[0].tolist(), None, 3, documents=True)
        assert ranking.documents == index.get([i for i, _ in ranking.scored])
        assert ranking.documents["id00000"] == docs[0].model_copy(update={"embedding": None})
        reader = index.reader
        old_rows = {
            r["id"]: r["_rowid"]
            for r in LOOP.run(reader.query().select(["id"]).with_row_id().to_list())
        }
        index.upsert([docs[1].model_copy(update={"title": "changed"})])
        got = index._get(reader, index._current(reader), ["id00001", "id00002"], row_ids=old_rows)
        assert got["id00001"].title == "changed"
        assert got["id00002"] == docs[2].model_copy(update={"embedding": None})


def test_two_opens_racing_to_mark_the_document_column_complete_both_succeed(
    tmp_path: Path,
) -> None:
    """Two processes opening a table whose document column is not yet marked complete both
    write the mark; Lance refuses the second metadata update as incompatible with the first,
    and that open must go on (the mark it wanted is there)."""
    settings = Settings(home=tmp_path)
    vecs = unit(np.random.default_rng(4).random((2, DIM)))
    with Library.open(settings) as library:
        index = library.index("test@1")
        index.upsert([make_doc(i, v) for i, v in enumerate(vecs)])
        unmarked = dict.fromkeys(SOURCE_COMPLETE)
        index.table.update_field_metadata({"path": SOURCE, "metadata": unmarked})
        uri = index.backend.db.uri  # one connection each, as two processes have
        first, second = (lancedb.connect(uri).open_table(index.name) for _ in range(2))
        index._add_source(first)
        assert first.schema.field(SOURCE).metadata
        index._add_source(second)  # its handle still sees the unmarked version
        assert second.schema.field(SOURCE).metadata


def test_an_interrupted_upgrade_writes_the_rest_of_the_document_column_on_the_next_open(
    tmp_path: Path,
) -> None:
    """Rows left without their ``document_json`` (an upgrade killed half-way: some rows
    without it, and the column not yet marked complete) get it from their field columns when
    the table is next opened, and read back whole. Then the column is marked complete, and
    later opens neither count nor write anything."""
    settings = Settings(home=tmp_path, read_cache_documents=0)
    vecs = unit(np.random.default_rng(9).random((3, DIM)))
    docs = [
        make_doc(i, v, [Label(name="Dog", confidence=80.0)], title=f"d {i}")
        for i, v in enumerate(vecs)
    ]
    with Library.open(settings) as library:
        created = library.index("test@1")
        created.upsert(docs)
        table = created.table
        assert table.schema.field(SOURCE).metadata, "a new table's column is complete"
        table.update(where="id = 'id00001'", values_sql={SOURCE: "NULL"})
        unmarked = dict.fromkeys(SOURCE_COMPLETE)  # None deletes a key
        table.update_field_metadata({"path": SOURCE, "metadata": unmarked})
        assert not table.schema.field(SOURCE).metadata
    with Library.open(settings) as library:
        index = library.index("test@1")
        assert index.table.count_rows(f"{SOURCE} IS NULL") == 0
        got = index.get([d.id for d in docs])
        assert got == {d.id: d.model_copy(update={"embedding": None}) for d in docs}
        metadata = index.table.schema.field(SOURCE).metadata
        assert {k.decode(): v.decode() for k, v in metadata.items()} == SOURCE_COMPLETE
        version = index.table.version
    with Library.open(settings) as library:
        assert library.index("test@1").table.version == version


def test_building_rows_pauses_the_cycle_collector_and_leaves_it_as_it_was() -> None:
    """Rows are built with the collector off (it was half their cost), and it is back on after,
    an error included; a caller that had turned it off finds it still off."""
    assert gc.isenabled()
    with pytest.raises(KeyError), _collector_paused():
        assert not gc.isenabled()
        raise KeyError("a failed conversion")
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_warm_loads_the_vector_index_and_loads_it_again_after_a_write_rebuilt_it(
    tmp_path: Path,
) -> None:
    """What the search API calls once it opened an index: the IVF index is in LanceDB's cache
    before any search, searches answer as without it, and once warmed the index reloads
    (in the background) what a later write and optimize rebuilt, on the first read that sees
    the new version."""
    rng = np.random.default_rng(11)
    vecs = unit(rng.normal(size=(3000, 256)))  # an index that outweighs the file metadata
    docs = [make_doc(i, v, [Label(name="Common", confidence=90)]) for i, v in enumerate(vecs)]
    settings = Settings(
        home=tmp_path,
        ann_min_rows=1000,
        ann_partition_rows=100,
        exact_search_max_rows=0,
        memory_search_max_rows=0,
        read_cache_documents=0,
    )
    request = SearchRequest(vector=vecs[7].tolist(), k=5)
    with Library.open(settings) as library:
        index = library.index("t@1")
        index.warm()  # nothing written yet: nothing to load, and no error
        index.upsert(docs[:2000])
        index.optimize()
        cold = Searcher(index, settings).search(request)
    with Library.open(settings) as library:
        index = library.index("t@1")
        session = library.backend.session
        before = session.size_bytes
        index.warm()
        loaded = session.size_bytes
        assert loaded - before >= 2000 * 256  # the index's codes: a byte a dimension a row
        warm = Searcher(index, settings).search(request)
        assert [h.id for h in warm.hits] == [h.id for h in cold.hits]
        with Library.open(settings) as writer:  # another process's ingest
            writer.index("t@1").upsert(docs[2000:])
            writer.index("t@1").optimize()
        assert index.count() == 3000  # a read that sees the new version, and no search
        # The rows the write added are a new part of the index (a quarter of its size or more;
        # reading the new version's file metadata adds a tenth).
        wanted = loaded + (loaded - before) / 4
        deadline = time.monotonic() + 30
        while session.size_bytes < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.size_bytes >= wanted
