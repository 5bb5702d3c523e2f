"""The search API over HTTP, with the real model on the real sample library (embedded store).

Requests go through FastAPI's TestClient, which runs the app's lifespan (model loaded at
start-up) and every middleware, exactly as uvicorn would, without opening a port.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from pydantic import SecretStr
from support import CAT_COPIES, ingest_samples, serving, stem

from pipeline import maps, tags
from pipeline.backbones import DEFAULT_MODEL, REGISTRY
from pipeline.discover import uri_to_path
from pipeline.embed import get_embedder, model_path, onnx_path
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.search import image_vector
from pipeline.settings import Settings, get_settings
from search_api import create_app
from search_api.media import MediaUnavailable, image_bytes, image_file

with warnings.catch_warnings():
    # Starlette 1.10 would rather drive its test client with httpx2; httpx works the same.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

API_KEY = "s3cret-key"


def stems(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [stem(hit["document"]["uri"]) for hit in response.json()["hits"]]


@pytest.fixture(scope="module")
def home(sample_manifest: Path, embedder, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose embedded store holds the sample library (ingested once per module)."""
    # TestClient's requests name the host "testserver": allowed like the loopback names.
    settings = Settings(
        home=tmp_path_factory.mktemp("api_home"),
        batch_size=8,
        api_allowed_hosts=["testserver", "127.0.0.1"],
    )
    with Library.open(settings) as library:
        ingest_samples(library, sample_manifest, embedder)
    return settings


@pytest.fixture(scope="module")
def client(home: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(home)) as client:
        yield client


def configured(home: Settings, **changes: Any) -> TestClient:
    """A client of an app started with some settings changed."""
    return TestClient(create_app(home.model_copy(update=changes)))


@pytest.fixture(scope="module")
def samples(sample_manifest: Path) -> Path:
    return sample_manifest.parent


