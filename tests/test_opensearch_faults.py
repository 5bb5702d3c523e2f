"""Faults that only a real cluster shows (tests/nodes.py starts the nodes from Maven Central):

* a node whose write queue is tiny answers bulk requests with 429: every rejected document is
  retried with back-off, and nothing is lost;
* a document that breaks the mapping is quarantined by ingestion with the index's reason,
  instead of being dropped or failing the run (the per-item report itself is in the contract
  suite, for every store);
* a two-node cluster loses a node to ``kill -9`` in the middle of an ingest: the ingest
  finishes with every document there exactly once, search keeps answering, and the node
  rejoins.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nodes
import numpy as np
import pytest

from pipeline.document import AssetDocument, Label
from pipeline.library import Library
from pipeline.search import Searcher, SearchRequest

pytestmark = pytest.mark.slow
DIM = 16


def documents(n: int, start: int = 0, dim: int = DIM) -> list[AssetDocument]:
    rng = np.random.default_rng(start)
    vectors = rng.normal(size=(n, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        AssetDocument(
            id=f"d{start + i:06d}",
            uri=f"file:///synthetic/{start + i}.jpg",
            sha256="0" * 64,
            fingerprint=f"{start + i}",
            width=1,
            height=1,
            format="PNG",
            labels=[Label(name="Thing", confidence=90)],
            embedding=v.tolist(),
            model="synthetic",
            model_version="1",
        )
        for i, v in enumerate(vectors)
    ]


def own_node(name: str, **kw) -> nodes.Node:
    try:
        return nodes.start(f"{name}-{os.getpid()}", **kw)
    except nodes.NodeUnavailable as exc:
        nodes.unavailable(str(exc))
        raise


@pytest.fixture
def busy_node() -> Iterator[nodes.Node]:
    """One write thread and a write queue of one: a third concurrent bulk request is refused."""
    node = own_node(
        "pytest-busy",
        node_settings={"thread_pool.write.size": "1", "thread_pool.write.queue_size": "1"},
    )
    yield node
    nodes.stop(node.name)


def test_a_full_write_queue_answers_429_and_every_document_arrives(
    busy_node: nodes.Node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = busy_node.settings(
        tmp_path,
        table="busy",
        bulk_chunk_size=20,
        bulk_max_retries=30,
        bulk_initial_backoff_s=0.05,
        bulk_max_backoff_s=2.0,
    )
    writers, batches, size = 6, 5, 100
    with Library.open(settings) as library:
        library.index("synthetic@1").ensure(DIM)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            with Library.open(settings) as library:
                index = library.index("synthetic@1")
                for b in range(batches):
                    index.upsert(documents(size, start=(w * batches + b) * size))
        except BaseException as exc:  # a lost write is what this test is looking for
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="pipeline.store.cluster")
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Library.open(settings) as library:
        stats = library.backend.client.nodes.stats(metric="thread_pool")
        rejected = sum(n["thread_pool"]["write"]["rejected"] for n in stats["nodes"].values())
        assert rejected > 0, "the node never refused a write: the test proves nothing"
        retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying")]
        assert retries and all("HTTP 429" in m for m in retries)
        waits = [float(m.split(" in ")[1].split(" s")[0]) for m in retries]
        assert max(waits) > min(waits), "the back-off grows"
        total = writers * batches * size
        index = library.index("synthetic@1")
        assert index.count() == total
        assert len(index.states()) == total, "every id once"


def test_ingest_quarantines_what_the_index_refuses(
    opensearch_node, tmp_path: Path, sample_manifest: Path, embedder
) -> None:
    """A manifest value longer than the index allows for a keyword (Lucene's 32766-byte term
    limit): that asset is quarantined with the index's reason, the rest of the run goes on."""
    from pipeline.ingest import ingest

    library = tmp_path / "library"
    shutil.copytree(sample_manifest.parent / "originals", library / "originals")
    rows = [
        {"path": f"originals/{p.name}", "title": p.stem, "note": ""}
        for p in sorted((library / "originals").iterdir())
    ]
    rows[0]["note"] = "x" * 40_000
    manifest = library / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = opensearch_node.settings(tmp_path, table="refused-ingest")
    with Library.open(settings) as lib:
        summary = ingest(library, manifest, library=lib, embedder=embedder, settings=settings)
        [item] = summary.quarantined
        assert item.uri.endswith(rows[0]["path"])
        assert item.reason.startswith("rejected by the index:") and "immense" in item.reason
        assert summary.new == len(rows) - 1 == lib.index().count()
        assert [r.uri for r in lib.quarantine.records()] == [item.uri]
        client = lib.backend.client
        client.indices.delete(index=",".join(client.indices.get(index="refused-ingest*")))


