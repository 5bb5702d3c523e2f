"""The OpenSearch store against the real ``opensearchproject/opensearch`` image (testcontainers),
compared with the embedded store on the same data.

Security plugin on (TLS with the image's demo certificates, basic auth as ``admin``), the image
and version the compose stack pins. The sample library is ingested into both stores with the
real model; then the same requests must return the same top hits: vector search, label /
metadata / id filters, text, hybrid (RRF and linear), and a kNN search whose filter passes 1 % of
3,000 documents, which must still return ``k`` exact hits.

These tests need a Docker engine. Where none is reachable they are skipped with the reason --
never faked: the contract tests (``test_opensearch_contract.py``) cover the request bodies there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.document import AssetDocument, Label
from pipeline.settings import Settings, get_settings
from pipeline.store.base import LabelFilter, SearchRequest, Store
from pipeline.store.cluster import BulkWriteError, index_action, write_bulk
from pipeline.store.embedded import EmbeddedStore
from pipeline.store.opensearch import OpenSearchStore

REPO = Path(__file__).resolve().parents[1]
IMAGE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["opensearch"]["image"]
ADMIN_PASSWORD = "Lookalike-Test-2026!"


def _docker_problem() -> str | None:
    """Why no Docker engine can be used, or ``None`` when one answers."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


DOCKER_PROBLEM = _docker_problem()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        DOCKER_PROBLEM is not None,
        reason=f"no Docker engine reachable ({DOCKER_PROBLEM}); these tests start the real "
        f"{IMAGE} image with testcontainers and run wherever Docker does",
    ),
]


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    from testcontainers.community.opensearch import OpenSearchContainer

    container = OpenSearchContainer(
        IMAGE, security_enabled=True, initial_admin_password=ADMIN_PASSWORD
    ).with_env("OPENSEARCH_JAVA_OPTS", "-Xms1g -Xmx1g")
    with container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(9200)
        yield f"https://{host}:{port}"


def cluster_settings(home: Path, url: str, **overrides: Any) -> Settings:
    return Settings(
        home=home,
        store="opensearch",
        cluster_urls=url,
        cluster_user="admin",
        cluster_password=ADMIN_PASSWORD,
        cluster_verify_certs=False,  # the image's self-signed demo certificate
        **overrides,
    )


@pytest.fixture(scope="module")
def stores(
    cluster_url: str, sample_manifest: Path, embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmbeddedStore, OpenSearchStore]]:
    """The sample library ingested, by the same pipeline, into both stores."""
    from pipeline.ingest import ingest

    home = tmp_path_factory.mktemp("compare")
    embedded = EmbeddedStore(Settings(home=home), embedder.model_id)
    cluster = OpenSearchStore(cluster_settings(home, cluster_url), embedder.model_id)
    for store in (embedded, cluster):
        ingest(sample_manifest.parent, sample_manifest, store=store, embedder=embedder)
    yield embedded, cluster
    cluster.close()


def ids(store: Store, **request: Any) -> list[str]:
    return [h.id for h in store.search(SearchRequest(**request)).hits]


def test_ingest_writes_the_same_documents(stores, sample_manifest: Path, embedder) -> None:
    from pipeline.ingest import ingest

    embedded, cluster = stores
    assert cluster.count() == embedded.count() > 30
    assert {k: v.quarantined for k, v in cluster.states().items()} == {
        k: v.quarantined for k, v in embedded.states().items()
    }
    assert [r.uri for r in cluster.quarantined()] == [r.uri for r in embedded.quarantined()]
    assert cluster.active_model() == embedder.model_id, "the first index becomes the active one"
    again = ingest(sample_manifest.parent, sample_manifest, store=cluster, embedder=embedder)
    assert (again.new, again.updated, again.deleted) == (0, 0, 0), "incremental and idempotent"
    assert cluster.runs()[0].new == embedded.runs()[0].new
    assert cluster.label_counts(min_confidence=50) == embedded.label_counts(min_confidence=50)
    indexed = next(k for k, v in embedded.states().items() if not v.quarantined)
    doc = cluster.get(indexed)
    assert doc is not None and doc.embedding is not None and len(doc.embedding) == 1280


def test_vector_search_returns_the_same_top_hits(stores) -> None:
    embedded, cluster = stores
    for title in ("Chelsea the cat", "Cup of coffee", "Astronaut portrait"):
        query = next(h for h in embedded.search(SearchRequest(text=title, k=1)).hits)
        vector = embedded.get(query.id).embedding
        expected = embedded.search(SearchRequest(vector=vector, k=8)).hits
        got = cluster.search(SearchRequest(vector=vector, k=8)).hits
        assert [h.id for h in got] == [h.id for h in expected]
        assert np.allclose([h.score for h in got], [h.score for h in expected], atol=1e-4)
        assert got[0].vector_score == pytest.approx(1.0, abs=1e-4)
        page = cluster.search(SearchRequest(vector=vector, k=3, offset=3)).hits
        assert [h.id for h in page] == [h.id for h in expected[3:6]]


