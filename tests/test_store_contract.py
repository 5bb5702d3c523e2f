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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import filters, tags
from pipeline.document import AliasSwitch, AssetDocument, IngestSummary, Judgement, Label, TagScore
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.search import LabelFilter, Searcher, SearchRequest, similarity
from pipeline.settings import Settings
from pipeline.store.base import BulkWriteError, DocumentIndex
from pipeline.store.cluster import FIELDS as CLUSTER_FIELDS
from pipeline.store.cluster import create_body, log_templates, plain_body, runs_index, to_source
from pipeline.store.embedded import FIELDS, arrow_schema, asset_schema, to_rows

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
def reference(tmp_path_factory, sample_manifest: Path, embedder) -> Iterator[Library]:
    """The sample library in an embedded store of its own: the answers to compare with."""
    with Library.open(Settings(home=tmp_path_factory.mktemp("reference"))) as library:
        ingest(sample_manifest.parent, sample_manifest, library=library, embedder=embedder)
        yield library


@pytest.fixture(scope="module")
def documents(reference: Library) -> dict[str, AssetDocument]:
    """Every indexed document with its embedding and regions, by id."""
    index = reference.index()
    return index.get(list(index.states()), with_embedding=True, with_regions=True)


@pytest.fixture(scope="module", params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@dataclass
class Store:
    """The store under test: its library, the index of the sample library, a searcher."""

    library: Library
    index: DocumentIndex
    summary: Any

    def search(self, request: SearchRequest) -> Any:
        return Searcher(self.index, self.library.settings).search(request)


@pytest.fixture(scope="module")
def library(
    kind: str, request, tmp_path_factory, sample_manifest: Path, embedder
) -> Iterator[Store]:
    """The store under test, filled with the sample library by ``ingest``."""
    settings = store_settings(kind, tmp_path_factory.mktemp(f"contract-{kind}"), request)
    with Library.open(settings) as lib:
        _drop_cluster_indices(lib)
        summary = ingest(sample_manifest.parent, sample_manifest, library=lib, embedder=embedder)
        yield Store(lib, lib.index(embedder.model_id), summary)
        _drop_cluster_indices(lib)


def _drop_cluster_indices(library: Library) -> None:
    """A shared node may hold this module's indices from an earlier session: start clean."""
    client = getattr(library.backend, "client", None)
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


def test_the_index_is_created_from_the_mappings_folder(library: Store, kind: str, embedder) -> None:
    """The files in mappings/ are what the stores create (generated from the field table)."""
    if kind == "embedded":
        schema = library.index.table.schema.remove_metadata()
        assert schema == asset_schema(embedder.spec.dim)
        return
    template = json.loads((REPO / "mappings" / f"{kind}-template-assets.json").read_text())
    expected = template["template"]["mappings"]
    client = library.library.backend.client
    found = plain_body(client.indices.get_mapping(index=library.index.name))
    mapping = next(iter(found.values()))["mappings"]
    assert mapping["dynamic"] == expected["dynamic"] == "strict"
    analyzer = library.library.settings.text_analyzer

    def without_method(vector: dict[str, Any]) -> dict[str, Any]:
        """The engine is a setting (lucene on these nodes, faiss in mappings/)."""
        return {k: v for k, v in vector.items() if k != "method"}

    for name, spec in expected["properties"].items():
        got = mapping["properties"][name]
        if name == "embedding":
            assert {k: got[k] for k in spec if k != "method"} == without_method(spec)
            continue
        if name == "regions":
            vectors = got["properties"]["embedding"]
            assert got["type"] == "nested" and got["properties"]["box"] == {
                "type": "float",
                "index": False,
            }
            assert without_method(vectors) == without_method(spec["properties"]["embedding"])
            continue
        spec = json.loads(json.dumps(spec).replace('"cjk"', json.dumps(analyzer)))
        assert _subset(spec, got), f"{name}: {got} does not hold {spec}"


def _subset(expected: Any, got: Any) -> bool:
    """``expected`` is contained in ``got`` (servers add defaults to returned mappings)."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(_subset(v, got.get(k)) for k, v in expected.items())
    return expected == got


def test_ingest_indexes_every_image_once_and_quarantines_the_broken(
    library: Store, documents
) -> None:
    summary, index, lib = library.summary, library.index, library.library
    assert summary.new == len(documents) == index.count() > 30
    records = lib.quarantine.records()
    assert {r.uri.rsplit("/", 1)[-1] for r in records} == {
        "empty.jpg",
        "not_an_image.png",
        "truncated.jpg",
    }
    assert all(r.reason for r in records)
    assert set(index.states()) == set(documents)
    assert lib.catalogue.active() == index.model_id, "the first index becomes the active one"
    [first] = lib.runs.switches()
    assert (first.model, first.previous, first.trigger) == (index.model_id, None, "first ingest")


def test_a_second_ingest_writes_nothing(library: Store, sample_manifest: Path, embedder) -> None:
    lib = library.library
    again = ingest(sample_manifest.parent, sample_manifest, library=lib, embedder=embedder)
    assert (again.new, again.updated, again.deleted, again.quarantined) == (0, 0, 0, [])
    assert again.unchanged == library.index.count() + len(lib.quarantine.records())


def test_get_returns_the_whole_document(library: Store, documents) -> None:
    some = list(documents)[:5]
    found = library.index.get([*some, "no-such-id"], with_embedding=True, with_regions=True)
    assert set(found) == set(some)
    for doc_id in some:
        got, expected = found[doc_id], documents[doc_id]
        assert got.embedding is not None
        assert np.allclose(got.embedding, expected.embedding, atol=1e-6)
        fields = {"embedding", "regions", "ingested_at"}
        assert got.model_dump(exclude=fields) == expected.model_dump(exclude=fields)
        assert len(got.regions) == len(expected.regions) == 29, "the R-MAC grid, 3 levels"
        for mine, theirs in zip(got.regions, expected.regions, strict=True):
            assert np.allclose(mine.box, theirs.box, atol=1e-6)
            assert np.allclose(mine.embedding, theirs.embedding, atol=1e-6)
    plain = library.index.get(some).values()
    assert all(d.embedding is None and d.regions == [] for d in plain), "vectors only when asked"
    embedding = library.index.get(some, with_embedding=True).values()
    assert all(d.embedding is not None and d.regions == [] for d in embedding)
    regions = library.index.get(some, with_regions=True).values()
    assert all(d.embedding is None and len(d.regions) == 29 for d in regions)


def test_delete_then_ingest_restores(
    library: Store, documents, sample_manifest: Path, embedder
) -> None:
    index = library.index
    doomed = by_title(documents, "Clock")
    assert index.delete([doomed.id, "no-such-id"]) == 2
    assert index.get([doomed.id]) == {} and index.count() == len(documents) - 1
    vector = by_title(documents, "Coins").embedding
    assert doomed.id not in [i for i, _ in hits(library, vector=vector, k=len(documents))]
    repaired = ingest(
        sample_manifest.parent, sample_manifest, library=library.library, embedder=embedder
    )
    assert repaired.new == 1 and doomed.id in index.get([doomed.id])


# -- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("title", ["Chelsea the cat", "Cup of coffee", "Hubble deep field"])
def test_vector_search_equals_brute_force(library, documents, title: str) -> None:
    store = library
    vector = by_title(documents, title).embedding
    expected = brute_force(documents, vector)[:10]
    assert_same_ranking(hits(store, vector=vector, k=10), expected)
    assert expected[0][1] == pytest.approx(1.0, abs=TOL)


def best_region_force(
    docs: dict[str, AssetDocument], vector: list[float], keep=lambda d: True
) -> list[tuple[str, float]]:
    """Exact ranking of the documents by their best region's cosine, ties by id."""
    query = np.asarray(vector) / np.linalg.norm(vector)
    best = {
        i: float(np.max(np.asarray([r.embedding for r in d.regions]) @ query))
        for i, d in docs.items()
        if keep(d) and d.regions
    }
    return sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))


