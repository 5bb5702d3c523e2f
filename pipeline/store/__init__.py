"""Stores: where indexed documents live (``base.py`` says what each store offers).

``open_backend`` picks the store ``LOOKALIKE_STORE`` names; ``pipeline.library.Library`` is the
handle the apps open on top of it.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.settings import Settings
from pipeline.store.base import Backend


def open_backend(settings: Settings) -> Backend:
    """The store the settings select. The cluster backends are imported only when used:
    each pulls in its own client library, which the embedded store does not need."""
    if settings.store == "opensearch":
        from pipeline.store.opensearch import OpenSearchBackend

        return OpenSearchBackend(settings)
    if settings.store == "elasticsearch":
        from pipeline.store.elasticsearch import ElasticsearchBackend

        return ElasticsearchBackend(settings)
    from pipeline.store.embedded import EmbeddedBackend

    return EmbeddedBackend(settings)


def mapping_files(settings: Settings, dim: int) -> dict[str, dict[str, Any]]:
    """The JSON files of ``mappings/`` (file name -> body) for these settings and vector
    dimension: what ``lookalike index export`` writes and ``lookalike index apply`` puts. Both
    cluster backends' (imported here for their templates only)."""
    from pipeline.store.cluster import log_templates
    from pipeline.store.elasticsearch import ElasticsearchBackend
    from pipeline.store.opensearch import OpenSearchBackend

    base = settings.table
    logs = log_templates(base, settings)
    return {
        "opensearch-template-assets.json": OpenSearchBackend.asset_template(settings, dim),
        "elasticsearch-template-assets.json": ElasticsearchBackend.asset_template(settings, dim),
        "template-quarantine.json": logs[f"{base}-quarantine"],
        "template-runs.json": logs[f"{base}-runs"],
        "template-judgements.json": logs[f"{base}-judgements"],
    }


def dump(body: dict[str, Any]) -> str:
    """A mapping file's text, as ``mappings/`` holds it."""
    return json.dumps(body, indent=2) + "\n"
