"""End to end on the real OpenSearch node (tests/nodes.py), as a user runs it: the `lookalike`
CLI with ``LOOKALIKE_STORE=opensearch`` gives the same top hits as on the embedded store, and
`lookalike serve` answers from the node. (The web page's Chromium test and the DAGs' runs on
the node are in test_web.py and test_dags.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import CAT_COPIES, stem
from typer.testing import CliRunner

from lookalike_cli import app
from pipeline.settings import get_settings

pytestmark = pytest.mark.slow
TABLE = "e2e"


def invoke(env: dict[str, str], *args: str, code: int = 0) -> dict:
    """One `lookalike ... --json` call with these settings (exit code ``code``); its JSON."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, [*args, "--json"])
        finally:
            get_settings.cache_clear()
    assert result.exit_code == code, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def stores(opensearch_node, sample_manifest: Path, embedder, tmp_path_factory) -> dict:
    """The sample library ingested by `lookalike ingest` into OpenSearch and into an
    embedded store; the settings of each as environment variables."""
    node_env = {
        **opensearch_node.env(),
        "LOOKALIKE_TABLE": TABLE,
        "LOOKALIKE_HOME": str(tmp_path_factory.mktemp("e2e-os")),
    }
    embedded_env = {"LOOKALIKE_HOME": str(tmp_path_factory.mktemp("e2e-embedded"))}
    for env in (embedded_env, node_env):
        # The model cache of the session: converted once, read by every home.
        Path(env["LOOKALIKE_HOME"], "models").symlink_to(get_settings().model_dir)
    _drop(opensearch_node)
    source = str(sample_manifest.parent)
    summaries = {
        # Exit code 3: finished, with the sample library's three broken files quarantined.
        name: invoke(env, "ingest", source, "--manifest", str(sample_manifest), code=3)
        for name, env in (("embedded", embedded_env), ("opensearch", node_env))
    }
    yield {"opensearch": node_env, "embedded": embedded_env, "summaries": summaries}
    _drop(opensearch_node)


def _drop(node) -> None:
    from opensearchpy import OpenSearch

    client = OpenSearch(node.url)
    names = list(client.indices.get(index=f"{TABLE}*"))
    if names:
        client.indices.delete(index=",".join(names))


def test_ingest_writes_the_same_library(stores: dict) -> None:
    embedded, cluster = stores["summaries"]["embedded"], stores["summaries"]["opensearch"]
    assert cluster["new"] == embedded["new"] > 30
    assert sorted(q["uri"] for q in cluster["quarantined"]) == sorted(
        q["uri"] for q in embedded["quarantined"]
    )
    listed = invoke(stores["opensearch"], "index", "list")
    assert listed["alias"] == TABLE
    [index] = listed["indexes"]
    assert index["active"] and index["count"] == cluster["new"]
    quarantined = invoke(stores["opensearch"], "quarantine")["quarantined"]
    assert len(quarantined) == 3 and all(q["reason"] for q in quarantined)
    assert invoke(stores["opensearch"], "runs")["runs"][0]["run_id"] == cluster["run_id"]


@pytest.mark.parametrize(
    "args",
    [
        ("originals/chelsea.jpg", "-k", "8"),
        ("originals/coffee.jpg", "-k", "8", "--label", "Espresso:50"),
        ("--text", "galaxies"),
        ("originals/astronaut.jpg", "--text", "space", "-k", "6"),
        ("originals/coffee.jpg", "--text", "espresso", "--hybrid", "linear", "-k", "6"),
        ("--text", "cat", "--meta", "variant=flip"),
    ],
)
def test_search_gives_the_same_top_hits_as_the_embedded_store(
    stores: dict, sample_manifest: Path, args: tuple[str, ...]
) -> None:
    args = tuple(str(sample_manifest.parent / a) if a.startswith("originals/") else a for a in args)
    got = invoke(stores["opensearch"], "search", *args)["hits"]
    expected = invoke(stores["embedded"], "search", *args)["hits"]
    assert got, args
    assert [stem(h["uri"]) for h in got] == [stem(h["uri"]) for h in expected], args
    for hit, other in zip(got, expected, strict=True):
        mine, theirs = hit["vector_score"], other["vector_score"]
        assert (mine is None) == (theirs is None)
        assert mine is None or mine == pytest.approx(theirs, abs=1e-4)


def test_the_cat_finds_its_copies_on_the_node(stores: dict, sample_manifest: Path) -> None:
    cat = sample_manifest.parent / "originals" / "chelsea.jpg"
    hits = invoke(stores["opensearch"], "search", str(cat), "-k", "6")["hits"]
    assert {stem(h["uri"]) for h in hits} == CAT_COPIES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(stores: dict) -> Iterator[str]:
    """`lookalike serve` in its own process, against the node."""
    port = _free_port()
    lookalike = Path(sys.executable).with_name("lookalike")
    process = subprocess.Popen(
        [str(lookalike), "serve", "--port", str(port)],
        env={**os.environ, **stores["opensearch"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "lookalike serve did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_answers_from_the_node(served: str, stores: dict, sample_manifest: Path) -> None:
    cat = sample_manifest.parent / "originals" / "chelsea.jpg"
    with cat.open("rb") as image:
        response = httpx.post(f"{served}/search", files={"image": image}, data={"k": "6"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert {stem(h["document"]["uri"]) for h in hits} == CAT_COPIES
    expected = invoke(stores["embedded"], "search", str(cat), "-k", "6")["hits"]
    assert [h["id"] for h in hits] == [h["id"] for h in expected]
    asset = httpx.get(f"{served}/assets/{hits[1]['id']}")
    assert asset.status_code == 200 and asset.json()["id"] == hits[1]["id"]
    labels = httpx.get(f"{served}/labels")
    assert labels.status_code == 200 and "Cat" in json.dumps(labels.json())
    text = httpx.post(f"{served}/search", json={"text": "galaxies", "k": 3})
    assert text.status_code == 200
    assert stem(text.json()["hits"][0]["document"]["uri"]) == "hubble_deep_field"