def test_region_search_ranks_documents_by_their_best_region(library, documents) -> None:
    """The store's multi-vector primitive (LanceDB's multivector column, the clusters' nested
    kNN) against the best region of every document, with and without a filter."""
    vector = by_title(documents, "Chelsea the cat").embedding
    got = library.index.knn(vector, None, 10, regions=True).scored
    assert_same_ranking(got, best_region_force(documents, vector)[:10])
    animal = filters.HasLabel("Animal", 50)
    got = library.index.knn(vector, animal, 10, regions=True).scored
    keep = lambda d: animal.matches(d.labels)  # noqa: E731
    assert_same_ranking(got, best_region_force(documents, vector, keep)[:10])


@pytest.mark.parametrize("mode", ["library", "query", "both"])
def test_region_modes_rank_by_the_best_leg_and_name_the_region(
    library, documents, mode: str
) -> None:
    """Every hit scores the best of its whole-image and region similarities (computed here from
    the documents), pages split that one ranking, and the region named is the one that scored."""
    cat = by_title(documents, "Chelsea the cat")
    request = SearchRequest(
        vector=cat.embedding,
        regions=mode,
        query_regions=[{"box": r.box, "vector": r.embedding} for r in cat.regions],
        k=12,
    )
    truth = {i: similarity(request, d) for i, d in documents.items()}
    expected = sorted(((i, s) for i, (s, _) in truth.items()), key=lambda p: (-p[1], p[0]))
    got = library.search(request).hits
    assert_same_ranking([(h.id, h.score) for h in got], expected[:12])
    pages = [
        library.search(request.model_copy(update={"k": 4, "offset": o})).hits for o in (0, 4, 8)
    ]
    assert [h.id for page in pages for h in page] == [h.id for h in got]
    sides = set()
    for hit in got:
        region = truth[hit.id][1]
        assert (hit.region is None) == (region is None), hit.id
        if region is not None:
            assert hit.region.side == region.side and np.allclose(hit.region.box, region.box)
            sides.add(region.side)
    assert sides, "some hit is found by a region"
    assert sides <= {"library", "query"} and (mode == "both" or sides == {mode})


