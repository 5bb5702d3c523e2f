"""The OpenSearch store (``LOOKALIKE_STORE=opensearch``), through opensearch-py.

Choices, each from the OpenSearch documentation (k-NN, hybrid search, search pipelines):

* ``knn_vector`` with HNSW, engine ``faiss`` by default (``lucene`` as an option), space type
  ``innerproduct``: the embeddings are L2-normalised, so the inner product *is* the cosine
  similarity and no per-vector normalisation is needed (faiss' ``cosinesimil`` normalises every
  vector again). OpenSearch turns the inner product ``d`` into a score of ``1 + d`` when
  ``d >= 0`` and ``1 / (1 - d)`` below, for faiss, lucene and exact search alike;
  ``cosine_from_score`` inverts it, so ``Hit.score`` is the cosine similarity the embedded store
  reports. Query vectors are normalised before they are sent.
* ``m`` 16 and ``ef_construction`` 128 (``LOOKALIKE_HNSW_*``): OpenSearch's default ``m`` keeps
  memory near 1.1 x the raw vectors; an ``ef_construction`` a little above the default 100 buys
  graph quality for 1280-d image features at a modest indexing cost. ``ef_search``
  (``LOOKALIKE_KNN_EF_SEARCH``, default 100, never below ``k``) is sent with every query in
  ``method_parameters``.
* Filters go *inside* the ``knn`` clause (efficient filtering): faiss and lucene search only the
  documents that pass, and fall back to an exact search when the filter is selective (faiss:
  when fewer than ``index.knn.advanced.filtered_exact_search_threshold`` documents of a segment
  pass, set from ``LOOKALIKE_EXACT_SEARCH_MAX_ROWS``, or when the filtered graph search finds
  fewer than ``k``), so a 1 %-selective filter still returns ``k`` exact hits.
* Hybrid search is the ``hybrid`` query (vector and text sub-queries, both filtered) run through
  a search pipeline: the ``score-ranker-processor`` (RRF) or the ``normalization-processor``
  (min-max + weighted arithmetic mean). Pipelines for non-default weights or RRF constants are
  created on first use. The per-hit vector and text components are then fetched for the
  returned ids only. Both come with the neural-search plugin; a cluster without it (the node
  built from Maven Central) is asked once (``_cat/plugins``), and its hybrid requests are fused
  on the client instead, with the embedded store's formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opensearchpy import NotFoundError, OpenSearch, TransportError, helpers

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
    reported,
    unit,
)

SPACE_TYPE = "innerproduct"
RRF_PIPELINE = "lookalike-hybrid-rrf"
LINEAR_PIPELINE = "lookalike-hybrid-linear"
NEURAL_SEARCH_PLUGIN = "opensearch-neural-search"
DEFAULT_RRF_K = 60
DEFAULT_VECTOR_WEIGHT = 0.5


# -- request bodies (pure: contract-tested against the OpenSearch API specification) ----------


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


def asset_template(base: str, dim: int, settings: Settings) -> dict[str, Any]:
    """The index template of every model version's asset index (``<base>__*``)."""
    index_options = index_settings(settings.cluster_shards)
    index_options["index"].update(
        {
            "knn": True,
            "knn.advanced.filtered_exact_search_threshold": settings.exact_search_max_rows,
        }
    )
    vector = knn_vector_field(
        dim, settings.opensearch_engine, settings.hnsw_m, settings.hnsw_ef_construction
    )
    return {
        "index_patterns": [f"{base}__*"],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": index_options,
            "mappings": asset_mappings(vector, asset_meta(None, dim), settings.text_analyzer),
        },
        "_meta": asset_meta(None, dim),
    }


