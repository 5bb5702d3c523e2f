"""Stores: where indexed documents live. ``open_store`` picks the backend from the settings."""

from __future__ import annotations

from pipeline.settings import Settings, get_settings
from pipeline.store.base import (
    Hit,
    IndexInfo,
    LabelFilter,
    SearchRequest,
    SearchResponse,
    Store,
    StoreError,
)

__all__ = [
    "Hit",
    "IndexInfo",
    "LabelFilter",
    "SearchRequest",
    "SearchResponse",
    "Store",
    "StoreError",
    "model_name",
    "open_store",
]


def model_name(model_id: str) -> str:
    """``mobilenet_v2-imagenet@1`` -> ``mobilenet_v2-imagenet`` (the registry name)."""
    return model_id.rsplit("@", 1)[0]


def open_store(model_id: str | None = None, settings: Settings | None = None) -> Store:
    """The store the settings select, bound to the index of ``model_id``.

    Without ``model_id`` it follows the alias (the active model version), falling back to the
    settings' model before anything was activated: searches and scheduled ingests always use
    the version a rollout last activated.
    """
    from pipeline.backbones import get_spec

    settings = settings or get_settings()
    store = _backend(settings, model_id or get_spec(settings.model).model_id)
    if model_id is None and (active := store.active_model()) not in (None, store.model_id):
        store.close()
        store = _backend(settings, active)
    return store


def _backend(settings: Settings, model_id: str) -> Store:
    """The store class ``LOOKALIKE_STORE`` names, imported only when used (each backend pulls in
    its own client library)."""
    if settings.store == "opensearch":
        from pipeline.store.opensearch import OpenSearchStore

        return OpenSearchStore(settings, model_id)
    if settings.store == "elasticsearch":
        from pipeline.store.elasticsearch import ElasticsearchStore

        return ElasticsearchStore(settings, model_id)
    from pipeline.store.embedded import EmbeddedStore

    return EmbeddedStore(settings, model_id)
