"""The store contract: the same behavioural tests on the embedded store and on real OpenSearch
and Elasticsearch nodes (tests/nodes.py; never a stand-in).

Each store gets the real sample library through the real pipeline (model included). The truth
every store is held to is computed here from the documents themselves: brute-force cosine
ranking over the stored embeddings, filters evaluated in Python, and the embedded store's
answers for the same requests.

Tolerances, stated once: vector search is exact at this size (below every exact-search
threshold), so top ids must be equal and cosine scores agree to 1e-4 (float32 and the
clusters' score transforms). BM25 differs between engines (Lucene on the clusters, LanceDB's
tantivy-style index, different analyzers), so text scores are never compared across stores,
only the ids of unambiguous text queries, and hybrid queries are chosen so that fusion does
not depend on the BM25 values (one text match: its min-max and best-score normalised text
score is 1 on every engine).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.document import AssetDocument, IngestSummary, Label
from pipeline.settings import Settings
from pipeline.store import open_store
from pipeline.store.base import LabelFilter, SearchRequest, Store
from pipeline.store.cluster import (
    index_body_from_template,
    plain_body,
    runs_index,
    runs_template,
)
from pipeline.store.embedded import EmbeddedStore, asset_schema

REPO = Path(__file__).resolve().parents[1]
KINDS = ["embedded", "opensearch", "elasticsearch"]
TABLE = "contract"
TOL = 1e-4

pytestmark = pytest.mark.slow


def store_settings(kind: str, home: Path, request: pytest.FixtureRequest, **kw: Any) -> Settings:
    if kind == "embedded":
        return Settings(home=home, table=TABLE, **kw)
    return request.getfixturevalue(f"{kind}_node").settings(home, table=TABLE, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_manifest: Path, embedder) -> Iterator[EmbeddedStore]:
    """The sample library in an embedded store of its own: the answers to compare with."""
    from pipeline.ingest import ingest

    store = EmbeddedStore(Settings(home=tmp_path_factory.mktemp("reference")), embedder.model_id)
    ingest(sample_manifest.parent, sample_manifest, store=store, embedder=embedder)
    yield store
    store.close()


@pytest.fixture(scope="module")
def documents(reference: EmbeddedStore) -> dict[str, AssetDocument]:
    """Every indexed document with its embedding, by id."""
    ids = [i for i, state in reference.states().items() if not state.quarantined]
    return {i: reference.get(i, with_embedding=True) for i in ids}


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def library(
    kind: str, request, tmp_path_factory, sample_manifest: Path, embedder
) -> Iterator[tuple[Store, Any]]:
    """The store under test, filled with the sample library by ``ingest``; and the summary."""
    from pipeline.ingest import ingest

    settings = store_settings(kind, tmp_path_factory.mktemp(f"contract-{kind}"), request)
    with open_store(embedder.model_id, settings) as store:
        _drop_cluster_indices(store)
        summary = ingest(sample_manifest.parent, sample_manifest, store=store, embedder=embedder)
        yield store, summary
        _drop_cluster_indices(store)


def _drop_cluster_indices(store: Store) -> None:
    """A shared node may hold this module's indices from an earlier session: start clean."""
    client = getattr(store, "client", None)
    if client is not None:
        names = sorted(plain_body(client.indices.get(index=f"{TABLE}*")))
        if names:  # Elasticsearch refuses wildcard deletes (action.destructive_requires_name)
            client.indices.delete(index=",".join(names))
        client.indices.delete_index_template(name=f"{TABLE}-*", ignore=[404])


def brute_force(
    docs: dict[str, AssetDocument], vector: list[float], keep=lambda d: True
) -> list[tuple[str, float]]:
    """Exact cosine ranking over the stored embeddings, ties by id."""
    ids = sorted(i for i, d in docs.items() if keep(d))
    matrix = np.asarray([docs[i].embedding for i in ids])
    query = np.asarray(vector) / np.linalg.norm(vector)
    scores = matrix @ query
    order = sorted(range(len(ids)), key=lambda j: (-scores[j], ids[j]))
    return [(ids[j], float(scores[j])) for j in order]


def hits(store: Store, **request: Any) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in store.search(SearchRequest(**request)).hits]


def by_title(docs: dict[str, AssetDocument], title: str) -> AssetDocument:
    return next(d for d in docs.values() if d.title == title)


