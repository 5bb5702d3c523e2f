"""The Elasticsearch store (``LOOKALIKE_STORE=elasticsearch``), through the official client.

Requires Elasticsearch 8.18 or later (``rescore_vector``); the contract suite runs on 8.19, the
newest Elasticsearch published on Maven Central, and the 8.x client also talks to 9.x. Choices,
from the Elasticsearch reference (dense vector, kNN search):

* ``dense_vector`` indexed with ``similarity: dot_product`` (the embeddings are unit length,
  which ``dot_product`` requires and checks) and ``int8_hnsw`` index options: 4x less vector
  memory than raw floats; the raw floats are kept, and every kNN search rescores its candidates
  with them (``rescore_vector``), so scores are exact. Elasticsearch scores ``dot_product`` as
  ``(1 + d) / 2``; ``cosine_from_score`` inverts it, so scores are cosine similarities.
* The top-level ``knn`` section carries the filter (efficient filtering: Lucene searches only
  documents that pass and switches to an exact search when few do), so selective filters still
  return ``k`` hits. ``num_candidates`` is ``LOOKALIKE_KNN_EF_SEARCH`` (never below ``k``).
* Hybrid search is the core's (``pipeline/search.py``), as on every store: the ``rrf``
  retriever needs an Enterprise licence and is missing from the integ-test distribution.
* Searches leave the vector out of ``_source``; a document asked for with its embedding gets
  it back with ``_source: true`` (8.x) or ``_source.exclude_vectors: false`` (9.2+, which
  excludes vectors by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError, helpers

from pipeline import filters
from pipeline.settings import Settings
from pipeline.store.cluster import (
    MAX_KNN_K,
    ClusterBackend,
    client_options,
    plain_body,
    query,
    unit,
)

SIMILARITY = "dot_product"
RESCORE_OVERSAMPLE = 3.0


def dense_vector_field(
    dim: int, m: int, ef_construction: int, index_type: str = "int8_hnsw"
) -> dict[str, Any]:
    return {
        "type": "dense_vector",
        "dims": dim,
        "index": True,
        "similarity": SIMILARITY,
        "index_options": {"type": index_type, "m": m, "ef_construction": ef_construction},
    }


def knn_body(
    vector: Sequence[float],
    where: filters.Filter | None,
    k: int,
    num_candidates: int,
    regions: bool = False,
) -> dict[str, Any]:
    """The top-level ``knn`` section with the filter inside it; over the nested
    ``regions.embedding`` a document scores its best region (and the filter still names the
    document's own fields)."""
    k = min(k, MAX_KNN_K)
    section: dict[str, Any] = {
        "field": "regions.embedding" if regions else "embedding",
        "query_vector": unit(vector),
        "k": k,
        "num_candidates": min(max(num_candidates, k), MAX_KNN_K),
        "rescore_vector": {"oversample": RESCORE_OVERSAMPLE},
    }
    if (condition := query(where)) is not None:
        section["filter"] = condition
    return {"size": k, "_source": False, "knn": section}


def cosine_from_score(score: float) -> float:
    """Invert Elasticsearch's ``dot_product`` score ``(1 + d) / 2``."""
    return 2.0 * score - 1.0


class ElasticsearchBackend(ClusterBackend):
    """The store on Elasticsearch 8.18+ (see the module docstring for the design)."""

    name = "elasticsearch"
    not_found = NotFoundError
    client_errors = (ApiError, TransportError)
    streaming_bulk = staticmethod(helpers.streaming_bulk)
    scan_helper = staticmethod(helpers.scan)
    cosine_from_score = staticmethod(cosine_from_score)

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        super().__init__(settings, client)
        self._version: tuple[int, int] | None = None

    @classmethod
    def connect(cls, settings: Settings) -> Elasticsearch:
        return Elasticsearch(
            **client_options(settings, auth_key="basic_auth", timeout_key="request_timeout")
        )

    @classmethod
    def vector_field(cls, settings: Settings, dim: int) -> dict[str, Any]:
        return dense_vector_field(dim, settings.hnsw_m, settings.hnsw_ef_construction)

    @classmethod
    def region_vector_field(cls, settings: Settings, dim: int) -> dict[str, Any]:
        """Float HNSW: measured on 8.19, a kNN search over nested int8 vectors gives quantised
        scores (off by more than 1e-4 cosine), the rescoring the top-level field gets does not
        reach nested ones."""
        return dense_vector_field(dim, settings.hnsw_m, settings.hnsw_ef_construction, "hnsw")

    @classmethod
    def index_options(cls, settings: Settings) -> dict[str, Any]:
        return {}

    def knn_body(
        self, vector: Sequence[float], where: filters.Filter | None, k: int, regions: bool
    ) -> dict[str, Any]:
        return knn_body(vector, where, k, self.settings.knn_ef_search, regions)

    def version(self) -> tuple[int, int]:
        """The (major, minor) version of the node this client talks to, asked once (from the
        nodes API: the root endpoint is an optional module some distributions leave out)."""
        if self._version is None:
            info = plain_body(self.client.nodes.info(node_id="_local", metric="_none"))
            number = next(iter(info["nodes"].values()))["version"]
            major, minor = (int(part) for part in number.split(".")[:2])
            self._version = (major, minor)
        return self._version

    def source(self, excludes: list[str]) -> Any:
        if self.version() < (9, 2):
            return super().source(excludes)
        # From 9.2 ``_source`` leaves vectors out unless asked for them.
        return {"exclude_vectors": False, **({"excludes": excludes} if excludes else {})}
