"""Micro-batching of query images (search_api/batching.py) on the real model: concurrent callers
share model calls and each gets exactly its own rows; a lone query does not wait; a failed call
fails its own batch only. The API-level behaviour (metrics, answers equal to unbatched ones) is
in test_api.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.embed import Embedder, Prediction
from search_api.batching import BatchedEmbedder, MicroBatcher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(embedder: Embedder) -> np.ndarray:
    size = embedder.spec.image_size
    return np.random.default_rng(0).integers(0, 256, (12, size, size, 3), np.uint8)


def test_concurrent_callers_share_model_calls_and_get_their_own_rows(
    embedder: Embedder, images: np.ndarray
) -> None:
    sizes: list[int] = []
    calls = 0

    def predict(batch: np.ndarray) -> Prediction:
        nonlocal calls
        calls += 1
        time.sleep(0.05)  # a slow model: callers that arrive meanwhile join the next batch
        return embedder.predict(batch)

    batched = BatchedEmbedder(embedder, MicroBatcher(predict, 4, 1.0, sizes.append))
    start = threading.Barrier(len(images))

    def query(i: int) -> np.ndarray:
        with batched.batcher.expecting():
            start.wait()
            return batched.predict(images[i : i + 1]).embeddings[0]

    with ThreadPoolExecutor(len(images)) as pool:
        got = list(pool.map(query, range(len(images))))
    alone = embedder.predict(images).embeddings
    np.testing.assert_allclose(np.stack(got), alone, atol=1e-5)  # each caller its own row
    assert sum(sizes) == len(images) and calls == len(sizes)
    assert max(sizes) == 4 and len(sizes) <= 6, sizes  # batches, at most 4 images each


def test_a_lone_query_does_not_wait_for_company(embedder: Embedder, images: np.ndarray) -> None:
    sizes: list[int] = []
    batched = BatchedEmbedder(embedder, MicroBatcher(embedder.predict, 8, 30.0, sizes.append))
    started = time.monotonic()
    with batched.batcher.expecting():
        batched.predict(images[:1])
    assert time.monotonic() - started < 15  # nobody else announced: no 30 s wait
    assert sizes == [1]


def test_an_announced_query_that_never_arrives_releases_the_batch(
    embedder: Embedder, images: np.ndarray
) -> None:
    """A request whose upload fails to decode leaves without joining: the waiting leader goes
    on at once instead of waiting its full time."""
    sizes: list[int] = []
    batcher = MicroBatcher(embedder.predict, 8, 30.0, sizes.append)
    announced, leave = threading.Event(), threading.Event()

    def failing_upload() -> None:
        with batcher.expecting():
            announced.set()
            leave.wait()

    other = threading.Thread(target=failing_upload)
    other.start()
    announced.wait()
    threading.Timer(0.2, leave.set).start()
    started = time.monotonic()
    batcher.predict(images[:2])
    other.join()
    assert time.monotonic() - started < 15 and sizes == [2]


def test_a_failed_model_call_fails_its_batch_and_not_the_next(
    embedder: Embedder, images: np.ndarray
) -> None:
    failures = iter([True])

    def predict(batch: np.ndarray) -> Prediction:
        if next(failures, False):
            raise RuntimeError("out of memory")
        return embedder.predict(batch)

    batched = BatchedEmbedder(embedder, MicroBatcher(predict, 8, 0.0))
    with pytest.raises(RuntimeError, match="out of memory"):
        batched.predict(images[:1])
    assert batched.predict(images[:1]).embeddings.shape == (1, embedder.spec.dim)
    with pytest.raises(ValueError, match="expected a batch of shape"):
        batched.predict(images[:1, :100])  # a malformed batch fails its caller alone
    assert batched.spec is embedder.spec and batched.model_id == embedder.model_id