def assert_same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    """The same ranking up to ties: the same scores rank by rank, and every hit scores what it
    should. Identical images (the 16-bit copy of a photo) tie, and float32 versus float64
    arithmetic may order a tie either way."""
    truth = dict(expected)
    assert len(got) == len(expected) and len({i for i, _ in got}) == len(got)
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=TOL)
    for asset_id, score in got:
        assert asset_id in truth or score == pytest.approx(expected[-1][1], abs=TOL), asset_id
        assert truth.get(asset_id, score) == pytest.approx(score, abs=TOL), asset_id


# -- index, writes, reads ---------------------------------------------------------------------


def test_the_index_is_created_from_the_mappings_folder(library, kind: str, embedder) -> None:
    store, _ = library
    if kind == "embedded":
        assert store.table.schema.remove_metadata() == asset_schema(embedder.spec.dim)
        return
    template = json.loads((REPO / "mappings" / f"{kind}-template-assets.json").read_text())
    expected = template["template"]["mappings"]
    mapping = store._mapping(store.index)
    assert mapping["dynamic"] == expected["dynamic"] == "strict"
    analyzer = store.settings.text_analyzer
    for name, field in expected["properties"].items():
        got = mapping["properties"][name]
        if name == "embedding":
            assert {k: got[k] for k in field if k != "method"} == {
                k: v for k, v in field.items() if k != "method"
            }
            continue
        field = json.loads(json.dumps(field).replace('"cjk"', json.dumps(analyzer)))
        assert _subset(field, got), f"{name}: {got} does not hold {field}"


