"""Bulk writes of the cluster stores: transient per-item failures are retried with back-off, what
still fails is reported (``BulkWriteError``), nothing is dropped silently.

The clients, ``helpers.streaming_bulk``, the store and its retry loop are the real ones. Only the
HTTP layer is a stand-in: no OpenSearch server can run here, so a local HTTP server answers
``POST /_bulk`` (and the two index look-ups ``upsert`` makes) with response bodies shaped as
OpenSearch returns them -- per-item ``status`` and ``error`` objects as in the Bulk API
documentation, with the error types OpenSearch uses (``rejected_execution_exception`` 429,
``unavailable_shards_exception`` 503, ``mapper_parsing_exception`` 400) -- following a script of
outcomes per document. Every response it sends is validated against the OpenSearch API
specification's ``BulkResponse`` / ``ErrorResponseBase`` schemas when the specification is
available. The same writer runs against a real cluster in ``test_opensearch_integration.py``.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from elasticsearch import helpers as es_helpers
from opensearchpy import OpenSearch
from opensearchpy import helpers as os_helpers

from pipeline.document import AssetDocument
from pipeline.settings import Settings
from pipeline.store.base import StoreError
from pipeline.store.cluster import BulkWriteError, delete_action, index_action, write_bulk
from pipeline.store.opensearch import OpenSearchStore

INDEX = "assets__test_1"
DIM = 4

REJECTED = {
    "type": "rejected_execution_exception",
    "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, "
    "replica_bytes=0, all_bytes=0, coordinating_operation_bytes=52428800, "
    "max_coordinating_and_primary_bytes=53687091]",
}
UNAVAILABLE = {
    "type": "unavailable_shards_exception",
    "reason": f"[{INDEX}][0] primary shard is not active Timeout: [1m], request: "
    f"[BulkShardRequest [[{INDEX}][0]] containing [1] requests]",
}
MAPPING_ERROR = {
    "type": "mapper_parsing_exception",
    "reason": "failed to parse field [width] of type [integer] in document with id 'bad'. "
    "Preview of field's value: 'wide'",
    "caused_by": {"type": "number_format_exception", "reason": 'For input string: "wide"'},
}
ITEM_ERRORS = {429: REJECTED, 503: UNAVAILABLE, 400: MAPPING_ERROR}
CLUSTER_BLOCKED = {
    "error": {
        "root_cause": [
            {
                "type": "cluster_block_exception",
                "reason": "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];",
            }
        ],
        "type": "cluster_block_exception",
        "reason": "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];",
    },
    "status": 503,
}


class StubCluster:
    """The HTTP layer of a cluster, scripted: ``items[id]`` lists the statuses the next bulk
    attempts of that document get (the last one repeats; success when absent); ``requests``
    lists the statuses of whole bulk requests before they are answered normally."""

    def __init__(self) -> None:
        self.items: dict[str, list[int]] = {}
        self.requests: list[int] = []
        self.attempts: Counter[str] = Counter()
        self.bulk_calls = 0
        self.sources: dict[str, dict[str, Any]] = {}
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self._seq = 0
        self._lock = threading.Lock()

    def bulk(self, lines: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        self.bulk_calls += 1
        if self.requests:
            return self.requests.pop(0), CLUSTER_BLOCKED
        items, pos = [], 0
        while pos < len(lines):
            ((op, meta),) = lines[pos].items()
            source = lines[pos + 1] if op != "delete" else None
            pos += 1 if op == "delete" else 2
            items.append({op: self._item(op, meta, source)})
        errors = any(not 200 <= next(iter(i.values()))["status"] < 300 for i in items)
        return 200, {"took": 3, "errors": errors, "items": items}

    def _item(self, op: str, meta: dict[str, Any], source: dict | None) -> dict[str, Any]:
        doc_id = meta["_id"]
        self.attempts[doc_id] += 1
        script = self.items.get(doc_id, [])
        status = script.pop(0) if len(script) > 1 else (script[0] if script else 0)
        head = {"_index": meta["_index"], "_id": doc_id}
        if status:
            return {**head, "status": status, "error": ITEM_ERRORS[status]}
        self._seq += 1
        found = doc_id in self.sources
        if op == "delete":
            self.sources.pop(doc_id, None)
            result, status = ("deleted", 200) if found else ("not_found", 404)
        else:
            self.sources[doc_id] = source or {}
            result, status = ("updated", 200) if found else ("created", 201)
        shards = {"total": 1, "successful": 1, "failed": 0}
        return {
            **head,
            "_version": 1,
            "result": result,
            "_shards": shards,
            "_seq_no": self._seq,
            "_primary_term": 1,
            "status": status,
        }

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        with self._lock:
            if method in ("POST", "PUT") and path.startswith("/_bulk"):
                lines = [json.loads(line) for line in body.decode().splitlines() if line]
                status, response = self.bulk(lines)
                self.sent.append((status, response))
                return status, response
            if method == "HEAD" and path.split("?")[0] in (f"/{INDEX}", "/assets-quarantine"):
                return 200, None
            if method == "GET" and path.startswith(f"/{INDEX}/_mapping"):
                meta = {"model_id": "test@1", "dimension": DIM}
                return 200, {INDEX: {"mappings": {"_meta": meta}}}
            return 404, {"error": {"type": "resource_not_found_exception"}, "status": 404}


def _handler(stub: StubCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            stub.headers.append({k.lower(): v for k, v in self.headers.items()})
            status, payload = stub.handle(self.command, self.path, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")  # the ES client checks it
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: Any) -> None:
            """Quiet: pytest shows failures, not every request."""

    return Handler


@pytest.fixture
def stub() -> Iterator[tuple[StubCluster, str]]:
    cluster = StubCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield cluster, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def bulk(client: Any, actions: list[dict], helper: Any = os_helpers.streaming_bulk) -> int:
    return write_bulk(
        client, actions, helper, chunk_size=50, max_retries=3, initial_backoff=0, max_backoff=0
    )


def actions(*ids: str) -> list[dict[str, Any]]:
    return [index_action(INDEX, i, {"id": i, "width": 10}) for i in ids]


def test_transient_item_failures_are_retried_until_written(stub) -> None:
    cluster, url = stub
    cluster.items = {"busy": [429, 429, 0], "moving": [503, 0]}
    written = bulk(OpenSearch(url), actions("ok", "busy", "moving"))
    assert written == 3 and set(cluster.sources) == {"ok", "busy", "moving"}
    assert cluster.attempts == {"ok": 1, "busy": 3, "moving": 2}, "only failed items are resent"


def test_permanent_failures_are_reported_with_the_cluster_reason(stub) -> None:
    cluster, url = stub
    cluster.items = {"bad": [400], "busy": [429]}
    with pytest.raises(BulkWriteError) as caught:
        bulk(OpenSearch(url), actions("ok", "bad", "busy"))
    failures = {f.id: f for f in caught.value.failures}
    assert set(failures) == {"bad", "busy"} and caught.value.written == 1
    assert failures["bad"].status == 400 and cluster.attempts["bad"] == 1, "not retried"
    assert "mapper_parsing_exception: failed to parse field [width]" in failures["bad"].error
    assert "number_format_exception" in failures["bad"].error
    assert failures["busy"].status == 429 and cluster.attempts["busy"] > 3, "retried, then given up"
    assert "rejected_execution_exception" in str(caught.value)
    assert "ok" in cluster.sources


def test_a_failed_bulk_request_is_retried_per_item(stub) -> None:
    """A whole request answered 503 (the node is still recovering) is retried by the client's
    transport, then by the writer: the documents arrive once the node is back."""
    cluster, url = stub
    cluster.requests = [503] * 5
    written = bulk(OpenSearch(url, max_retries=3, retry_on_status=(503,)), actions("a", "b"))
    assert written == 2 and set(cluster.sources) == {"a", "b"}
    assert cluster.bulk_calls == 6


def test_deleting_a_missing_document_is_not_a_failure(stub) -> None:
    cluster, url = stub
    cluster.sources["present"] = {}
    written = bulk(OpenSearch(url), [delete_action(INDEX, "present"), delete_action(INDEX, "gone")])
    assert written == 2 and not cluster.sources


def test_store_upsert_reports_what_the_cluster_rejected(stub, tmp_path: Path) -> None:
    """Through the store: client built from the settings (basic auth), retries, then a
    ``StoreError`` naming the rejected document; the others are written."""
    cluster, url = stub
    settings = Settings(
        home=tmp_path,
        store="opensearch",
        cluster_urls=url,
        cluster_password="s3cret-Pass",
        bulk_initial_backoff_s=0,
        bulk_max_backoff_s=0,
    )
    cluster.items = {"d1": [503, 0], "d2": [400]}
    docs = [_doc(i) for i in ("d0", "d1", "d2")]
    with OpenSearchStore(settings, "test@1") as store, pytest.raises(StoreError) as caught:
        store.upsert(docs)
    assert "d2" in str(caught.value) and "mapper_parsing_exception" in str(caught.value)
    assert {"d0", "d1"} <= set(cluster.sources) and "d2" not in cluster.sources
    assert (
        cluster.sources["d0"]["label_names"] == [] and len(cluster.sources["d0"]["embedding"]) == 4
    )
    assert all(h.get("authorization", "").startswith("Basic ") for h in cluster.headers)


def test_the_writer_is_shared_with_elasticsearch(stub) -> None:
    cluster, url = stub
    cluster.items = {"busy": [429, 0]}
    written = bulk(Elasticsearch(url), actions("ok", "busy"), es_helpers.streaming_bulk)
    assert written == 2 and cluster.attempts == {"ok": 1, "busy": 2}


def test_stub_answers_follow_the_specification(stub) -> None:
    """The response shapes the tests above rely on are the documented ones."""
    contract = pytest.importorskip("test_opensearch_contract")
    if not contract.SPEC_DIR.is_dir():
        pytest.skip(f"OpenSearch API specification not found at {contract.SPEC_DIR}")
    cluster, url = stub
    cluster.items = {"busy": [429, 0], "moving": [503, 0], "bad": [400]}
    cluster.requests = [503] * 4
    with pytest.raises(BulkWriteError):
        bulk(OpenSearch(url), [*actions("ok", "busy", "moving", "bad"), delete_action(INDEX, "x")])
    spec = contract.load_spec(False)
    bulk_schema = spec.component("_core.bulk.yaml", "BulkResponse")
    error_schema = spec.component("_common.yaml", "ErrorResponseBase")
    statuses = defaultdict(int)
    for status, response in cluster.sent:
        assert not spec.errors(bulk_schema if status == 200 else error_schema, response)
        for item in response.get("items", []):
            statuses[next(iter(item.values()))["status"]] += 1
    assert {200, 201, 400, 404, 429, 503} <= set(statuses) | {s for s, _ in cluster.sent}


def _doc(doc_id: str) -> AssetDocument:
    return AssetDocument(
        id=doc_id,
        uri=f"file:///lib/{doc_id}.jpg",
        sha256="0" * 64,
        fingerprint="1" * 64,
        width=10,
        height=10,
        format="JPEG",
        embedding=[0.5] * DIM,
        model="test",
        model_version="1",
    )
