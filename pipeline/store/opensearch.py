"""The OpenSearch store (``LOOKALIKE_STORE=opensearch``), through opensearch-py.

Choices, each from the OpenSearch k-NN documentation:

* ``knn_vector`` with HNSW, engine ``faiss`` by default (``lucene`` as an option: pure Java, and
  the engine of the node the tests build from Maven Central, whose k-NN zip lacks faiss' native
  libraries), space type ``innerproduct``: the embeddings are L2-normalised, so the inner
  product *is* the cosine similarity and no per-vector normalisation is needed. OpenSearch turns
  the inner product ``d`` into a score of ``1 + d`` when ``d >= 0`` and ``1 / (1 - d)`` below,
  for faiss, lucene and exact search alike; ``cosine_from_score`` inverts it, so scores are the
  cosine similarities the embedded store reports. Query vectors are normalised before sending.
* ``m`` 16 and ``ef_construction`` 128 (``LOOKALIKE_HNSW_*``): OpenSearch's default ``m`` keeps
  memory near 1.1 x the raw vectors; an ``ef_construction`` a little above the default 100 buys
  graph quality for 1280-d image features at a modest indexing cost. ``ef_search``
  (``LOOKALIKE_KNN_EF_SEARCH``, never below ``k``) is sent with every query.
* Filters go *inside* the ``knn`` clause (efficient filtering): the engine searches only the
  documents that pass and falls back to an exact search when the filter is selective (faiss:
  when fewer than ``index.knn.advanced.filtered_exact_search_threshold`` documents of a segment
  pass, set from ``LOOKALIKE_EXACT_SEARCH_MAX_ROWS``), so a 1 %-selective filter still returns
  ``k`` exact hits.
* Hybrid search is the core's (``pipeline/search.py``): the kNN and the text search run as two
  requests and are fused there, the same way on every store. OpenSearch's own ``hybrid`` query
  comes with the neural-search plugin, which the Maven Central build lacks, and its min-max
  normalisation is not the documented linear formula, so it is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opensearchpy import NotFoundError, OpenSearch, TransportError, helpers

from pipeline import filters
from pipeline.settings import Settings
from pipeline.store.cluster import MAX_KNN_K, ClusterBackend, client_options, query, unit

SPACE_TYPE = "innerproduct"


def knn_vector_field(dim: int, engine: str, m: int, ef_construction: int) -> dict[str, Any]:
    return {
        "type": "knn_vector",
        "dimension": dim,
        "method": {
            "name": "hnsw",
            "engine": engine,
            "space_type": SPACE_TYPE,
            "parameters": {"m": m, "ef_construction": ef_construction},
        },
    }


def knn_body(
    vector: Sequence[float],
    where: filters.Filter | None,
    k: int,
    ef_search: int,
    regions: bool = False,
) -> dict[str, Any]:
    """The ``knn`` query with the filter inside it (efficient filtering); ids and scores only.
    Over ``regions``, the same query inside a ``nested`` one: a document scores its best
    region's score (the filter names the document's fields, as OpenSearch allows there)."""
    k = min(k, MAX_KNN_K)
    clause: dict[str, Any] = {
        "vector": unit(vector),
        "k": k,
        "method_parameters": {"ef_search": max(ef_search, k)},
    }
    if (condition := query(where)) is not None:
        clause["filter"] = condition
    if regions:
        if condition is not None:
            # Measured on the node: a bare nested (label) filter of a nested kNN query matches
            # nothing; the same inside a bool filter matches the documents it should.
            clause["filter"] = {"bool": {"filter": [condition]}}
        nested = {"path": "regions", "score_mode": "max"}
        knn = {"nested": nested | {"query": {"knn": {"regions.embedding": clause}}}}
        return {"size": k, "_source": False, "query": knn}
    return {"size": k, "_source": False, "query": {"knn": {"embedding": clause}}}


def cosine_from_score(score: float) -> float:
    """Invert the ``innerproduct`` score (``1 + d`` for ``d >= 0``, ``1 / (1 - d)`` below)."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


class OpenSearchBackend(ClusterBackend):
    """The store on OpenSearch 3.x (see the module docstring for the design)."""

    name = "opensearch"
    not_found = NotFoundError
    client_errors = (TransportError,)
    streaming_bulk = staticmethod(helpers.streaming_bulk)
    scan_helper = staticmethod(helpers.scan)
    cosine_from_score = staticmethod(cosine_from_score)

    @classmethod
    def connect(cls, settings: Settings) -> OpenSearch:
        return OpenSearch(**client_options(settings, auth_key="http_auth", timeout_key="timeout"))

    @classmethod
    def vector_field(cls, settings: Settings, dim: int) -> dict[str, Any]:
        return knn_vector_field(
            dim, settings.opensearch_engine, settings.hnsw_m, settings.hnsw_ef_construction
        )

    @classmethod
    def index_options(cls, settings: Settings) -> dict[str, Any]:
        return {
            "knn": True,
            "knn.advanced.filtered_exact_search_threshold": settings.exact_search_max_rows,
        }

    def knn_body(
        self, vector: Sequence[float], where: filters.Filter | None, k: int, regions: bool
    ) -> dict[str, Any]:
        return knn_body(vector, where, k, self.settings.knn_ef_search, regions)