@pytest.mark.parametrize("mode", ["library", "both"])
def test_text_and_filter_searches_ignore_the_region_mode(library, documents, mode: str) -> None:
    """Without a query vector there is nothing to rank by region: the same hits as with
    regions off, and no region on any of them."""
    for request in (
        {"labels_all": [LabelFilter(name="Cat")], "k": 5},
        {"text": "galaxies", "k": 5},
    ):
        off = library.search(SearchRequest(**request)).hits
        got = library.search(SearchRequest(regions=mode, **request)).hits
        assert [h.id for h in got] == [h.id for h in off] and off
        assert all(h.region is None for h in got)


def test_paging_splits_one_ranking(library, documents) -> None:
    store = library
    vector = by_title(documents, "Chelsea the cat").embedding
    whole = hits(store, vector=vector, k=12)
    pages = [hits(store, vector=vector, k=4, offset=o) for o in (0, 4, 8)]
    assert [i for page in pages for i, _ in page] == [i for i, _ in whole]
    listing = [h.id for h in store.search(SearchRequest(k=40)).hits]
    paged = [h.id for o in range(0, 40, 8) for h in store.search(SearchRequest(k=8, offset=o)).hits]
    assert paged == listing and len(set(listing)) == len(documents)


def test_min_score_cuts_the_ranking(library, documents) -> None:
    store = library
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
    store = library
    request = SearchRequest(**filters)

    def has(doc: AssetDocument, f: LabelFilter) -> bool:
        name = f.name.casefold()
        return any(
            lab.name.casefold() == name and lab.confidence >= f.min_confidence for lab in doc.labels
        )

    def keep(doc: AssetDocument) -> bool:
        return (
            all(has(doc, f) for f in request.labels_all)
            and (not request.labels_any or any(has(doc, f) for f in request.labels_any))
            and not any(has(doc, f) for f in request.labels_none)
            and all(doc.metadata.get(key) in values for key, values in request.metadata.items())
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
    store = library
    cat = by_title(documents, "Chelsea the cat")
    got = hits(store, vector=cat.embedding, k=5, exclude_ids=[cat.id])
    others = [pair for pair in brute_force(documents, cat.embedding) if pair[0] != cat.id]
    assert_same_ranking(got, others[:5])


def test_text_search_finds_the_described_photo(library, documents) -> None:
    store = library
    for text, title in (("galaxies", "Hubble deep field"), ("espresso", "Cup of coffee")):
        response = store.search(SearchRequest(text=text, k=3))
        top = response.hits[0]
        assert top.id == by_title(documents, title).id, text
        assert top.text_score and top.text_score > 0 and top.vector_score is None
    assert store.search(SearchRequest(text="zebra", k=3)).hits == []


def test_hybrid_fusion_equals_the_embedded_store(library, documents, reference: Library) -> None:
    """Vector: the cat; text: "galaxies", which only the Hubble photo's description holds."""
    store = library
    vector = by_title(documents, "Chelsea the cat").embedding
    hubble = by_title(documents, "Hubble deep field").id
    for fusion, rrf_k in (("rrf", 60), ("rrf", 10), ("linear", 60)):
        request = SearchRequest(vector=vector, text="galaxies", hybrid=fusion, rrf_k=rrf_k, k=10)
        got = store.search(request).hits
        expected = reference.searcher().search(request).hits
        assert_same_ranking([(h.id, h.score) for h in got], [(h.id, h.score) for h in expected])
        assert hubble in [h.id for h in got[:2]], fusion
        assert next(h for h in got if h.id == hubble).text_score > 0


def test_hybrid_pages_are_one_list_and_linear_scores_follow_the_formula(
    library: Store, documents
) -> None:
    """Fusion over the same candidates whatever the page: the top at k=1 is the top of k=20,
    pages of 5 are that list cut in four; every fused hit has its cosine."""
    vector = by_title(documents, "Astronaut portrait").embedding
    for fusion in ("rrf", "linear"):
        request = {"vector": vector, "text": "space", "hybrid": fusion, "vector_weight": 0.4}
        whole = library.search(SearchRequest(**request, k=20)).hits
        assert [h.id for h in library.search(SearchRequest(**request, k=1)).hits] == [whole[0].id]
        pages = [
            library.search(SearchRequest(**request, k=5, offset=o)).hits for o in range(0, 20, 5)
        ]
        assert [h.id for page in pages for h in page] == [h.id for h in whole], fusion
        assert all(h.vector_score is not None for h in whole)
    best = library.search(SearchRequest(text="space", k=1)).hits[0].text_score
    for hit in whole:  # the last request: linear, weight 0.4
        expected = 0.4 * hit.vector_score + 0.6 * (hit.text_score or 0.0) / best
        assert hit.score == pytest.approx(expected, abs=1e-9)


def test_phrases_and_any_text(library: Store, documents) -> None:
    coffee = by_title(documents, "Cup of coffee").id
    assert [h.id for h in library.search(SearchRequest(text='"espresso"', k=3)).hits] == [coffee]
    rocket = by_title(documents, "Rocket launch pad").id
    found = library.search(SearchRequest(text='"a rocket standing"', k=3)).hits
    assert [h.id for h in found] == [rocket]
    assert library.search(SearchRequest(text='"standing rocket"', k=3)).hits == []
    for text in ('"espresso', "cup AND coffee", "(", "*", "NOT", "+-:~^", "col:val"):
        library.search(SearchRequest(text=text, k=3))  # never a syntax error


def test_range_filters(library: Store, documents) -> None:
    wide = filters.Range("width", gte=500)
    expected = {i for i, d in documents.items() if d.width >= 500}
    assert 0 < len(expected) < len(documents)
    assert library.index.count(wide) == len(expected)
    assert set(library.index.scan(wide, 0, 100)) == expected
    narrow = filters.And((wide, filters.Range("height", lt=400)))
    expected = {i for i, d in documents.items() if d.width >= 500 and d.height < 400}
    assert set(library.index.scan(narrow, 0, 100)) == expected


def test_a_document_the_index_refuses_is_reported_per_item(library: Store, tmp_path) -> None:
    """A wrong vector dimension: the index refuses that document, writes the others, and
    says which one and why."""
    _, docs = synthetic(4, 16, seed=3)
    wrong = synthetic(1, 15, seed=4)[1][0].model_copy(update={"id": "wrong"})
    index = library.library.index("refusal@1")
    index.ensure(16)
    with pytest.raises(BulkWriteError) as caught:
        index.upsert([*docs[:2], wrong, *docs[2:]])
    assert caught.value.written == 4 and not caught.value.transient
    assert set(caught.value.rejected) == {"wrong"}
    assert index.count() == 4 and index.get(["wrong"]) == {}


def test_label_counts_match(library: Store, reference: Library) -> None:
    expected = reference.index().label_counts(min_confidence=50, limit=100)
    assert library.index.label_counts(min_confidence=50, limit=100) == expected


def test_the_run_log_keeps_every_run(library: Store) -> None:
    summary = library.summary
    runs = library.library.runs.runs()
    first = next(r for r in runs if r.run_id == summary.run_id)
    assert first.new == summary.new and len(first.quarantined) == 3
    assert runs == sorted(runs, key=lambda r: r.started_at, reverse=True)


def test_judgements_are_kept_one_per_asset_and_tag_and_removed(library: Store) -> None:
    log = library.library.judgements
    ids = sorted(library.index.states())[:3]
    log.add([Judgement(tag="room", asset_id=i, uri=f"file:///{i}", judge=1) for i in ids])
    log.add([Judgement(tag="room", asset_id=ids[0], uri="file:///again", judge=0, source="api")])
    log.add([Judgement(tag="plant", asset_id=ids[1], uri="file:///p", judge=1)])
    try:
        room = log.judgements("room")
        assert [(j.asset_id, j.judge) for j in room] == [(ids[0], 0), (ids[1], 1), (ids[2], 1)]
        assert room[0].source == "api" and room[0].uri == "file:///again", "the latest wins"
        assert [j.tag for j in log.judgements()] == ["plant", "room", "room", "room"]
        assert log.remove("room") == 3 and log.judgements("room") == []
        assert [j.tag for j in log.judgements()] == ["plant"]
    finally:
        log.remove("room")
        log.remove("plant")


def test_a_tag_learned_from_judgements_filters_like_a_label(
    library: Store, documents: dict[str, AssetDocument], tmp_path: Path
) -> None:
    """Trained from the store's own documents (read with their vectors), applied by reading
    them and writing their tags, filtered by the store: the same verdicts as scoring the reference
    documents in Python, and the documents otherwise unchanged."""
    settings = library.library.settings.model_copy(update={"home": tmp_path})
    judged = [
        Judgement(tag="kitty", asset_id=i, uri=d.uri, judge=int("chelsea" in d.uri))
        for i, d in sorted(documents.items())
    ]
    trained = tags.train("kitty", judged, library.index, settings)
    shared = Library(library.library.backend, settings)
    before = library.index.get(list(documents), with_embedding=True, with_regions=True)
    try:
        assert tags.apply(shared).scored == len(documents)
        expected = (
            trained.weights.score(list(documents.values()), "both") >= trained.classifier.threshold
        )
        passing = {i for i, ok in zip(documents, expected, strict=True) if ok}
        assert passing == {j.asset_id for j in judged if j.judge}
        where = filters.Term("tag_names", ("kitty",))
        assert set(library.index.scan(where, 0, 100)) == passing
        assert library.index.count(filters.Not(where)) == len(documents) - len(passing)
        got = library.search(SearchRequest(tags=["kitty"], labels_all=[LabelFilter(name="Cat")]))
        assert {h.id for h in got.hits} == passing & {
            i for i, d in documents.items() if any(lab.name == "Cat" for lab in d.labels)
        }
        stale = tags.Tagger.load(library.index.model_id, settings).stale()
        assert library.index.count(stale) == 0 and tags.apply(shared).scored == 0
        after = library.index.get(list(documents), with_embedding=True, with_regions=True)
        for i, doc in before.items():
            assert after[i].tags["kitty"].passed == (i in passing)
            was, now = doc.model_dump(), after[i].model_dump()
            vectors = ("embedding", "regions", "tags", "ingested_at")
            changed = {k for k in was if k not in vectors and was[k] != now[k]}
            assert not changed, (i, changed)
            assert np.allclose(was["embedding"], now["embedding"], atol=1e-6)
            assert len(was["regions"]) == len(now["regions"])
    finally:
        tags.remove(shared, "kitty")
    assert library.index.count(filters.Term("tag_versions", ("kitty@1",))) == 0
    assert not any("kitty" in d.tags for d in library.index.get(list(documents)).values())


def test_a_tag_write_changes_the_tags_only_and_skips_unknown_ids(library: Store, documents) -> None:
    """``set_tags`` replaces a document's tags (a tag left out of the map is gone, and the tag
    filters follow), leaves its vectors and every other field as stored, and neither fails on
    nor creates a document for an id the index does not hold."""
    index = library.index
    first, second = sorted(documents)[:2]
    before = index.get([first, second], with_embedding=True, with_regions=True)
    kitty, room = (
        TagScore(score=0.9, passed=True, version=3),
        TagScore(score=0.1, passed=False, version=1),
    )
    ghost = before[first].model_copy(update={"id": "no-such-asset", "tags": {"kitty": kitty}})
    try:
        tagged = before[first].model_copy(update={"tags": {"kitty": kitty, "room": room}})
        assert index.set_tags([tagged, ghost]) == 2
        got = index.get([first, second, ghost.id], with_embedding=True, with_regions=True)
        assert set(got) == {first, second}
        assert got[first].tags == tagged.tags and got[second].tags == before[second].tags
        assert index.scan(filters.Term("tag_names", ("kitty",)), 0, 10) == [first]
        assert index.scan(filters.Term("tag_versions", ("room@1",)), 0, 10) == [first]
        assert index.set_tags([before[first].model_copy(update={"tags": {"room": room}})]) == 1
        now = index.get([first], with_embedding=True, with_regions=True)[first]
        assert now.tags == {"room": room}
        assert index.count(filters.Term("tag_versions", ("kitty@3",))) == 0
        was = before[first]
        assert now.regions == was.regions and len(now.regions) == 29
        assert np.allclose(now.embedding or [], was.embedding or [], atol=1e-6)
        unchanged = {"tags", "embedding", "regions"}
        assert now.model_dump(exclude=unchanged) == was.model_dump(exclude=unchanged)
    finally:
        index.set_tags([before[first]])
    assert index.get([first])[first].tags == before[first].tags


@pytest.mark.parametrize("cluster", ["opensearch", "elasticsearch"])
def test_a_run_log_made_by_an_earlier_version_takes_the_new_fields(
    cluster: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Run records gained fields (``outcome``, ``kind``, alias switches...): a strict runs
    index made before them must take them, not reject every run recorded from now on."""
    settings = request.getfixturevalue(f"{cluster}_node").settings(tmp_path, table="upgrade")
    index = runs_index(settings.table)
    old = log_templates(settings.table, settings)[f"{settings.table}-runs"]
    for name in ("outcome", "quarantined_earlier", "kind", "trigger", "previous"):
        del old["template"]["mappings"]["properties"][name]
    with Library.open(settings) as library:
        client = library.backend.client
        client.indices.delete(index=index, ignore_unavailable=True)
        client.indices.create(index=index, body=create_body(old))
        try:
            library.runs.record(
                IngestSummary(run_id="r1", outcome="quarantined", quarantined_earlier=2)
            )
            library.runs.record(AliasSwitch(run_id="s1", model="m@2", trigger="rollback"))
            runs, switches = library.runs.runs(), library.runs.switches()
        finally:
            client.indices.delete(index=index)
    assert [(r.run_id, r.outcome, r.quarantined_earlier) for r in runs] == [
        ("r1", "quarantined", 2)
    ]
    assert [(s.run_id, s.trigger) for s in switches] == [("s1", "rollback")]


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


def test_one_percent_filter_returns_k_exact_hits_then_the_alias_moves_and_back(
    library: Store,
) -> None:
    lib = library.library
    n, dim = 3000, 16
    vectors, docs = synthetic(n, dim)
    other = lib.index("synthetic@1")
    for start in range(0, n, 500):
        assert other.upsert(docs[start : start + 500]) == 500
    query = np.random.default_rng(9).normal(size=dim)
    response = Searcher(other).search(
        SearchRequest(vector=query.tolist(), k=10, labels_all=[LabelFilter(name="Rare")])
    )
    rare = np.arange(0, n, 100)
    ranked = rare[np.argsort(-(vectors[rare] @ (query / np.linalg.norm(query))))]
    assert response.total_candidates == 30 and len(response.hits) == 10
    assert [h.id for h in response.hits] == [f"s{i:05d}" for i in ranked[:10]]
    infos = {i.model_id: i for i in lib.catalogue.indexes()}
    assert infos["synthetic@1"].count == n and not infos["synthetic@1"].active
    assert infos[library.index.model_id].active
    # The switch: one atomic move, then the rollback, another.
    assert lib.catalogue.switch("synthetic@1") == library.index.model_id
    assert lib.catalogue.active() == "synthetic@1"
    assert lib.index().model_id == "synthetic@1", "the library follows the alias"
    assert lib.catalogue.switch(library.index.model_id) == "synthetic@1"
    assert lib.catalogue.active() == library.index.model_id
    with pytest.raises(ValueError, match="no index for"):
        lib.catalogue.switch("never-ingested@1")


@pytest.mark.parametrize("store_kind", KINDS)
def test_an_index_from_before_regions_and_tags_takes_documents_with_them(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path, documents
) -> None:
    """A table or index written before region vectors and custom tags existed (no such
    columns or fields, a strict mapping on the clusters) gets them on first use: its documents
    stay readable with no regions and no tags (and count as not scored by any tag), and new
    documents are written with theirs."""
    old, new = list(documents.values())[:2]
    model_id = f"{old.model}@{old.model_version}"
    dim = len(old.embedding or ())
    if store_kind == "embedded":
        settings = Settings(home=tmp_path, table="upgrade")
    else:
        settings = request.getfixturevalue(f"{store_kind}_node").settings(tmp_path, table="upgrade")
    with Library.open(settings) as library:
        backend = library.backend
        index = library.index(model_id)
        later = ("regions", "tags", "tag_names", "tag_versions")
        before = tuple(f for f in FIELDS if f.name not in later)
        tagged = new.model_copy(
            update={"tags": {"kitty": TagScore(score=0.9, passed=True, version=1)}}
        )
        if store_kind == "embedded":
            schema = arrow_schema(before, dim).with_metadata({"model_id": model_id})
            rows = to_rows([old.model_copy(update={"regions": []})], before)
            backend.db.create_table(index.name, data=rows, schema=schema)
        else:
            drop = lambda: backend.client.indices.delete(index=index.name, ignore=[404])  # noqa: E731
            drop()
            body = create_body(backend.asset_template(settings, dim), model_id=model_id)
            for name in later:
                del body["mappings"]["properties"][name]
            backend.create(index.name, body)
            backend.client.index(
                index=index.name,
                id=old.id,
                body=to_source(
                    old.model_copy(update={"regions": []}),
                    tuple(f for f in CLUSTER_FIELDS if f.name not in later),
                ),
                refresh=True,
            )
        assert index.upsert([tagged]) == 1
        index.optimize()
        got = index.get([old.id, new.id], with_embedding=True, with_regions=True)
        assert got[old.id].regions == [] and len(got[new.id].regions) == 29
        kept = set(AssetDocument.model_fields) - {*later, "embedding"}
        assert got[old.id].model_dump(include=kept) == old.model_dump(include=kept)
        assert got[old.id].tags == {} and got[new.id].tags == tagged.tags
        unscored = filters.Not(filters.Term("tag_versions", ("kitty@1",)))
        assert index.scan(unscored, 0, 10) == [old.id]
        assert index.scan(filters.Term("tag_names", ("kitty",)), 0, 10) == [new.id]
        vector = new.regions[0].embedding
        assert index.knn(vector, None, 2, regions=True).scored[0][0] == new.id
        if store_kind != "embedded":
            drop()
