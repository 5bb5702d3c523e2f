"""The embedded LanceDB store, on synthetic vectors (no model needed): upserts, deletes,
incremental state, filters, text and hybrid search, and k hits under selective filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.document import AssetDocument, Label, QuarantineRecord
from pipeline.settings import Settings
from pipeline.store.base import LabelFilter, SearchRequest
from pipeline.store.embedded import EmbeddedStore

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
def store(tmp_path: Path) -> EmbeddedStore:
    return EmbeddedStore(Settings(home=tmp_path), "test@1")


def test_upsert_is_idempotent_and_get_roundtrips(store: EmbeddedStore) -> None:
    vecs = unit(np.random.default_rng(0).random((5, DIM)))
    cat = Label(name="Tabby Cat", confidence=81.5, parents=["Cat", "Animal"])
    docs = [
        make_doc(i, v, [cat], title=f"t{i}", keywords=["a", "b"], metadata={"k": "v"})
        for i, v in enumerate(vecs)
    ]
    assert store.upsert(docs) == 5
    store.upsert(docs)
    assert store.count() == 5
    got = store.get("id00003")
    assert got is not None and got.labels == [cat] and got.metadata == {"k": "v"}
    assert got.keywords == ["a", "b"] and np.allclose(got.embedding, vecs[3], atol=1e-6)
    assert store.get("nope") is None


def test_delete_states_and_quarantine(store: EmbeddedStore) -> None:
    vecs = unit(np.random.default_rng(1).random((3, DIM)))
    store.upsert([make_doc(i, v) for i, v in enumerate(vecs)])
    store.quarantine(
        [
            QuarantineRecord(
                id="id00001",
                uri="file:///lib/1.jpg",
                sha256="x",
                fingerprint="fpq",
                reason="truncated",
            )
        ]
    )
    states = store.states()
    assert store.count() == 2, "quarantining an id drops its stale document"
    assert states["id00001"].quarantined and not states["id00000"].quarantined
    assert [r.reason for r in store.quarantined()] == ["truncated"]
    store.upsert([make_doc(1, vecs[1])])
    assert store.quarantined() == [], "a fixed file leaves quarantine"
    store.delete(["id00000", "id00001"])
    assert set(store.states()) == {"id00002"}


def test_vector_search_ranks_by_cosine(store: EmbeddedStore) -> None:
    vecs = unit(np.random.default_rng(2).random((50, DIM)))
    store.upsert([make_doc(i, v) for i, v in enumerate(vecs)])
    q = vecs[7]
    hits = store.search(SearchRequest(vector=q.tolist(), k=5)).hits
    expected = np.argsort(-(vecs @ q))[:5]
    assert [h.id for h in hits] == [f"id{i:05d}" for i in expected]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[0].vector_score == hits[0].score
    page2 = store.search(SearchRequest(vector=q.tolist(), k=2, offset=2)).hits
    assert [h.id for h in page2] == [h.id for h in hits[2:4]]


def test_label_filters_are_exact_for_fractional_thresholds(store: EmbeddedStore) -> None:
    vecs = unit(np.random.default_rng(3).random((6, DIM)))
    confs = [79.9, 80.0, 80.4, 80.6, 95.0, 10.0]
    store.upsert(
        [
            make_doc(i, v, [Label(name="Cat", confidence=c)])
            for i, (v, c) in enumerate(zip(vecs, confs, strict=True))
        ]
    )
    q = vecs[0].tolist()

    def ids(**filters) -> set[int]:
        hits = store.search(SearchRequest(vector=q, k=10, **filters)).hits
        return {int(h.id[2:]) for h in hits}

    assert ids(labels_all=[LabelFilter(name="cat", min_confidence=80)]) == {1, 2, 3, 4}
    assert ids(labels_all=[LabelFilter(name="Cat", min_confidence=80.5)]) == {3, 4}
    assert ids(labels_none=[LabelFilter(name="Cat", min_confidence=80.5)]) == {0, 1, 2, 5}
    assert ids(
        labels_any=[LabelFilter(name="Dog"), LabelFilter(name="Cat", min_confidence=95)]
    ) == {4}
    assert store.label_counts(min_confidence=80) == {"Cat": 4}
    assert store.label_counts(min_confidence=0) == {"Cat": 6}
    hit = store.search(SearchRequest(vector=q, labels_all=[LabelFilter(name="cat")])).hits[0]
    assert [lab.name for lab in hit.matched_labels] == ["Cat"]


def test_metadata_text_and_hybrid(store: EmbeddedStore) -> None:
    vecs = unit(np.random.default_rng(4).random((4, DIM)))
    titles = ["A cat on a red sofa", "Sofa catalogue", "Dog in the park", "Mountain lake"]
    store.upsert(
        [
            make_doc(i, v, title=t, metadata={"photographer": "ann" if i % 2 else "bo"})
            for i, (v, t) in enumerate(zip(vecs, titles, strict=True))
        ]
    )
    store.optimize()  # builds the full-text index
    text_hits = store.search(SearchRequest(text="sofa", k=10)).hits
    assert {h.id for h in text_hits} == {"id00000", "id00001"}
    assert all(h.text_score and h.vector_score is None for h in text_hits)
    meta_hits = store.search(
        SearchRequest(vector=vecs[0].tolist(), metadata={"photographer": ["ann"]})
    ).hits
    assert {h.id for h in meta_hits} == {"id00001", "id00003"}
    for mode in ("rrf", "linear"):
        hybrid = store.search(SearchRequest(vector=vecs[3].tolist(), text="sofa", hybrid=mode)).hits
        both = next(h for h in hybrid if h.id == "id00000")
        assert both.vector_score is not None and both.text_score is not None
        assert hybrid[0].id in {"id00000", "id00001", "id00003"}
        assert len(hybrid) == 4, "hybrid unions both legs"


def test_selective_filter_returns_k_hits_with_ann_index(tmp_path: Path) -> None:
    """3,000 rows with an IVF index; a filter passing 1 % must still return k exact hits,
    both via the exact path and when forced through the ANN index."""
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
            exact_search_max_rows=exact_max,
            nprobes=1,
            refine_factor=1,
        )
        store = EmbeddedStore(settings, "t@1")
        for start in range(0, 3000, 1000):
            store.upsert(docs[start : start + 1000])
        store.optimize()
        assert any(i.columns == ["vector"] for i in store.table.list_indices())
        q = unit(rng.normal(size=DIM))
        response = store.search(
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


def test_alias_points_searches_at_one_model_version(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    old, new = EmbeddedStore(settings, "m@1"), EmbeddedStore(settings, "m@2")
    vecs = unit(np.random.default_rng(6).random((2, DIM)))
    old.upsert([make_doc(0, vecs[0])])
    new.upsert([make_doc(1, vecs[1])])
    assert old.active_model() is None
    assert old.activate() is None and new.active_model() == "m@1"
    assert new.activate() == "m@1" and old.active_model() == "m@2"
    infos = {i.model_id: i for i in old.indexes()}
    assert set(infos) == {"m@1", "m@2"} and infos["m@2"].active and infos["m@1"].count == 1
