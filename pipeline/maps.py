"""The library map: every asset placed in 2-D so that look-alikes sit together.

A t-SNE projection (scikit-learn) of the embeddings of the active index, after PCA to 50
dimensions (the usual recipe: faster, and less noise for t-SNE's neighbourhoods), scaled into
the unit square. It is computed by ``lookalike map`` and kept as one JSON file per model
version under ``$LOOKALIKE_HOME/maps/``, which the API serves (``GET /map``) and the web page
draws with thumbnails, coloured by top label or by a custom tag. A library larger than
``limit`` is mapped from an evenly spread sample of that many assets: t-SNE is quadratic-ish in
memory and time, and a map of more thumbnails than pixels shows nothing more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from pipeline.discover import uri_to_path
from pipeline.document import AssetDocument
from pipeline.library import Library
from pipeline.settings import Settings

PCA_DIMS = 50


class MapError(ValueError):
    """The library cannot be mapped (too few assets); the message says why."""


class MapPoint(BaseModel):
    id: str
    x: float = Field(ge=0, le=1)
    y: float = Field(ge=0, le=1)
    title: str
    label: str | None = Field(None, description="The asset's most confident label.")
    tags: list[str] = Field(default_factory=list, description="The custom tags it passes.")


class LibraryMap(BaseModel):
    """A computed map, as ``GET /map`` returns it."""

    model: str
    computed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    assets: int = Field(description="Assets in the index when it was computed.")
    points: list[MapPoint]


def path(settings: Settings, model_id: str) -> Path:
    return settings.home / "maps" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model_id)}.json"


def build_map(
    library: Library,
    *,
    limit: int = 5000,
    perplexity: float = 30.0,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> LibraryMap:
    """Project the active index's embeddings (see the module docstring)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    index = library.index()
    ids = sorted(index.states())
    if len(ids) < 4:
        raise MapError(f"{len(ids)} indexed asset(s): a map needs at least 4")
    if len(ids) > limit:
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, limit).round().astype(int)]
    if on_progress:
        on_progress(f"reading {len(ids)} embeddings")
    docs: list[AssetDocument] = []
    for start in range(0, len(ids), 500):
        found = index.get(ids[start : start + 500], with_embedding=True)
        docs += [found[i] for i in ids[start : start + 500] if i in found]
    vectors = np.asarray([doc.embedding for doc in docs], dtype=np.float32)
    if vectors.shape[1] > PCA_DIMS and len(docs) > PCA_DIMS:
        vectors = PCA(PCA_DIMS, random_state=seed).fit_transform(vectors)
    if on_progress:
        on_progress(f"t-SNE of {len(docs)} assets")
    tsne = TSNE(
        2,
        perplexity=min(perplexity, (len(docs) - 1) / 3),
        init="pca",
        metric="cosine",
        random_state=seed,
    )
    xy = tsne.fit_transform(vectors)
    xy = (xy - xy.min(axis=0)) / max(float(np.ptp(xy, axis=0).max()), 1e-12)
    xy += (1 - xy.max(axis=0)) / 2  # centred in the unit square, aspect kept
    points = [
        MapPoint(
            id=doc.id,
            x=float(np.clip(x, 0, 1)),
            y=float(np.clip(y, 0, 1)),
            title=doc.title or _file_name(doc.uri),
            label=max(doc.labels, key=lambda lab: lab.confidence).name if doc.labels else None,
            tags=sorted(name for name, tag in doc.tags.items() if tag.passed),
        )
        for doc, (x, y) in zip(docs, xy, strict=True)
    ]
    return LibraryMap(model=index.model_id, assets=index.count(), points=points)


def save_map(library_map: LibraryMap, settings: Settings) -> Path:
    """Write the map where the API finds it (replaced in one step)."""
    target = path(settings, library_map.model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(library_map.model_dump_json())
    os.replace(tmp, target)
    return target


def load_map(settings: Settings, model_id: str) -> LibraryMap | None:
    """The map of ``model_id``'s index, if one was computed."""
    target = path(settings, model_id)
    if not target.is_file():
        return None
    return LibraryMap.model_validate_json(target.read_text())


def _file_name(uri: str) -> str:
    local = uri_to_path(uri)
    return local.name if local is not None else uri.rsplit("/", 1)[-1]