@pytest.fixture
def pair() -> Iterator[nodes.Node]:
    """Two nodes on loopback, one cluster: a cluster manager with data, and a data node."""
    node = own_node("pytest-pair", nodes=2)
    yield node
    nodes.stop(node.name)


def test_killing_a_node_mid_ingest_loses_and_duplicates_nothing(pair: nodes.Node, tmp_path):
    urls = [pair.url, nodes.node_url(pair.name, 2)]
    settings = pair.settings(
        tmp_path,
        table="pair",
        cluster_urls=urls,
        bulk_chunk_size=100,
        bulk_max_retries=10,
        bulk_initial_backoff_s=0.2,
        bulk_max_backoff_s=3.0,
        read_max_retries=10,
        cluster_timeout_s=20,
    )
    batches, size = 12, 150
    with Library.open(settings) as library:
        index = library.index("synthetic@1")
        index.ensure(DIM)
        index.upsert(documents(size))  # one replica: auto_expand_replicas 0-1 on two nodes
        client = library.backend.client
        health = client.cluster.health(index=index.name, wait_for_status="green")
        assert health["active_shards"] == 2 * health["active_primary_shards"]
        query = documents(1, start=10**6)[0].embedding
    searches: dict[str, int] = {"ok": 0}
    failures: list[str] = []
    stop = threading.Event()

    def search() -> None:
        with Library.open(settings) as reader:
            searcher = Searcher(reader.index("synthetic@1"), settings)
            while not stop.is_set():
                try:
                    if len(searcher.search(SearchRequest(vector=query, k=10)).hits) == 10:
                        searches["ok"] += 1
                    else:
                        failures.append("fewer than 10 hits")
                except Exception as exc:  # any failed search is a finding
                    failures.append(repr(exc))
                time.sleep(0.02)

    reader = threading.Thread(target=search)
    reader.start()
    try:
        with Library.open(settings) as library:
            index = library.index("synthetic@1")
            for b in range(1, batches):
                if b == batches // 3:
                    nodes.kill(pair.name, 2)
                index.upsert(documents(size, start=b * size))
            before_rejoin = searches["ok"]
            # The killed node comes back with its data; the script waits for green, two nodes.
            nodes.start(pair.name, node=2)
            health = library.backend.client.cluster.health()
            assert health["number_of_nodes"] == 2 and health["status"] == "green"
            total = batches * size
            assert index.count() == total
            assert len(index.states()) == total, "every document once"
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert before_rejoin > 10 and searches["ok"] > before_rejoin, "search kept answering"


def test_a_killed_node_left_a_zombie_counts_as_stopped(tmp_path: Path) -> None:
    """A node killed with ``kill -9`` is a zombie until its parent reaps it (PID 1 for a daemon,
    which reaps late in a small VM); ``kill -0`` succeeds on a zombie, and the script once took
    the dead node for running, so ``start --node`` skipped the launch and then reported that
    the node "exited while starting". Here the zombie is a child this test does not reap."""
    child = subprocess.Popen(["sleep", "0"])
    deadline = time.monotonic() + 10
    while _state(child.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(child.pid) == "Z"
    node_dir = tmp_path / "zombie" / "node-1"
    node_dir.mkdir(parents=True)
    (tmp_path / "zombie" / "nodes").write_text("1\n")
    (node_dir / "http_port").write_text("9\n")
    (node_dir / "pid").write_text(f"{child.pid}\n")
    env = {**os.environ, "LOOKALIKE_NODE_RUN": str(tmp_path)}
    status = subprocess.run(
        ["bash", str(nodes.SCRIPT), "status", "--name", "zombie"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    child.wait()
    assert status.returncode == 3, status.stdout + status.stderr
    assert "zombie-1: stopped" in status.stdout


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, Z, ...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""