def knn_clause(
    vector: Sequence[float], k: int, ef_search: int, filters: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``knn`` query with the filter inside it (efficient filtering)."""
    k = min(k, MAX_KNN_K)
    clause: dict[str, Any] = {
        "vector": unit(vector),
        "k": k,
        "method_parameters": {"ef_search": max(ef_search, k)},
    }
    if filters is not None:
        clause["filter"] = filters
    return {"knn": {"embedding": clause}}


def vector_search_body(request: SearchRequest, size: int, ef_search: int) -> dict[str, Any]:
    return {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "query": knn_clause(request.vector or [], size, ef_search, filter_query(request)),
    }


def hybrid_search_body(request: SearchRequest, size: int, ef_search: int) -> dict[str, Any]:
    """Vector and text sub-queries, each carrying the filters; the pipeline fuses them."""
    return {
        "size": size,
        "_source": {"excludes": ["embedding"]},
        "query": {
            "hybrid": {
                "queries": [
                    knn_clause(request.vector or [], size, ef_search, filter_query(request)),
                    filtered_text_query(request),
                ]
            }
        },
    }


def ids_vector_body(request: SearchRequest, ids: Sequence[str]) -> dict[str, Any]:
    """Cosine scores of given hits: at most ``k`` documents pass the ids filter, so the k-NN
    search over them is exact."""
    k = len(ids)
    return {
        "size": k,
        "_source": False,
        "query": knn_clause(request.vector or [], k, k, {"ids": {"values": list(ids)}}),
    }


def rrf_pipeline(rank_constant: int = DEFAULT_RRF_K) -> dict[str, Any]:
    """Reciprocal rank fusion: ``sum(1 / (rank_constant + rank))`` over the sub-queries, the
    formula of the embedded store."""
    return {
        "description": "Lookalike hybrid search: reciprocal rank fusion of vector and text",
        "phase_results_processors": [
            {
                "score-ranker-processor": {
                    "combination": {"technique": "rrf", "rank_constant": rank_constant}
                }
            }
        ],
    }


def linear_pipeline(vector_weight: float = DEFAULT_VECTOR_WEIGHT) -> dict[str, Any]:
    """Min-max normalised vector and text scores, weighted arithmetic mean (vector first)."""
    weights = [round(vector_weight, 3), round(1 - vector_weight, 3)]
    return {
        "description": "Lookalike hybrid search: min-max normalised, weighted vector and text",
        "phase_results_processors": [
            {
                "normalization-processor": {
                    "normalization": {"technique": "min_max"},
                    "combination": {
                        "technique": "arithmetic_mean",
                        "parameters": {"weights": weights},
                    },
                }
            }
        ],
    }


def pipeline_for(request: SearchRequest) -> tuple[str, dict[str, Any]]:
    """The search pipeline (name and body) a hybrid request needs; the defaults are the two
    files in ``mappings/``, other parameters get a pipeline of their own."""
    if request.hybrid == "rrf":
        suffix = "" if request.rrf_k == DEFAULT_RRF_K else f"-k{request.rrf_k}"
        return RRF_PIPELINE + suffix, rrf_pipeline(request.rrf_k)
    weight = round(request.vector_weight, 3)
    suffix = "" if weight == DEFAULT_VECTOR_WEIGHT else f"-w{round(weight * 1000):04d}"
    return LINEAR_PIPELINE + suffix, linear_pipeline(weight)


def cosine_from_score(score: float) -> float:
    """Invert the ``innerproduct`` score (``1 + d`` for ``d >= 0``, ``1 / (1 - d)`` below)."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


# -- the store -----------------------------------------------------------------------------------


class OpenSearchStore(ClusterStore):
    """The ``Store`` on OpenSearch 3.x (see the module docstring for the design)."""

    backend = "opensearch"
    not_found = NotFoundError
    client_errors = (TransportError,)
    streaming_bulk = staticmethod(helpers.streaming_bulk)
    scan = staticmethod(helpers.scan)
    cosine_from_score = staticmethod(cosine_from_score)
    ids_vector_body = staticmethod(ids_vector_body)

    def __init__(self, settings: Settings, model_id: str, client: Any | None = None) -> None:
        super().__init__(settings, model_id, client)
        self._pipelines: set[str] = set()
        self._hybrid: bool | None = None

    @classmethod
    def connect(cls, settings: Settings) -> OpenSearch:
        return OpenSearch(**client_options(settings, auth_key="http_auth", timeout_key="timeout"))

    def asset_template(self, dim: int) -> dict[str, Any]:
        return asset_template(self.settings.table, dim, self.settings)

    @reported
    def apply(self, dim: int) -> list[str]:
        applied = super().apply(dim)
        if not self.has_hybrid_query():
            applied.append(
                f"no search pipelines: the cluster lacks {NEURAL_SEARCH_PLUGIN} (hybrid "
                "queries are fused by Lookalike)"
            )
            return applied
        for name, body in ((RRF_PIPELINE, rrf_pipeline()), (LINEAR_PIPELINE, linear_pipeline())):
            self.client.search_pipeline.put(id=name, body=body)
            self._pipelines.add(name)
            applied.append(f"search pipeline {name}")
        return applied

    def _ensure_pipeline(self, name: str, body: dict[str, Any]) -> None:
        """Create a hybrid pipeline the first time this process needs it, unless it exists."""
        if name in self._pipelines:
            return
        try:
            self.client.search_pipeline.get(id=name)
        except NotFoundError:
            self.client.search_pipeline.put(id=name, body=body)
        self._pipelines.add(name)

    def has_hybrid_query(self) -> bool:
        """Whether the cluster has the neural-search plugin (the ``hybrid`` query and its
        search pipelines); asked once. Without it hybrid requests are fused here."""
        if self._hybrid is None:
            plugins = self.client.cat.plugins(format="json")
            self._hybrid = any(p.get("component") == NEURAL_SEARCH_PLUGIN for p in plugins)
        return self._hybrid

    def vector_body(self, request: SearchRequest, size: int) -> dict[str, Any]:
        return vector_search_body(request, size, self.settings.knn_ef_search)

    def _similar(self, request: SearchRequest, size: int) -> list[Hit]:
        if not request.text:
            return self.vector_hits(
                request, self._search(self.index, self.vector_body(request, size))
            )
        if not self.has_hybrid_query():
            return self.client_fused_hits(request, size)
        name, pipeline = pipeline_for(request)
        self._ensure_pipeline(name, pipeline)
        body = hybrid_search_body(request, size, self.settings.knn_ef_search)
        return self.fused_hits(request, self._search(self.index, body, search_pipeline=name))
