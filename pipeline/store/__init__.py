"""Stores: where indexed documents live. ``open_store`` picks the backend from the settings."""

from __future__ import annotations

from pipeline.settings import Settings, get_settings
from pipeline.store.base import (
    Hit,
    LabelFilter,
    SearchRequest,
    SearchResponse,
    Store,
    StoreError,
)

__all__ = [
    "Hit",
    "LabelFilter",
    "SearchRequest",
    "SearchResponse",
    "Store",
    "StoreError",
    "open_store",
]


def open_store(model_id: str, settings: Settings | None = None) -> Store:
    """The store the settings select, holding the index of ``model_id`` (``name@version``)."""
    settings = settings or get_settings()
    if settings.store == "embedded":
        from pipeline.store.embedded import EmbeddedStore, table_name

        return EmbeddedStore(settings.store_dir, table_name(settings.table, model_id), settings)
    raise StoreError(
        f"LOOKALIKE_STORE={settings.store!r} is not available in this version; use 'embedded'"
    )
