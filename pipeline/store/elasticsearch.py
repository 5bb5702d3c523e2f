"""The Elasticsearch store (``LOOKALIKE_STORE=elasticsearch``), through the official client.

Requires Elasticsearch 8.18 or later (``rescore_vector``); the contract suite runs on 8.19, the
newest Elasticsearch published on Maven Central. Choices, from the Elasticsearch reference
(dense vector, kNN search, RRF):

* ``dense_vector`` indexed with ``similarity: dot_product`` (the embeddings are unit length,
  which ``dot_product`` requires and checks) and ``int8_hnsw`` index options: 4x less vector
  memory than raw floats; the raw floats are kept, and every kNN search rescores its candidates
  with them (``rescore_vector``), so scores are exact. Elasticsearch scores ``dot_product`` as
  ``(1 + d) / 2``; ``cosine_from_score`` inverts it, so ``Hit.score`` is the cosine similarity.
* The top-level ``knn`` section carries the filter (efficient filtering: Lucene searches only
  documents that pass and switches to an exact search when few do), so selective filters still
  return ``k`` hits. ``num_candidates`` is ``LOOKALIKE_KNN_EF_SEARCH`` (never below ``k``).
* Hybrid search: the ``rrf`` retriever where the licence allows it (reciprocal rank fusion is
  an *Enterprise* feature; a trial licence works too). Otherwise (the free *basic* licence),
  and always for ``hybrid="linear"``, the vector and text searches run separately and are fused
  here with the embedded store's formulas, so results do not depend on the licence.
* Searches leave the vector out of ``_source``; a document asked for with its embedding gets
  it back with ``_source: true`` (8.x) or ``_source.exclude_vectors: false`` (9.2+, which
  excludes vectors by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError, helpers

from pipeline.settings import Settings
from pipeline.store.base import Hit, SearchRequest
from pipeline.store.cluster import (
    MAX_KNN_K,
    TEMPLATE_PRIORITY,
    ClusterStore,
    asset_mappings,
    asset_meta,
    client_options,
    filter_query,
    filtered_text_query,
    index_settings,
    plain_body,
    unit,
)

SIMILARITY = "dot_product"
RESCORE_OVERSAMPLE = 3.0
RRF_LICENCES = frozenset({"enterprise", "trial"})


# -- request bodies (pure) -------------------------------------------------------------------


def dense_vector_field(dim: int, m: int, ef_construction: int) -> dict[str, Any]:
    return {
        "type": "dense_vector",
        "dims": dim,
        "index": True,
        "similarity": SIMILARITY,
        "index_options": {"type": "int8_hnsw", "m": m, "ef_construction": ef_construction},
    }


def asset_template(base: str, dim: int, settings: Settings) -> dict[str, Any]:
    """The composable index template of the asset indices (``<base>__*``)."""
    vector = dense_vector_field(dim, settings.hnsw_m, settings.hnsw_ef_construction)
    return {
        "index_patterns": [f"{base}__*"],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": index_settings(settings.cluster_shards),
            "mappings": asset_mappings(vector, asset_meta(None, dim), settings.text_analyzer),
        },
        "_meta": asset_meta(None, dim),
    }


def knn_section(
    vector: Sequence[float], k: int, num_candidates: int, filters: dict[str, Any] | None
) -> dict[str, Any]:
    k = min(k, MAX_KNN_K)
    section: dict[str, Any] = {
        "field": "embedding",
        "query_vector": unit(vector),
        "k": k,
        "num_candidates": min(max(num_candidates, k), MAX_KNN_K),
        "rescore_vector": {"oversample": RESCORE_OVERSAMPLE},
    }
    if filters is not None:
        section["filter"] = filters
    return section


def vector_search_body(request: SearchRequest, size: int, num_candidates: int) -> dict[str, Any]:
    return {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "knn": knn_section(request.vector or [], size, num_candidates, filter_query(request)),
    }


def rrf_retriever_body(request: SearchRequest, size: int, num_candidates: int) -> dict[str, Any]:
    """Hybrid search with the ``rrf`` retriever (Enterprise or trial licence)."""
    knn = knn_section(request.vector or [], size, num_candidates, filter_query(request))
    return {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "retriever": {
            "rrf": {
                "retrievers": [
                    {"knn": knn},
                    {"standard": {"query": filtered_text_query(request)}},
                ],
                "rank_constant": request.rrf_k,
                "rank_window_size": size,
            }
        },
    }


def ids_vector_body(request: SearchRequest, ids: Sequence[str]) -> dict[str, Any]:
    """Cosine scores of given hits (an exact search: only they pass the filter)."""
    knn = knn_section(request.vector or [], len(ids), len(ids), {"ids": {"values": list(ids)}})
    return {"size": len(ids), "_source": False, "knn": knn}


def cosine_from_score(score: float) -> float:
    """Invert Elasticsearch's ``dot_product`` score ``(1 + d) / 2``."""
    return 2.0 * score - 1.0


# -- the store -----------------------------------------------------------------------------------


class ElasticsearchStore(ClusterStore):
    """The ``Store`` on Elasticsearch 9.2+ (see the module docstring for the design)."""

    backend = "elasticsearch"
    not_found = NotFoundError
    client_errors = (ApiError, TransportError)
    streaming_bulk = staticmethod(helpers.streaming_bulk)
    scan = staticmethod(helpers.scan)
    cosine_from_score = staticmethod(cosine_from_score)
    ids_vector_body = staticmethod(ids_vector_body)

    def __init__(self, settings: Settings, model_id: str, client: Any | None = None) -> None:
        super().__init__(settings, model_id, client)
        self._rrf_licensed: bool | None = None
        self._version: tuple[int, int] | None = None

    @classmethod
    def connect(cls, settings: Settings) -> Elasticsearch:
        return Elasticsearch(
            **client_options(settings, auth_key="basic_auth", timeout_key="request_timeout")
        )

    def asset_template(self, dim: int) -> dict[str, Any]:
        return asset_template(self.settings.table, dim, self.settings)

    def version(self) -> tuple[int, int]:
        """The (major, minor) version of the node this client talks to, asked once (from the
        nodes API: the root endpoint is an optional module some distributions leave out)."""
        if self._version is None:
            info = plain_body(self.client.nodes.info(node_id="_local", metric="_none"))
            number = next(iter(info["nodes"].values()))["version"]
            major, minor = (int(part) for part in number.split(".")[:2])
            self._version = (major, minor)
        return self._version

    @property
    def embedding_source(self) -> Any:  # type: ignore[override]
        return {"exclude_vectors": False} if self.version() >= (9, 2) else True

    def rrf_licensed(self) -> bool:
        """Whether the cluster's licence includes reciprocal rank fusion (checked once)."""
        if self._rrf_licensed is None:
            licence = plain_body(self.client.license.get())["license"]
            self._rrf_licensed = (
                licence.get("status") == "active" and licence.get("type") in RRF_LICENCES
            )
        return self._rrf_licensed

    def vector_body(self, request: SearchRequest, size: int) -> dict[str, Any]:
        return vector_search_body(request, size, self.settings.knn_ef_search)

    def _similar(self, request: SearchRequest, size: int) -> list[Hit]:
        if request.text and request.hybrid == "rrf" and self.rrf_licensed():
            body = rrf_retriever_body(request, size, self.settings.knn_ef_search)
            return self.fused_hits(request, self._search(self.index, body))
        if request.text:  # the basic licence, or linear fusion: both searches, fused here
            return self.client_fused_hits(request, size)
        return self.vector_hits(request, self._search(self.index, self.vector_body(request, size)))
