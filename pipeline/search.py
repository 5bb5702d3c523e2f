"""Search stage: turn a query (an image, an indexed asset, a vector) into a store request.

The CLI and the search API both call these functions, so an image query is decoded, resized
and embedded exactly as ingestion does it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.decode import decode_image
from pipeline.document import Label
from pipeline.settings import Settings, get_settings
from pipeline.store.base import SearchRequest, SearchResponse, Store

if TYPE_CHECKING:
    from pipeline.embed import Embedder, Prediction
    from pipeline.label import Labeler


class AssetNotFound(LookupError):
    """The asset id named by a query is not in the index."""


def analyse_image(data: bytes, embedder: Embedder, settings: Settings | None = None) -> Prediction:
    """Decode untrusted bytes (raises ``DecodeError``) and run the model on them."""
    settings = settings or get_settings()
    decoded = decode_image(
        data, max_pixels=settings.max_image_pixels, min_size=embedder.spec.resize_size
    )
    return embedder.predict(embedder.preprocess(decoded.image)[None])


def image_vector(data: bytes, embedder: Embedder, settings: Settings | None = None) -> list[float]:
    """The query embedding of an image file's bytes."""
    return analyse_image(data, embedder, settings).embeddings[0].tolist()


def detect_labels(
    data: bytes,
    embedder: Embedder,
    labeler: Labeler,
    min_confidence: float | None = None,
    max_labels: int | None = None,
    settings: Settings | None = None,
) -> list[Label]:
    """DetectLabels for one image."""
    probabilities = analyse_image(data, embedder, settings).probabilities[0]
    return labeler.detect(probabilities, min_confidence=min_confidence, max_labels=max_labels)


def similar_to(store: Store, asset_id: str, request: SearchRequest) -> SearchResponse:
    """Search with an indexed asset's own embedding, leaving the asset itself out."""
    doc = store.get(asset_id, with_embedding=True)
    if doc is None or doc.embedding is None:
        raise AssetNotFound(f"no indexed asset with id {asset_id!r}")
    update = {"vector": doc.embedding, "exclude_ids": [*request.exclude_ids, asset_id]}
    return store.search(request.model_copy(update=update))
