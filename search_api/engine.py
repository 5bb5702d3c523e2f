"""The search engine behind the API: the library, a searcher and an embedder, kept in step with
the alias.

The API is a long-running process, while ingestion and model rollouts happen elsewhere (the CLI,
Airflow). So the library is opened once, but the version searched is not fixed: before a
request the engine asks the catalogue which model version the alias names (a file read on the
embedded store, a round trip on a cluster, so at most every ``api_alias_check_s``) and, when a
rollout moved it, opens the new version's index and loads its model before answering. Requests
always get a matching (searcher, embedder) pair: a query vector from one model is never
searched in another's index.

Everything here blocks (the model, LanceDB, file reads), so the routes call it in worker
threads, query images through a limiter (``api_image_workers``) that bounds the decoded pixels
held at once; concurrent query images are embedded together (:mod:`search_api.batching`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.embed import get_embedder
from pipeline.library import Library
from pipeline.search import ImageQuery, Searcher, analyse_image
from pipeline.settings import Settings
from search_api.batching import BatchedEmbedder, MicroBatcher

if TYPE_CHECKING:
    from search_api.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """A searcher over one model version's index and the embedder of that version (its
    query images micro-batched)."""

    searcher: Searcher
    embedder: BatchedEmbedder

    @property
    def model_id(self) -> str:
        return self.searcher.index.model_id


class EngineNotReady(RuntimeError):
    """The model or the store is not available (yet): the API answers 503."""


class SearchEngine:
    """Owns the current :class:`Backend` and swaps it when the alias moves."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._library: Library | None = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        self._checked_at = -math.inf

    def start(self) -> Backend:
        """Open the active index, load its vector index and its model (at start-up, so the first
        query is fast)."""
        with self._lock:
            self._backend = self._open()
            return self._backend

    def backend(self) -> Backend:
        """The backend for the model version the alias names now, reloading after a rollout."""
        backend = self._backend
        if backend is None:
            raise EngineNotReady("the model is not loaded yet")
        now = time.monotonic()
        if now - self._checked_at < self.settings.api_alias_check_s:
            return backend
        self._checked_at = now  # a race here only means one more check
        if self._active() in (None, backend.model_id):
            return backend
        with self._lock:  # one thread reloads; the others wait and then use its result
            backend = self._backend or backend
            if self._active() not in (None, backend.model_id):
                log.info("the alias moved away from %s; reloading", backend.model_id)
                try:
                    backend = self._backend = self._open()
                except Exception as exc:
                    log.warning("cannot load the active model version: %s", exc)
                    raise EngineNotReady(
                        f"cannot load the active model version "
                        f"{self._active()!r} (the server log says why)"
                    ) from exc
                self.metrics.model_reloads.inc()
            return backend

    def library(self) -> Library:
        if self._library is None:
            raise EngineNotReady("the store is not open yet")
        return self._library

    def _active(self) -> str | None:
        try:
            return self.library().catalogue.active()
        except EngineNotReady:
            raise
        except Exception as exc:  # whatever the store raises, it is unreachable
            log.warning("the store is not reachable: %s", exc)
            raise EngineNotReady("the store is not reachable (the server log says why)") from exc

    def embed(
        self,
        backend: Backend,
        data: bytes,
        box: tuple[float, float, float, float] | None = None,
        with_regions: bool = False,
    ) -> ImageQuery:
        """The query of an uploaded image, or of its ``box`` part: its vector, and its regions'
        when asked (``DecodeError`` for anything but an image)."""
        started = time.perf_counter()
        try:
            with backend.embedder.batcher.expecting():
                return analyse_image(data, backend.embedder, self.settings, box, with_regions)
        finally:
            self.metrics.embed_seconds.observe(time.perf_counter() - started)

    def _open(self) -> Backend:
        if self._library is None:
            self._library = Library.open(self.settings)
        searcher = self._library.searcher()
        model_id = searcher.index.model_id
        started = time.perf_counter()
        searcher.index.warm()  # the first searches as fast as the rest
        log.info("loaded the index of %s in %.1f s", model_id, time.perf_counter() - started)
        # The process-wide embedder cache: a model is loaded once however many apps use it.
        embedder = get_embedder(model_id)
        if embedder.model_id != model_id:
            raise EngineNotReady(
                f"the index holds {model_id} vectors but the registry's model is "
                f"{embedder.model_id}"
            )
        # The first call traces TensorFlow's graph or plans ONNX Runtime's (up to a second):
        # pay it here, not on a user's first query.
        size = embedder.spec.image_size
        embedder.predict(np.zeros((1, size, size, 3), np.uint8))
        self.metrics.model_info.info(
            {"model": embedder.model_id, "store": self.settings.store, "backend": embedder.backend}
        )
        log.info(
            "serving %s (%s) from the %s store",
            embedder.model_id,
            embedder.backend,
            self.settings.store,
        )
        batcher = MicroBatcher(
            embedder.predict,
            self.settings.api_batch_size,
            self.settings.api_batch_wait_ms / 1000,
            self.metrics.batch_size.observe,
        )
        return Backend(searcher=searcher, embedder=BatchedEmbedder(embedder, batcher))

    def close(self) -> None:
        if self._library is not None:
            self._library.close()