def upload(
    client: TestClient, path: Path, data: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    return client.post(
        "/search",
        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
        data=data,
        **kwargs,
    )


def id_of(client: TestClient, name: str) -> str:
    hits = client.post("/search", json={"k": 100}).json()["hits"]
    return next(h["id"] for h in hits if stem(h["document"]["uri"]) == name)


# -- search ----------------------------------------------------------------------------------


def test_the_cat_photo_finds_its_copies_first(client: TestClient, samples: Path) -> None:
    response = upload(client, samples / "originals" / "chelsea.jpg", {"k": "10"})
    found = stems(response)
    assert set(found[:6]) == CAT_COPIES, found
    body = response.json()
    hits = body["hits"]
    assert hits[6]["score"] < min(h["score"] for h in hits[:6])
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert [h["rank"] for h in hits] == list(range(1, 11))
    assert all(h["vector_score"] == h["score"] and h["text_score"] is None for h in hits)
    assert body["query"] == "image" and body["next_offset"] == 10
    assert body["model"] == "mobilenet_v2-imagenet@1"
    assert "embedding" not in hits[0]["document"]


def test_asset_and_vector_queries_match_the_image_query(
    client: TestClient, samples: Path, embedder
) -> None:
    cat = id_of(client, "chelsea")
    by_asset = client.post("/search", json={"asset_id": cat, "k": 5})
    assert set(stems(by_asset)) == CAT_COPIES - {"chelsea"}
    assert by_asset.json()["query"] == "asset"
    similar = client.get(f"/assets/{cat}/similar", params={"k": 5})
    assert stems(similar) == stems(by_asset)
    vector = image_vector((samples / "originals" / "chelsea.jpg").read_bytes(), embedder)
    # Any scale works: the API normalises the query vector, as the stores expect.
    by_vector = client.post("/search", json={"vector": [3 * x for x in vector], "k": 6})
    assert set(stems(by_vector)) == CAT_COPIES
    assert by_vector.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_a_part_of_an_image_and_regions_say_where_they_matched(
    client: TestClient, samples: Path
) -> None:
    """The box is cut out of the upload (or of an indexed asset's file) before it is embedded;
    region search names the region that matched on each hit, with its box; a box too small
    for the model's grid searches the whole image and says so."""
    astronaut = samples / "originals" / "astronaut.jpg"
    face = {"box": "0.55,0.05,0.4,0.5", "k": "3"}
    whole = upload(client, astronaut, {"k": "3"}).json()["hits"]
    part = upload(client, astronaut, face).json()
    assert part["note"] is None
    assert part["hits"][0]["score"] < whole[0]["score"] - 0.1, "the part is not the whole photo"
    assert all(h["region"] is None for h in part["hits"]), "regions are off by default"
    found = upload(client, astronaut, {**face, "regions": "library"}).json()["hits"]
    assert stem(found[0]["document"]["uri"]) == "astronaut"
    assert found[0]["score"] > part["hits"][0]["score"], "a region of the photo fits the part"
    x, y, w, h = found[0]["region"]["box"]
    assert (
        found[0]["region"]["side"] == "library" and x >= 0 and x + w <= 1 and y >= 0 and y + h <= 1
    )
    assert "regions" not in found[0]["document"] and "embedding" not in found[0]["document"]
    tiny = upload(client, astronaut, {"box": "0.5,0.5,0.01,0.01"}).json()
    assert "searched with the whole image" in tiny["note"]
    assert [h["id"] for h in tiny["hits"]][:3] == [h["id"] for h in whole]
    astronaut_id = id_of(client, "astronaut")
    by_asset = {"asset_id": astronaut_id, "box": [0.55, 0.05, 0.4, 0.5], "regions": "both", "k": 3}
    hits = client.post("/search", json=by_asset).json()["hits"]
    assert astronaut_id not in [h["id"] for h in hits], "the asset itself is left out"
    assert stem(hits[0]["document"]["uri"]).startswith("astronaut"), "its copies come first"
    params = {"box": "0.55,0.05,0.4,0.5", "regions": "both", "k": 3}
    similar = client.get(f"/assets/{astronaut_id}/similar", params=params).json()["hits"]
    assert [(h["id"], round(h["score"], 4)) for h in similar] == [
        (h["id"], round(h["score"], 4)) for h in hits
    ]


def test_label_filters_change_the_results(client: TestClient, samples: Path) -> None:
    coffee = samples / "originals" / "coffee.jpg"
    unfiltered = stems(upload(client, coffee, {"k": "8"}))
    assert unfiltered[0] == "coffee" and not set(unfiltered[:5]) & CAT_COPIES
    cats = upload(client, coffee, {"k": "8", "labels_all": "Cat:50"})
    assert set(stems(cats)) == CAT_COPIES
    assert all(
        [(m["name"], m["confidence"] >= 50) for m in h["matched_labels"]] == [("Cat", True)]
        for h in cats.json()["hits"]
    )
    coffee_id = id_of(client, "coffee")
    no_cats = client.post(
        "/search",
        json={"asset_id": coffee_id, "k": 50, "labels": {"none": [{"name": "Cat"}]}},
    )
    assert stems(no_cats) and not set(stems(no_cats)) & CAT_COPIES
    either = client.post(
        "/search",
        json={
            "asset_id": coffee_id,
            "k": 50,
            "labels": {
                "any": [
                    {"name": "Cat", "min_confidence": 50},
                    {"name": "Espresso", "min_confidence": 50},
                ]
            },
        },
    )
    assert all(s in CAT_COPIES or s.startswith("coffee") for s in stems(either))
    assert set(stems(either)) >= CAT_COPIES
    strict = client.get(
        f"/assets/{coffee_id}/similar", params={"labels_all": "Cat:99.5", "k": 50}
    ).json()["hits"]
    assert len(strict) < len(CAT_COPIES)
    assert all(h["matched_labels"][0]["confidence"] >= 99.5 for h in strict)


def test_text_metadata_and_hybrid_weights_change_the_results(
    client: TestClient, samples: Path
) -> None:
    text = client.post("/search", json={"text": "espresso cup", "k": 5})
    assert stems(text)[0].startswith("coffee") and text.json()["query"] == "text"
    first = text.json()["hits"][0]
    assert first["text_score"] > 0 and first["vector_score"] is None
    cat = samples / "originals" / "chelsea.jpg"
    image_led = upload(client, cat, {"text": "coffee", "hybrid": "linear", "vector_weight": "1"})
    text_led = upload(client, cat, {"text": "coffee", "hybrid": "linear", "vector_weight": "0.1"})
    assert stems(image_led)[0] in CAT_COPIES
    assert stems(text_led)[0].startswith("coffee")
    assert text_led.json()["hits"][0]["text_score"] > 0
    learn = client.post("/search", json={"metadata": {"source": ["scikit-learn"]}, "k": 50})
    assert set(stems(learn)) == {"china", "flower"}
    cat_id = id_of(client, "chelsea")
    filtered = client.get(
        f"/assets/{cat_id}/similar", params=[("metadata", "source=scikit-learn"), ("k", "5")]
    )
    assert set(stems(filtered)) == {"china", "flower"}


def test_pagination_and_min_score(client: TestClient, samples: Path) -> None:
    pages = [client.post("/search", json={"k": 5, "offset": o}).json() for o in (0, 5)]
    whole = client.post("/search", json={"k": 10}).json()
    assert [h["id"] for p in pages for h in p["hits"]] == [h["id"] for h in whole["hits"]]
    assert pages[0]["next_offset"] == 5 and pages[1]["hits"][0]["rank"] == 6
    last = client.post("/search", json={"k": 100}).json()
    assert last["next_offset"] is None and len(last["hits"]) == last["total_candidates"]
    close = upload(client, samples / "originals" / "chelsea.jpg", {"min_score": "0.9", "k": "20"})
    assert set(stems(close)) == CAT_COPIES - {"chelsea_crop"}
    assert all(h["score"] >= 0.9 for h in close.json()["hits"])


# -- assets, images, labels, probes ------------------------------------------------------------


def test_asset_image_and_cached_thumbnail(
    client: TestClient, home: Settings, samples: Path
) -> None:
    cat = id_of(client, "chelsea")
    asset = client.get(f"/assets/{cat}").json()
    assert asset["title"] == "Chelsea the cat" and "embedding" not in asset
    assert {"Cat", "Animal"} <= {lab["name"] for lab in asset["labels"]}
    image = client.get(asset["image_url"])
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == (samples / "originals" / "chelsea.jpg").read_bytes()

    thumb = client.get(asset["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert max(im.size) == home.api_thumbnail_size
    cached = list(home.thumbnail_dir.glob(f"{cat}-*.jpg"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = client.get(asset["thumbnail_url"])
    assert again.content == thumb.content and cached[0].stat().st_mtime_ns == mtime
    etag = thumb.headers["etag"]
    assert client.get(asset["thumbnail_url"], headers={"If-None-Match": etag}).status_code == 304
    metrics = client.get("/metrics").text
    assert 'lookalike_thumbnails_total{cache="hit"}' in metrics


def test_only_local_files_of_indexed_assets_are_served(client: TestClient, home: Settings) -> None:
    with Library.open(home) as library:
        coffee = id_of(client, "coffee")
        doc = library.index().get([coffee])[coffee]
    assert image_bytes(doc, home) == uri_to_path(doc.uri).read_bytes()
    for uri in ("https://example.org/coffee.jpg", "file://otherhost/coffee.jpg"):
        with pytest.raises(MediaUnavailable, match="not a local file"):
            image_file(doc.model_copy(update={"uri": uri}), home)
    with pytest.raises(MediaUnavailable, match="is not available: file not found"):
        image_file(doc.model_copy(update={"uri": "file:///no/such/file.jpg"}), home)
    for path in ("/assets/..%2F..%2Fetc%2Fpasswd/image", "/assets/../../etc/passwd"):
        assert client.get(path).status_code in (404, 422)


def test_label_counts_for_facets(client: TestClient) -> None:
    body = client.get("/labels", params={"min_confidence": 50, "limit": 20}).json()
    counts = {lab["name"]: lab["count"] for lab in body["labels"]}
    assert counts["Cat"] == len(CAT_COPIES)
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    assert len(body["labels"]) <= 20 and body["min_confidence"] == 50


def test_judgements_train_a_tag_that_filters_searches(
    client: TestClient, home: Settings, samples: Path
) -> None:
    """Thumbs on the web page: judgements posted per asset, then `lookalike tags train` (here
    the same core call) learns from them; the tag filters JSON and upload searches alike."""
    assert client.get("/tags").json() == {"tags": []}
    every = client.post("/search", json={"k": 100}).json()["hits"]
    for hit in every:
        answer = client.post(
            f"/assets/{hit['id']}/judgements",
            json={"tag": "kitty", "judge": "chelsea" in hit["document"]["uri"]},
        )
        assert answer.status_code == 201, answer.text
    assert answer.json()["count"] == len(every)
    cat = id_of(client, "chelsea")
    again = client.post(f"/assets/{cat}/judgements", json={"tag": "kitty", "judge": 1})
    assert again.json()["count"] == len(every), "a new judgement replaces the asset's last one"
    [mine] = client.get("/judgements", params={"asset_id": cat}).json()["judgements"]
    assert len(client.get("/judgements", params={"tag": "kitty"}).json()["judgements"]) == len(
        every
    )
    assert (mine["tag"], mine["judge"], mine["source"]) == ("kitty", 1, "api")
    [untrained] = client.get("/tags").json()["tags"]
    assert (untrained["name"], untrained["version"], untrained["judgements"]) == (
        "kitty",
        None,
        len(every),
    )
    assert client.get("/tags/kitty/roc.png").status_code == 404

    with Library.open(home) as library:
        tags.train("kitty", library.judgements.judgements("kitty"), library.index(), home)
        tags.apply(library)
    try:
        [info] = client.get("/tags").json()["tags"]
        cats = {h["id"] for h in every if "chelsea" in h["document"]["uri"]}
        assert (info["version"], info["passing"], info["stale"]) == (1, len(cats), False)
        assert info["auc"] >= 0.95 and info["threshold"] > 0
        assert info["roc"] == "/tags/kitty/roc.png" and untrained["roc"] is None
        roc = client.get("/tags/kitty/roc.png")
        assert roc.status_code == 200 and roc.headers["content-type"] == "image/png"
        hits = client.post("/search", json={"tags": ["kitty"], "k": 100}).json()["hits"]
        assert {h["id"] for h in hits} == cats
        assert all(h["document"]["tags"]["kitty"]["passed"] for h in hits)
        image = (samples / "originals" / "coffee.jpg").read_bytes()
        upload = client.post(
            "/search", files={"image": ("c.jpg", image)}, data={"tags_none": "kitty", "k": "50"}
        )
        assert upload.status_code == 200 and not {h["id"] for h in upload.json()["hits"]} & cats
    finally:
        with Library.open(home) as library:
            tags.remove(library, "kitty")
            tags.delete("kitty", home)
            library.judgements.remove("kitty")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tag": "Kitty", "judge": 1}, "body.tag"),
        ({"tag": "title", "judge": 1}, "the name of a document field"),
        ({"tag": "kitty", "judge": 2}, "body.judge"),
        ({"tag": "kitty"}, "body.judge"),
        ({"tag": "kitty", "judge": 1, "why": "cute"}, "body.why"),
    ],
)
def test_bad_judgements_get_422_and_unknown_assets_404(
    client: TestClient, home: Settings, body: dict[str, Any], message: str
) -> None:
    response = client.post(f"/assets/{id_of(client, 'chelsea')}/judgements", json=body)
    assert response.status_code == 422 and message in response.json()["message"], response.text
    missing = client.post(f"/assets/{'0' * 32}/judgements", json={"tag": "kitty", "judge": 1})
    assert missing.status_code == 404 and "no indexed asset" in missing.json()["detail"]
    with Library.open(home) as library:
        assert library.judgements.judgements() == [], "nothing was recorded"


def test_the_library_map_is_served_once_computed(client: TestClient, home: Settings) -> None:
    missing = client.get("/map")
    assert missing.status_code == 404 and "lookalike map" in missing.json()["detail"]
    with Library.open(home) as library:
        path = maps.save_map(maps.build_map(library), home)
    try:
        body = client.get("/map").json()
        assert body["model"] == "mobilenet_v2-imagenet@1" and len(body["points"]) == body["assets"]
        point = body["points"][0]
        assert 0 <= point["x"] <= 1 and 0 <= point["y"] <= 1 and point["title"]
    finally:
        path.unlink()


def test_probes_and_metrics(client: TestClient, home: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "mobilenet_v2-imagenet@1"
    assert ready["dimension"] == 1280
    with Library.open(home) as library:
        assert ready["documents"] == library.index().count()
    client.post("/search", json={"k": 1})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'lookalike_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert (
        'lookalike_model_info{backend="onnx",model="mobilenet_v2-imagenet@1",store="embedded"} 1.0'
        in text
    )
    assert "lookalike_query_embedding_seconds_count" in text
    assert "process_resident_memory_bytes" in text


def test_concurrent_image_queries_are_embedded_together_and_answered_alike(
    client: TestClient, home: Settings, samples: Path
) -> None:
    """Eight uploads at once share model calls (the batch-size histogram shows it) and each
    gets the answer it gets alone."""
    photos = sorted(p for p in (samples / "originals").glob("*.jpg"))[:8]
    alone = {p.name: [h["id"] for h in upload(client, p).json()["hits"]] for p in photos}
    with configured(home, api_batch_wait_ms=500) as batched:
        start = threading.Barrier(len(photos))

        def query(path: Path) -> list[str]:
            start.wait()
            response = upload(batched, path)
            assert response.status_code == 200, response.text
            return [h["id"] for h in response.json()["hits"]]

        with ThreadPoolExecutor(len(photos)) as pool:
            together = dict(zip([p.name for p in photos], pool.map(query, photos), strict=True))
        text = batched.get("/metrics").text
    assert together == alone
    sizes = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("lookalike_query_batch_size_")
    }
    # (the start-up warm-up call goes around the batcher: only the queries are counted)
    assert sizes["lookalike_query_batch_size_sum"] == len(photos)
    assert sizes["lookalike_query_batch_size_count"] < len(photos)


def test_the_web_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>Lookalike</title>" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_openapi_documents_both_bodies_with_examples(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    body_examples = body["application/json"]["examples"].values()
    assert body_examples
    schemas = doc["components"]["schemas"]
    assert "image" in schemas["ImageSearchForm"]["required"]
    assert {
        "asset_id",
        "vector",
        "labels",
        "metadata",
        "k",
        "offset",
        "min_score",
        "hybrid",
    } <= set(schemas["SearchQuery"]["properties"])
    assert "securitySchemes" not in doc["components"], "no key configured: nothing to send"
    # Every example in the document is valid against the schema it illustrates.
    examples = [
        (schemas[name], example)
        for name in ("SearchQuery", "SearchResult", "LabelCounts", "Readiness")
        for example in schemas[name]["examples"]
    ]
    examples += [(body["application/json"]["schema"], e["value"]) for e in body_examples]
    assert len(examples) >= 8
    for schema, example in examples:
        # Refs point into the document's components: validate with them at the root.
        jsonschema.validate(example, {**schema, "components": doc["components"]})
    paths = set(doc["paths"])
    assert {
        "/search",
        "/assets/{asset_id}",
        "/assets/{asset_id}/similar",
        "/assets/{asset_id}/image",
        "/assets/{asset_id}/thumbnail",
        "/labels",
        "/tags",
        "/tags/{name}/roc.png",
        "/assets/{asset_id}/judgements",
        "/judgements",
        "/map",
        "/healthz",
        "/readyz",
        "/metrics",
    } == paths


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_args", "status", "message"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart"),
        ({"files": {"image": ("a.png", b"text, not pixels")}}, 415, "not an image"),
        ({"files": {"image": ("a.jpg", b"")}}, 415, "empty file"),
        ({"broken": "truncated.jpg"}, 415, "truncated"),
        ({"files": {"k": (None, "3")}}, 422, "body.image"),
        ({"files": {"k": ("k.jpg", b"3")}}, 422, "body.k: expected a text field"),
        ({"image": True, "files": {"extra": ("x.jpg", b"x")}}, 400, "Too many files"),
        ({"image": True, "data": {"labels_all": "Cat:lots"}}, 422, "body.labels_all.0"),
        ({"image": True, "data": {"metadata": "no-equals"}}, 422, "body.metadata.0"),
        ({"image": True, "data": {"k": "many"}}, 422, "body.k"),
        ({"image": True, "data": {"colour": "red"}}, 422, "body.colour"),
        ({"json": {"k": 0}}, 422, "body.k"),
        ({"json": {"k": 101}}, 422, "body.k"),
        ({"json": {"hybrid": "max"}}, 422, "body.hybrid"),
        ({"json": {"vector": [1.0, 2.0]}}, 422, "body.vector: vector has 2 dimensions"),
        ({"json": {"vector": [0.0] * 1280}}, 422, "body.vector: vector must not be all zeros"),
        ({"json": {"asset_id": "abc", "vector": [1.0]}}, 422, "not both"),
        ({"json": {"asset_id": "../etc"}}, 422, "body.asset_id"),
        (
            {"json": {"labels": {"all": [{"name": "Cat", "min_confidence": 101}]}}},
            422,
            "body.labels.all.0.min_confidence",
        ),
        (
            {"json": {"labels": {"all": [{"name": "Cat", "min_confidence": False}]}}},
            422,
            "body.labels.all.0.min_confidence",
        ),
        ({"json": {"top_k": 5}}, 422, "body.top_k: Extra inputs are not permitted"),
        (
            {"json": {"labels": {"all": [{"name": "Cat", "confidence": 80}]}}},
            422,
            "body.labels.all.0.confidence: Extra inputs are not permitted",
        ),
        (
            {"json": {"labels": {"any": [{"name": "x" * 100_000}] * 20}}},
            422,
            "body.labels.any.0.name: String should have at most 100 characters",
        ),
        (
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            422,
            "Invalid JSON",
        ),
        ({"json": {"asset_id": "0" * 32}}, 404, "no indexed asset"),
        ({"json": {"asset_id": "0" * 32, "box": [0.5, 0.5, 0.6, 0.1]}}, 422, "x + width <= 1"),
        ({"json": {"asset_id": "0" * 32, "box": [0.1, 0.1, 0, 0.5]}}, 422, "(no area)"),
        ({"json": {"asset_id": "0" * 32, "box": [0.1, 0.1, 0.5]}}, 422, "body.box"),
        ({"json": {"box": [0.1, 0.1, 0.5, 0.5]}}, 422, "give it with an asset_id"),
        ({"json": {"regions": "sideways"}}, 422, "body.regions"),
        ({"image": True, "data": {"box": "1,2,3"}}, 422, "expected four numbers"),
        ({"image": True, "data": {"box": "-0.1,0,0.5,0.5"}}, 422, "x >= 0"),
    ],
)
def test_search_errors_have_a_status_and_a_message(
    client: TestClient, samples: Path, request_args: dict[str, Any], status: int, message: str
) -> None:
    args = dict(request_args)
    if args.pop("image", False):
        cat = (samples / "originals" / "chelsea.jpg").read_bytes()
        args["files"] = {"image": ("c.jpg", cat), **args.get("files", {})}
    if broken := args.pop("broken", None):
        args["files"] = {"image": (broken, (samples / "broken" / broken).read_bytes())}
    response = client.post("/search", **args)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in (body["message"] if status == 422 else body["detail"]), body


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/assets/{missing}", 404, "no indexed asset"),
        ("/assets/{missing}/similar", 404, "no indexed asset"),
        ("/assets/{missing}/image", 404, "no indexed asset"),
        ("/assets/{missing}/thumbnail", 404, "no indexed asset"),
        ("/assets/not'an'id", 422, "path.asset_id"),
        ("/assets/{cat}/similar?k=101", 422, "query.k"),
        ("/assets/{cat}/similar?labels_all=Cat:lots", 422, "query.labels_all.0"),
        ("/assets/{cat}/similar?labels_none=Cat:101", 422, "query.labels_none.0"),
        ("/assets/{cat}/similar?vector_weight=2", 422, "query.vector_weight"),
        ("/assets/{cat}/similar?colour=red", 422, "query.colour"),
        ("/labels?min_confidence=101", 422, "query.min_confidence"),
        ("/labels?limit=0", 422, "query.limit"),
    ],
)
def test_get_errors_have_a_status_and_a_message(
    client: TestClient, path: str, status: int, message: str
) -> None:
    url = path.format(missing="0" * 32, cat=id_of(client, "chelsea"))
    response = client.get(url)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in (body["message"] if status == 422 else body["detail"]), body