def test_filters_and_text_match_the_embedded_store(stores) -> None:
    embedded, cluster = stores
    cat = embedded.search(SearchRequest(text="Chelsea", k=1)).hits[0]
    vector = embedded.get(cat.id).embedding
    for request in (
        {"labels_all": [LabelFilter(name="cat", min_confidence=60)]},
        {"labels_any": [LabelFilter(name="Cup"), LabelFilter(name="Espresso", min_confidence=50)]},
        {"labels_none": [LabelFilter(name="Animal", min_confidence=10)], "exclude_ids": [cat.id]},
        {"metadata": {"source": ["scikit-image"]}},
    ):
        assert ids(cluster, vector=vector, k=10, **request) == ids(
            embedded, vector=vector, k=10, **request
        ), request
    text = cluster.search(SearchRequest(text="galaxies", k=3))
    assert text.hits[0].id == embedded.search(SearchRequest(text="galaxies", k=3)).hits[0].id
    assert text.hits[0].text_score and text.hits[0].vector_score is None


def test_hybrid_queries_match_the_embedded_store(stores) -> None:
    """Vector: the cat photo; text: "galaxies", which only the Hubble photo's description holds.
    RRF ranks then follow the (exact) vector ranking plus that one text match, so both stores
    must agree hit for hit; min-max linear fusion differs from the embedded formula in its
    scores but puts the same two documents first."""
    embedded, cluster = stores
    cat = embedded.search(SearchRequest(text="Chelsea", k=1)).hits[0]
    vector = embedded.get(cat.id).embedding
    request = SearchRequest(vector=vector, text="galaxies", hybrid="rrf", k=10)
    got, expected = cluster.search(request).hits, embedded.search(request).hits
    assert [h.id for h in got] == [h.id for h in expected]
    assert np.allclose([h.score for h in got], [h.score for h in expected])
    hubble = next(h for h in got if h.text_score is not None)
    assert "hubble" in hubble.document.uri and all(h.vector_score is not None for h in got)
    linear = request.model_copy(update={"hybrid": "linear"})
    got, expected = cluster.search(linear).hits, embedded.search(linear).hits
    assert {h.id for h in got[:2]} == {h.id for h in expected[:2]} == {cat.id, hubble.id}
    custom = cluster.search(request.model_copy(update={"rrf_k": 10})).hits
    assert custom[0].score == pytest.approx(1 / 11), "rank 1 of a leg, constant 10"


def test_one_percent_selective_filter_returns_k_exact_hits(
    cluster_url: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    dim, n = 16, 3000
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
    cluster = OpenSearchStore(cluster_settings(tmp_path, cluster_url), "synthetic@1")
    embedded = EmbeddedStore(Settings(home=tmp_path), "synthetic@1")
    for store in (cluster, embedded):
        for start in range(0, n, 1000):
            store.upsert(docs[start : start + 1000])
    query = rng.normal(size=dim)
    query /= np.linalg.norm(query)
    request = SearchRequest(vector=query.tolist(), k=10, labels_all=[LabelFilter(name="Rare")])
    response = cluster.search(request)
    rare = np.arange(0, n, 100)
    expected = [f"s{i:05d}" for i in rare[np.argsort(-(vectors[rare] @ query))[:10]]]
    assert response.total_candidates == 30 and len(response.hits) == 10
    assert [h.id for h in response.hits] == expected == ids(embedded, **request.model_dump())
    infos = {i.model_id: i for i in cluster.indexes()}
    assert infos["synthetic@1"].count == n and not infos["synthetic@1"].active
    previous = cluster.activate()
    assert cluster.active_model() == "synthetic@1" and previous != "synthetic@1"
    with OpenSearchStore(cluster.settings, previous) as rollback:  # for the other tests
        assert rollback.activate() == "synthetic@1"
    cluster.close()


def test_the_cluster_reports_a_rejected_document(stores) -> None:
    _, cluster = stores
    bad = index_action(cluster.index, "bad", {"id": "bad", "width": "wide"})
    unknown = index_action(cluster.index, "unknown", {"id": "unknown", "not_mapped": 1})
    with pytest.raises(BulkWriteError) as caught:
        write_bulk(
            cluster.client,
            [bad, unknown],
            OpenSearchStore.streaming_bulk,
            chunk_size=10,
            max_retries=1,
            initial_backoff=0,
            max_backoff=0,
        )
    errors = {f.id: f for f in caught.value.failures}
    assert errors["bad"].status == 400 and "mapper_parsing_exception" in errors["bad"].error
    assert "strict_dynamic_mapping_exception" in errors["unknown"].error


def test_cli_against_opensearch(stores, cluster_url: str, monkeypatch) -> None:
    from pipeline.cli import app

    for key, value in {
        "LOOKALIKE_STORE": "opensearch",
        "LOOKALIKE_CLUSTER_URLS": cluster_url,
        "LOOKALIKE_CLUSTER_PASSWORD": ADMIN_PASSWORD,
        "LOOKALIKE_CLUSTER_VERIFY_CERTS": "false",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        applied = runner.invoke(app, ["index", "apply"])
        assert applied.exit_code == 0 and "search pipeline lookalike-hybrid-rrf" in applied.output
        listed = runner.invoke(app, ["index", "list", "--json"])
        assert listed.exit_code == 0 and '"active": true' in listed.output
        found = runner.invoke(app, ["search", "--text", "galaxies", "--json"])
        assert found.exit_code == 0 and "hubble_deep_field" in found.output
    finally:
        get_settings.cache_clear()