def _subset(expected: Any, got: Any) -> bool:
    """``expected`` is contained in ``got`` (servers add defaults to returned mappings)."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(_subset(v, got.get(k)) for k, v in expected.items())
    return expected == got


def test_ingest_indexes_every_image_once_and_quarantines_the_broken(
    library, documents, reference: EmbeddedStore
) -> None:
    store, summary = library
    assert summary.new == len(documents) == store.count() > 30
    assert {r.uri.rsplit("/", 1)[-1] for r in store.quarantined()} == {
        "empty.jpg",
        "not_an_image.png",
        "truncated.jpg",
    }
    assert all(r.reason for r in store.quarantined())
    assert {i for i, s in store.states().items() if not s.quarantined} == set(documents)
    assert store.active_model() == store.model_id, "the first index becomes the active one"


def test_a_second_ingest_writes_nothing(library, sample_manifest: Path, embedder) -> None:
    from pipeline.ingest import ingest

    store, _ = library
    again = ingest(sample_manifest.parent, sample_manifest, store=store, embedder=embedder)
    assert (again.new, again.updated, again.deleted, again.quarantined) == (0, 0, 0, [])
    assert again.unchanged == store.count() + len(store.quarantined())


def test_get_returns_the_whole_document(library, documents) -> None:
    store, _ = library
    for doc_id, expected in list(documents.items())[:5]:
        got = store.get(doc_id, with_embedding=True)
        assert got is not None and got.embedding is not None
        assert np.allclose(got.embedding, expected.embedding, atol=1e-6)
        fields = {"embedding", "ingested_at"}
        assert got.model_dump(exclude=fields) == expected.model_dump(exclude=fields)
        assert store.get(doc_id, with_embedding=False).embedding is None
    assert store.get("no-such-id") is None


def test_delete_then_ingest_restores(library, documents, sample_manifest: Path, embedder) -> None:
    from pipeline.ingest import ingest

    store, _ = library
    doomed = by_title(documents, "Clock")
    assert store.delete([doomed.id]) == 1
    assert store.get(doomed.id) is None and store.count() == len(documents) - 1
    vector = by_title(documents, "Coins").embedding
    assert doomed.id not in [i for i, _ in hits(store, vector=vector, k=len(documents))]
    repaired = ingest(sample_manifest.parent, sample_manifest, store=store, embedder=embedder)
    assert repaired.new == 1 and store.get(doomed.id) is not None


# -- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("title", ["Chelsea the cat", "Cup of coffee", "Hubble deep field"])
def test_vector_search_equals_brute_force(library, documents, title: str) -> None:
    store, _ = library
    vector = by_title(documents, title).embedding
    expected = brute_force(documents, vector)[:10]
    assert_same_ranking(hits(store, vector=vector, k=10), expected)
    assert expected[0][1] == pytest.approx(1.0, abs=TOL)


def test_paging_splits_one_ranking(library, documents) -> None:
    store, _ = library
    vector = by_title(documents, "Chelsea the cat").embedding
    whole = hits(store, vector=vector, k=12)
    pages = [hits(store, vector=vector, k=4, offset=o) for o in (0, 4, 8)]
    assert [i for page in pages for i, _ in page] == [i for i, _ in whole]
    listing = [h.id for h in store.search(SearchRequest(k=40)).hits]
    paged = [h.id for o in range(0, 40, 8) for h in store.search(SearchRequest(k=8, offset=o)).hits]
    assert paged == listing and len(set(listing)) == len(documents)


def test_min_score_cuts_the_ranking(library, documents) -> None:
    store, _ = library
    vector = by_title(documents, "Cup of coffee").embedding
    expected = [(i, s) for i, s in brute_force(documents, vector) if s >= 0.6][:20]
    got = hits(store, vector=vector, k=20, min_score=0.6)
    assert_same_ranking(got, expected)
    assert 1 < len(got) < 20


FILTERS: list[dict[str, Any]] = [
    {"labels_all": [LabelFilter(name="cat", min_confidence=60)]},
    {"labels_all": [LabelFilter(name="Animal", min_confidence=50.5)]},
    {"labels_any": [LabelFilter(name="Cup"), LabelFilter(name="Espresso", min_confidence=50)]},
    {"labels_none": [LabelFilter(name="Animal", min_confidence=10)]},
    {"metadata": {"source": ["scikit-learn"]}},
    {"metadata": {"variant": ["flip", "crop"], "source": ["scikit-image"]}},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: json.dumps(f, default=str)[:60])
def test_filters_match_the_documents(library, documents, filters: dict[str, Any]) -> None:
    store, _ = library
    request = SearchRequest(**filters)

    def keep(doc: AssetDocument) -> bool:
        return request.label_filters_match(doc.labels) and all(
            doc.metadata.get(key) in values for key, values in request.metadata.items()
        )

    vector = by_title(documents, "Chelsea the cat").embedding
    expected = brute_force(documents, vector, keep)
    got = store.search(SearchRequest(vector=vector, k=50, **filters))
    assert_same_ranking([(h.id, h.score) for h in got.hits], expected)
    assert got.total_candidates == len(expected)
    wanted = {f.name.casefold() for f in [*request.labels_all, *request.labels_any]}
    for hit in got.hits:
        assert {lab.name.casefold() for lab in hit.matched_labels} <= wanted


def test_excluded_ids_never_come_back(library, documents) -> None:
    store, _ = library
    cat = by_title(documents, "Chelsea the cat")
    got = hits(store, vector=cat.embedding, k=5, exclude_ids=[cat.id])
    others = [pair for pair in brute_force(documents, cat.embedding) if pair[0] != cat.id]
    assert_same_ranking(got, others[:5])


def test_text_search_finds_the_described_photo(library, documents) -> None:
    store, _ = library
    for text, title in (("galaxies", "Hubble deep field"), ("espresso", "Cup of coffee")):
        response = store.search(SearchRequest(text=text, k=3))
        top = response.hits[0]
        assert top.id == by_title(documents, title).id, text
        assert top.text_score and top.text_score > 0 and top.vector_score is None
    assert store.search(SearchRequest(text="zebra", k=3)).hits == []


def test_hybrid_fusion_equals_the_embedded_store(library, documents, reference) -> None:
    """Vector: the cat; text: "galaxies", which only the Hubble photo's description holds."""
    store, _ = library
    vector = by_title(documents, "Chelsea the cat").embedding
    hubble = by_title(documents, "Hubble deep field").id
    for fusion, rrf_k in (("rrf", 60), ("rrf", 10), ("linear", 60)):
        request = SearchRequest(vector=vector, text="galaxies", hybrid=fusion, rrf_k=rrf_k, k=10)
        got, expected = store.search(request).hits, reference.search(request).hits
        assert_same_ranking([(h.id, h.score) for h in got], [(h.id, h.score) for h in expected])
        assert hubble in [h.id for h in got[:2]], fusion
        assert next(h for h in got if h.id == hubble).text_score > 0


