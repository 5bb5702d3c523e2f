"""Files to embeddings exactly as ingestion does it (``decode_image`` with JPEG draft mode, the
embedder's preprocessing, batched ``predict``), cached next to the data set.

The quality benchmark compares embedding *variants* computed from these same model outputs,
so the model runs once per data set and model version. The cache lives inside the set's folder,
which a rebuild wipes, and its key is the model id and the file list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.common import track
from pipeline.decode import decode_image
from pipeline.settings import get_settings

if TYPE_CHECKING:
    from pipeline.embed import Embedder, Prediction


def pixels(path: Path, embedder: Embedder) -> np.ndarray:
    """The model input for one file: the reader stage of :func:`pipeline.ingest.load`."""
    decoded = decode_image(
        path.read_bytes(),
        max_pixels=get_settings().max_image_pixels,
        min_size=embedder.spec.resize_size,
    )
    return embedder.preprocess(decoded.image)


def predict_files(
    paths: list[Path], embedder: Embedder, batch_size: int = 32, workers: int = 2
) -> Iterator[Prediction]:
    """The model's outputs for the files, a batch at a time, decoding ahead in threads."""
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(workers) as pool:
        for start in track(starts, f"embedding {len(paths)} images", total=len(starts)):
            batch = list(pool.map(lambda p: pixels(p, embedder), paths[start : start + batch_size]))
            yield embedder.predict(np.stack(batch))


def embed_files(
    paths: list[Path], embedder: Embedder, batch_size: int = 32, workers: int = 2
) -> np.ndarray:
    """L2-normalised embeddings ``(len(paths), dim)``."""
    out = np.zeros((0, embedder.spec.dim), np.float32)
    batches = [p.embeddings for p in predict_files(paths, embedder, batch_size, workers)]
    return np.concatenate([out, *batches])


def memoised(
    cache_dir: Path, key: list[str], compute: Callable[[], tuple[np.ndarray, ...]]
) -> tuple[np.ndarray, ...]:
    """``compute()``'s arrays, saved in ``cache_dir`` under a hash of ``key`` (the model id
    and the file list, say) and loaded from there next time."""
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:16]
    cache = cache_dir / f"arrays-{digest}.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            return tuple(saved[f"arr_{i}"] for i in range(len(saved.files)))
    arrays = compute()
    np.savez(cache, *arrays)
    return arrays


def cached_embeddings(paths: list[Path], embedder: Embedder, cache_dir: Path) -> np.ndarray:
    """:func:`embed_files`, memoised in ``cache_dir`` by model id and file list."""
    key = ["embeddings", embedder.model_id, *map(str, paths)]
    return memoised(cache_dir, key, lambda: (embed_files(paths, embedder),))[0]
