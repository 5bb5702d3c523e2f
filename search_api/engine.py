"""The search engine behind the API: one store and one embedder, kept in step with the alias.

The API is a long-running process, while ingestion and model rollouts happen elsewhere (the CLI,
Airflow). So the store is not opened once and forgotten: before a request the engine asks the
store which model version the alias names (a file read on the embedded store, a round trip on a
cluster, so at most every ``api_alias_check_s``) and, when a rollout moved it, opens the new
version's index and loads its model before answering. Requests always get a matching
(store, embedder) pair: a query vector from one model is never searched in another's index.

Everything here blocks (TensorFlow, LanceDB, file reads), so the routes call it in worker
threads; query embedding goes through a small limiter (``api_image_workers``), because more
concurrent model calls than cores only queue inside TensorFlow while holding memory.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.search import image_vector
from pipeline.settings import Settings
from pipeline.store import Store, model_name, open_store

if TYPE_CHECKING:
    from pipeline.embed import Embedder
    from search_api.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """A store and the embedder of the model version its index holds."""

    store: Store
    embedder: Embedder

    @property
    def model_id(self) -> str:
        return self.store.model_id


class EngineNotReady(RuntimeError):
    """The model or the store is not available (yet): the API answers 503."""


class SearchEngine:
    """Owns the current :class:`Backend` and swaps it when the alias moves."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        self._checked_at = -math.inf

    def start(self) -> Backend:
        """Open the active index and load its model (at start-up, so the first query is fast)."""
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
        if self._active(backend) in (None, backend.model_id):
            return backend
        with self._lock:  # one thread reloads; the others wait and then use its result
            backend = self._backend or backend
            if self._active(backend) not in (None, backend.model_id):
                log.info("the alias moved away from %s; reloading", backend.model_id)
                try:
                    backend = self._backend = self._open()
                except Exception as exc:
                    log.warning("cannot load the active model version: %s", exc)
                    raise EngineNotReady(
                        f"cannot load the active model version "
                        f"{self._active(backend)!r} (the server log says why)"
                    ) from exc
                self.metrics.model_reloads.inc()
            return backend

    @staticmethod
    def _active(backend: Backend) -> str | None:
        try:
            return backend.store.active_model()
        except Exception as exc:  # whatever the backend raises, the store is unreachable
            log.warning("the store is not reachable: %s", exc)
            raise EngineNotReady("the store is not reachable (the server log says why)") from exc

    def embed(self, backend: Backend, data: bytes) -> list[float]:
        """The query vector of an uploaded image (``DecodeError`` for anything but an image)."""
        started = time.perf_counter()
        try:
            return image_vector(data, backend.embedder, self.settings)
        finally:
            self.metrics.embed_seconds.observe(time.perf_counter() - started)

    def _open(self) -> Backend:
        from pipeline.embed import get_embedder

        store = open_store(settings=self.settings)
        # The process-wide embedder cache: a model is loaded once however many apps use it.
        embedder = get_embedder(model_name(store.model_id))
        if embedder.model_id != store.model_id:
            raise EngineNotReady(
                f"the index holds {store.model_id} vectors but the registry's model is "
                f"{embedder.model_id}"
            )
        # The first call traces the model's tf.function (about a second): pay it here, not on
        # a user's first query.
        size = embedder.spec.image_size
        embedder.predict(np.zeros((1, size, size, 3), np.uint8))
        self.metrics.model_info.info({"model": embedder.model_id, "store": self.settings.store})
        log.info("serving %s from the %s store", embedder.model_id, self.settings.store)
        return Backend(store=store, embedder=embedder)