def test_hybrid_without_the_plugin_is_fused_by_lookalike(opensearch_node, tmp_path: Path) -> None:
    """The node from Maven Central has no neural-search plugin: the store must notice (from
    ``_cat/plugins``) and fuse on the client (the fusion test above checks the results), never
    send a ``hybrid`` query that the node cannot run."""
    settings = opensearch_node.settings(tmp_path, table=f"{TABLE}-plugins")
    with open_store("synthetic@1", settings) as store:
        plugins = {p["component"] for p in store.client.cat.plugins(format="json")}
        assert "opensearch-knn" in plugins
        assert store.has_hybrid_query() is ("opensearch-neural-search" in plugins)
        applied = store.apply(16)
        if not store.has_hybrid_query():
            assert any("no search pipelines" in line for line in applied)
            assert not any(line.startswith("search pipeline") for line in applied)
        _drop_cluster_indices(store)


def test_label_counts_match(library, reference) -> None:
    store, _ = library
    assert store.label_counts(min_confidence=50) == reference.label_counts(min_confidence=50)


def test_the_run_log_keeps_every_run(library) -> None:
    store, summary = library
    runs = store.runs()
    first = next(r for r in runs if r.run_id == summary.run_id)
    assert first.new == summary.new and len(first.quarantined) == 3
    assert runs == sorted(runs, key=lambda r: r.started_at, reverse=True)


@pytest.mark.parametrize("cluster", ["opensearch", "elasticsearch"])
def test_a_run_log_made_by_an_earlier_version_takes_the_new_fields(
    cluster: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Run summaries gained ``outcome`` and ``quarantined_earlier``: a strict runs index made
    before them must take them, not reject every run recorded from now on."""
    settings = request.getfixturevalue(f"{cluster}_node").settings(tmp_path, table="upgrade")
    with open_store("t@1", settings) as store:
        index = runs_index(settings.table)
        store.client.indices.delete(index=index, ignore_unavailable=True)
        old = runs_template(settings.table)
        for field in ("outcome", "quarantined_earlier"):
            del old["template"]["mappings"]["properties"][field]
        store.client.indices.create(index=index, body=index_body_from_template(old))
        try:
            store.record_run(
                IngestSummary(run_id="r1", outcome="quarantined", quarantined_earlier=2)
            )
            runs = store.runs()
        finally:
            store.client.indices.delete(index=index)
    assert [(r.run_id, r.outcome, r.quarantined_earlier) for r in runs] == [
        ("r1", "quarantined", 2)
    ]


# -- selective filters and the alias ------------------------------------------------------------


def synthetic(n: int, dim: int, seed: int = 5) -> tuple[np.ndarray, list[AssetDocument]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    vectors = centres[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [
        AssetDocument(
            id=f"s{i:05d}",
            uri=f"file:///synthetic/{i}.jpg",
            sha256="0" * 64,
            fingerprint=f"{i}",
            width=1,
            height=1,
            format="PNG",
            labels=[Label(name="Rare" if i % 100 == 0 else "Common", confidence=90)],
            embedding=v.tolist(),
            model="synthetic",
            model_version="1",
        )
        for i, v in enumerate(vectors)
    ]
    return vectors, docs


def test_one_percent_filter_returns_k_exact_hits_then_the_alias_moves_and_back(library) -> None:
    store, _ = library
    n, dim = 3000, 16
    vectors, docs = synthetic(n, dim)
    with open_store("synthetic@1", store.settings) as other:
        for start in range(0, n, 500):
            assert other.upsert(docs[start : start + 500]) == 500
        query = np.random.default_rng(9).normal(size=dim)
        response = other.search(
            SearchRequest(vector=query.tolist(), k=10, labels_all=[LabelFilter(name="Rare")])
        )
        rare = np.arange(0, n, 100)
        ranked = rare[np.argsort(-(vectors[rare] @ (query / np.linalg.norm(query))))]
        assert response.total_candidates == 30 and len(response.hits) == 10
        assert [h.id for h in response.hits] == [f"s{i:05d}" for i in ranked[:10]]
        infos = {i.model_id: i for i in other.indexes()}
        assert infos["synthetic@1"].count == n and not infos["synthetic@1"].active
        assert infos[store.model_id].active
        # The switch: one atomic move, then the rollback, another.
        assert other.activate() == store.model_id
        assert store.active_model() == "synthetic@1"
        with open_store(None, store.settings) as follower:
            assert follower.model_id == "synthetic@1", "open_store follows the alias"
        assert store.activate() == "synthetic@1"
        assert other.active_model() == store.model_id