def test_uploads_over_the_limit_get_413(home: Settings) -> None:
    limit = 64 * 1024
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > 2 * limit + 64 * 1024
    just_over = big[: limit + 1000]  # within the multipart allowance, over the file limit
    with configured(home, api_max_upload_bytes=limit) as client:
        responses = [
            client.post("/search", files={"image": ("big.png", big)}),  # Content-Length
            client.post(  # chunked: no length declared, counted as it arrives
                "/search",
                content=(big[i : i + 8192] for i in range(0, len(big), 8192)),
                headers={"content-type": "multipart/form-data; boundary=x"},
            ),
            client.post("/search", files={"image": ("big.png", just_over)}),
        ]
        for response in responses:
            assert response.status_code == 413, response.text
            assert "LOOKALIKE_API_MAX_UPLOAD_BYTES" in response.json()["detail"]
        assert client.get("/readyz").status_code == 200, "the server is fine afterwards"


def test_api_key_is_required_when_configured(home: Settings, samples: Path) -> None:
    with configured(home, api_key=SecretStr(API_KEY)) as client:
        missing = client.post("/search", json={"k": 1})
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "X-API-Key"
        wrong = client.get("/labels", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert client.post("/search", json={"k": 1}, headers={"X-API-Key": API_KEY}).is_success
        client.cookies.set("lookalike_api_key", API_KEY)
        assert client.get("/labels").is_success, "the web page's cookie works for <img> tags"
        client.cookies.clear()
        for open_path in ("/", "/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path
        schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert schemes["APIKeyHeader"]["name"] == "X-API-Key"


def test_cors_only_for_configured_origins(home: Settings, client: TestClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    }
    with configured(home, api_cors_origins=["https://app.example.org"]) as cors:
        allowed = cors.options(
            "/search", headers={"Origin": "https://app.example.org", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.org"
        other = cors.options("/search", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        error = cors.post("/search", json={"k": 0}, headers={"Origin": "https://app.example.org"})
        assert error.status_code == 422, "a browser client can read why its request failed"
        assert error.headers["access-control-allow-origin"] == "https://app.example.org"
    plain = client.post("/search", json={"k": 1}, headers={"Origin": "https://app.example.org"})
    assert "access-control-allow-origin" not in plain.headers, "same origin only by default"


def test_slow_requests_time_out_with_504(home: Settings, samples: Path) -> None:
    with configured(home, api_request_timeout_s=0.001) as client:
        response = upload(client, samples / "originals" / "chelsea.jpg")
        assert response.status_code == 504
        assert "longer than 0.001 s" in response.json()["detail"]


def test_a_model_rollout_is_picked_up_without_restart(
    samples: Path, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias moves to another model version's index while the app runs: the next request
    is answered from the new index with the new model; an unusable target gives 503."""
    new = dataclasses.replace(REGISTRY[DEFAULT_MODEL], name="mobilenet_v2-imagenet-rollout")
    monkeypatch.setitem(REGISTRY, new.name, new)
    # The same network under a new name: copy the converted model instead of converting again.
    model_dir = get_settings().model_dir
    shutil.copy(model_path(embedder.spec, model_dir), model_path(new, model_dir))
    shutil.copy(onnx_path(embedder.spec, model_dir), onnx_path(new, model_dir))
    settings = Settings(
        home=tmp_path / "home",
        batch_size=8,
        api_alias_check_s=0,
        api_allowed_hosts=["testserver", "127.0.0.1"],
    )
    library = Library.open(settings)
    source = samples / "copies"
    ingest(source, library=library, embedder=embedder, settings=settings)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["model"] == embedder.model_id
        ingest(source, library=library, embedder=get_embedder(new.name), settings=settings)
        library.catalogue.switch(new.model_id)
        cat = upload(client, samples / "originals" / "chelsea.jpg", {"k": "3"})
        assert cat.json()["model"] == new.model_id
        assert set(stems(cat)) <= CAT_COPIES
        assert client.get("/readyz").json()["model"] == new.model_id
        assert "lookalike_model_reloads_total 1.0" in client.get("/metrics").text

        library.index("unregistered-model@1").ensure(embedder.spec.dim)
        library.catalogue.switch("unregistered-model@1")
        broken = client.get("/readyz")
        assert broken.status_code == 503 and "unregistered-model" in broken.json()["reason"]
        assert client.post("/search", json={"k": 1}).status_code == 503
        library.catalogue.switch(embedder.model_id)  # roll back
        assert client.get("/readyz").json()["model"] == embedder.model_id
    library.close()


# -- the OpenAPI contract --------------------------------------------------------------------------
# schemathesis reads the document the app generates (building an app loads nothing: the model
# and the store are opened by the lifespan) and sends its cases over loopback to the real app,
# served by uvicorn on the module's ingested store, once as shipped and once with a key.


def _contract(api_key: str | None) -> schemathesis.BaseSchema:
    document = create_app(Settings(api_key=api_key)).openapi()
    config: dict[str, Any] = {"phases": {"stateful": {"enabled": False}}}
    if api_key:
        config["auth"] = {"openapi": {"APIKeyHeader": {"api_key": api_key}}}
    return schemathesis.openapi.from_dict(document, config=schemathesis.Config.from_dict(config))


open_contract = _contract(None)
keyed_contract = _contract(API_KEY)


@pytest.fixture(scope="module")
def open_server(home: Settings) -> Iterator[str]:
    with serving(home) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(home: Settings) -> Iterator[str]:
    with serving(home.model_copy(update={"api_key": SecretStr(API_KEY)})) as url:
        yield url


def check_contract(case: schemathesis.Case, base_url: str) -> None:
    """No 5xx, responses as documented (status, content type, schema, headers), invalid input
    rejected, auth enforced. Not checked: that any valid-looking input succeeds (a random asset
    id is well-formed but unknown: 404; random bytes are no image: 415). Multipart fields are
    all text, so schemathesis' "wrong type" negatives (null, numbers) are valid strings there."""
    excluded = [schemathesis.checks.positive_data_acceptance]
    if case.media_type == "multipart/form-data":
        excluded.append(schemathesis.checks.negative_data_rejection)
    case.call_and_validate(base_url=base_url, excluded_checks=excluded)


CONTRACT_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@open_contract.parametrize()
@CONTRACT_SETTINGS
def test_openapi_contract(case: schemathesis.Case, open_server: str) -> None:
    check_contract(case, open_server)


@keyed_contract.parametrize()
@CONTRACT_SETTINGS
def test_openapi_contract_with_api_key(case: schemathesis.Case, keyed_server: str) -> None:
    check_contract(case, keyed_server)
