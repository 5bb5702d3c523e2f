"""The search API under attack (issue 11): bounded requests, a store that goes away, files
that change under the server, hosts it must not answer, slow clients, huge images.

Each test runs its own app over its own small library (the real model, the real store).
"""

from __future__ import annotations

import io
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from support import serving

from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.settings import Settings
from search_api import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow


@pytest.fixture
def small(tmp_path: Path, sample_manifest: Path, embedder) -> Settings:
    """Settings over a store holding two photos copied into a library of this test's own."""
    library = tmp_path / "library"
    library.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        shutil.copy(sample_manifest.parent / "originals" / name, library / name)
    settings = Settings(
        home=tmp_path / "home", batch_size=4, api_allowed_hosts=["testserver", "127.0.0.1"]
    )
    ingest(library, embedder=embedder, settings=settings)
    return settings


def asset_ids(settings: Settings) -> dict[str, str]:
    """File name -> asset id."""
    with Library.open(settings) as library:
        states = library.index().states()
    return {s.uri.rsplit("/", 1)[-1]: i for i, s in states.items()}


# 11 ------------------------------------------------------------------------------------------
def test_every_string_and_list_a_request_can_carry_is_bounded(small: Settings) -> None:
    """Walk the OpenAPI document: every request string has a maxLength, every array maxItems,
    every map maxProperties, so a request costs work in proportion to a sane size."""
    with TestClient(create_app(small)) as client:
        doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    unbounded: list[str] = []

    def check(node: Any, where: str, seen: frozenset[str] = frozenset()) -> None:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                check(schemas[name], name, seen | {name})
            return
        kind = node.get("type")
        bounded = {"enum", "const", "maxLength"} & set(node) or node.get("format") == "binary"
        if kind == "string" and not bounded:
            unbounded.append(f"{where}: string without maxLength")
        if kind == "array":
            if "maxItems" not in node:
                unbounded.append(f"{where}: array without maxItems")
            check(node.get("items"), f"{where}[]", seen)
        if kind == "object" and isinstance(node.get("additionalProperties"), dict):
            if "maxProperties" not in node:
                unbounded.append(f"{where}: map without maxProperties")
            check(node["additionalProperties"], f"{where}{{}}", seen)
            check(node.get("propertyNames"), f"{where} keys", seen)
        for key, sub in node.get("properties", {}).items():
            check(sub, f"{where}.{key}", seen)
        for sub in node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", []):
            check(sub, where, seen)

    check(schemas["SearchQuery"], "SearchQuery")
    check(schemas["ImageSearchForm"], "ImageSearchForm")
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                check(parameter["schema"], f"{method.upper()} {path} {parameter['name']}")
    assert not unbounded, unbounded


# 12 ------------------------------------------------------------------------------------------
def test_a_store_that_goes_away_gives_503_with_a_plain_reason(small: Settings) -> None:
    ids = asset_ids(small)
    cat = small.home.parent / "library" / "chelsea.jpg"
    with serving(small) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        small.store_dir.rename(small.home / "moved-away")
        responses = [
            http.post("/search", json={"k": 1}),
            http.get(f"/assets/{ids['chelsea.jpg']}"),
            http.post("/search", files={"image": ("c.jpg", cat.read_bytes())}),
            http.get("/labels"),
            http.get("/readyz"),  # the same connection: it was not reset
        ]
    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        body = response.text
        assert "not available" in body
        assert str(small.home) not in body and ".rs" not in body and "lance" not in body
    assert responses[-1].json()["status"] == "not ready"


# 13 ------------------------------------------------------------------------------------------
def test_files_that_moved_or_changed_are_not_served_and_not_named(
    small: Settings, tmp_path: Path
) -> None:
    ids = asset_ids(small)
    library = small.home.parent / "library"
    outside = tmp_path / "outside"
    outside.mkdir()
    with TestClient(create_app(small)) as client:
        (library / "coffee.jpg").rename(outside / "coffee.jpg")
        moved = client.get(f"/assets/{ids['coffee.jpg']}/image")
        assert moved.status_code == 404
        assert "file://" not in moved.text and str(library) not in moved.text
        assert ids["coffee.jpg"] in moved.json()["detail"], "the asset is named"

        # The indexed file is replaced by a link out of the library: served only while the
        # content is the indexed one.
        (library / "coffee.jpg").symlink_to(outside / "coffee.jpg")
        assert client.get(f"/assets/{ids['coffee.jpg']}/image").status_code == 200
        (outside / "secret.jpg").write_bytes(b"\xff\xd8 not the indexed photo")
        (library / "coffee.jpg").unlink()
        (library / "coffee.jpg").symlink_to(outside / "secret.jpg")
        for kind in ("image", "thumbnail"):
            swapped = client.get(f"/assets/{ids['coffee.jpg']}/{kind}")
            assert swapped.status_code == 404, swapped.text
            assert "changed since it was indexed" in swapped.json()["detail"]
            assert str(outside) not in swapped.text
    roots = small.model_copy(update={"api_library_roots": [library, outside]})
    with TestClient(create_app(roots)) as client:
        served = client.get(f"/assets/{ids['coffee.jpg']}/image")
        assert served.status_code == 200, "inside a configured root, a file is served as it is"
        assert served.content == (outside / "secret.jpg").read_bytes()


# 14 ------------------------------------------------------------------------------------------
def test_security_headers_allowed_hosts_and_unknown_filter_keys(small: Settings) -> None:
    with TestClient(create_app(small)) as client:
        page = client.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        for response in (page, client.post("/search", json={"k": 1})):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        rebound = client.get("/healthz", headers={"Host": "attacker.example"})
        assert rebound.status_code == 400
        unknown = client.post(
            "/search", json={"labels": {"all": [{"name": "Cat", "min_conf": 80}]}}
        )
        assert unknown.status_code == 422 and "min_conf" in unknown.json()["message"]
    with serving(small.model_copy(update={"api_allowed_hosts": ["127.0.0.1"]})) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_a_client_that_never_finishes_its_headers_is_disconnected(small: Settings) -> None:
    patient = small.model_copy(update={"api_header_timeout_s": 0.5})
    with serving(patient) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            started = time.monotonic()
            assert slow.recv(1024) == b"", "the server closed the connection"
            assert time.monotonic() - started < 10
        assert httpx.get(f"{url}/healthz").status_code == 200, "others are served as before"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_huge_image_leaves_no_memory_behind(small: Settings) -> None:
    """An 88-megapixel PNG, just under the pixel limit, uploaded as a query: decoding it
    takes ~700 MB for a moment; after the request the server must not keep it."""
    side = 9400  # 88.4 Mpx
    image = Image.new("RGB", (side, side), (10, 200, 30))
    image.paste((200, 10, 10), (0, 0, 3000, 3000))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    del image
    big = buf.getvalue()
    with TestClient(create_app(small)) as client:
        client.post("/search", json={"k": 1})
        before = _rss()
        for _ in range(2):
            response = client.post("/search", files={"image": ("big.png", big)})
            assert response.status_code == 200, response.text
        kept = _rss() - before
    assert kept < 100 * 2**20, f"{kept / 2**20:.0f} MiB kept after the requests"
