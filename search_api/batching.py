"""Micro-batching of query images: concurrent requests share one model call.

A model call on a batch of 8 costs far less than 8 calls on one image (the weights are read
once, the matrix products are larger), so an API that embeds each upload on its own serves
fewer images per second under load than the model can. Here the first query image to arrive
leads a batch: it waits, at most ``wait_s``, while other requests that are still decoding their
uploads may join, and then for the model, since one call runs at a time; whatever joined by
then (at most ``max_batch`` images) is embedded in one call and every caller gets its own rows.

A query alone never waits: the leader waits only while another request has announced itself
(:meth:`MicroBatcher.expecting`) and has not joined yet. Requests keep their own deadline (the
API's request timeout); a failed model call fails every request of its batch with the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.embed import Embedder, Prediction


@dataclass
class _Batch:
    rows: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: Prediction | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Runs ``predict`` on the rows of concurrent callers as one batch (see the module text).

    ``observe`` is told every batch's number of images (the API's metrics histogram).
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], Prediction],
        max_batch: int,
        wait_s: float,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._observe = observe or (lambda size: None)
        self._cond = threading.Condition()
        self._forming: _Batch | None = None
        self._announced = 0  # callers inside expecting() that have not called predict yet
        self._local = threading.local()
        self._model = threading.Lock()  # one model call at a time; the next batch fills

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a query image being decoded, so a forming batch waits for it (until its
        first :meth:`predict`, or until it leaves without one, e.g. an undecodable upload)."""
        with self._cond:
            self._announced += 1
        self._local.announced = True
        try:
            yield
        finally:
            self._unannounce()

    def _unannounce(self) -> None:
        if getattr(self._local, "announced", False):
            self._local.announced = False
            with self._cond:
                self._announced -= 1
                self._cond.notify_all()

    def predict(self, rows: np.ndarray) -> Prediction:
        """The model's outputs for ``rows`` (a batch of preprocessed images), embedded together
        with whatever other callers' rows join the same batch."""
        self._unannounce()
        with self._cond:
            batch = self._forming
            leader = batch is None
            if batch is None:
                batch = self._forming = _Batch()
            start = batch.size
            batch.rows.append(rows)
            batch.size += len(rows)
            if batch.size >= self.max_batch:  # full: later callers start the next one
                self._forming = None
            self._cond.notify_all()
            if leader:
                deadline = time.monotonic() + self.wait_s
                while self._forming is batch and self._announced > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
        if leader:
            self._run(batch)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.result is not None
        return _rows(batch.result, start, start + len(rows))

    def _run(self, batch: _Batch) -> None:
        with self._model:
            with self._cond:  # joining stops here: what came while the model was busy is in
                if self._forming is batch:
                    self._forming = None
            try:
                self._observe(batch.size)
                batch.result = self._predict(np.concatenate(batch.rows))
            except BaseException as exc:  # every caller of the batch gets the error
                batch.error = exc
            finally:
                batch.done.set()


def _rows(prediction: Prediction, start: int, stop: int) -> Prediction:
    return Prediction(
        prediction.embeddings[start:stop],
        prediction.probabilities[start:stop],
        None if prediction.regions is None else prediction.regions[start:stop],
    )


class BatchedEmbedder:
    """An :class:`~pipeline.embed.Embedder` whose ``predict`` goes through a
    :class:`MicroBatcher`; everything else (spec, preprocessing, region cut-outs, which batch
    themselves) is the embedder's own."""

    def __init__(self, embedder: Embedder, batcher: MicroBatcher) -> None:
        self.embedder = embedder
        self.batcher = batcher

    def predict(self, batch: np.ndarray) -> Prediction:
        # a malformed batch fails its own caller here, never the batch it would have joined
        return self.batcher.predict(self.embedder.check_batch(batch))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)
