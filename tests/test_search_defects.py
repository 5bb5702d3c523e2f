"""The search defects the one ``Searcher`` removes, checked through the HTTP API on the embedded
store and on the real OpenSearch node (tests/nodes.py), so that the same requests prove the
same behaviour whatever the store:

* hybrid results must not depend on ``k`` and ``offset``: the top hit at ``k=1`` is the top of
  ``k=20``, and pages of 5 are one page of 20 cut in four;
* every hit of a linear hybrid search carries its cosine, and its score is the documented
  ``w * cosine + (1 - w) * bm25 / best_bm25``;
* ``total_candidates`` is exact when a label threshold has decimals, and ``next_offset`` is
  null on the last page;
* a quoted phrase, or any other text, never answers 500;
* a metadata filter outside the ``KEY=VALUE`` grammar (``photographer>=m``) is refused.

The library is indexed with the ``lookalike ingest`` command, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import Settings, get_settings
from search_api import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow
TABLE = "defects"


@pytest.fixture(scope="module", params=["embedded", "opensearch"])
def client(
    request: pytest.FixtureRequest, sample_manifest: Path, embedder, tmp_path_factory
) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp(f"defects-{request.param}")
    (home / "models").symlink_to(get_settings().model_dir)  # the session's converted model
    env = {"LOOKALIKE_HOME": str(home), "LOOKALIKE_TABLE": TABLE}
    hosts = ["testserver"]  # the name TestClient's requests give
    if request.param == "embedded":
        settings = Settings(home=home, table=TABLE, api_allowed_hosts=hosts)
    else:
        node = request.getfixturevalue("opensearch_node")
        env |= node.env()
        settings = node.settings(home, table=TABLE, api_allowed_hosts=hosts)
        _drop(node.url)
    lookalike = Path(sys.executable).with_name("lookalike")
    done = subprocess.run(
        [str(lookalike), "ingest", str(sample_manifest.parent), "--manifest", str(sample_manifest)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3, done.stderr  # finished; the three broken files quarantined
    with TestClient(create_app(settings)) as client:
        yield client


def _drop(url: str) -> None:
    from opensearchpy import OpenSearch

    search = OpenSearch(url)
    if names := list(search.indices.get(index=f"{TABLE}*")):
        search.indices.delete(index=",".join(names))


def search(client: TestClient, **body) -> dict:
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def ids(result: dict) -> list[str]:
    return [hit["id"] for hit in result["hits"]]


def asset(client: TestClient, title: str) -> str:
    listing = search(client, k=100)["hits"]
    return next(hit["id"] for hit in listing if hit["document"]["title"] == title)


QUERIES = [
    {"text": "space", "hybrid": "rrf"},
    {"text": "space", "hybrid": "linear"},
    {"text": "cat photo", "hybrid": "rrf", "labels": {"any": [{"name": "Animal"}]}},
    {"text": "coffee cup", "hybrid": "linear", "vector_weight": 0.3},
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q['hybrid']}-{q['text']}")
def test_hybrid_results_do_not_depend_on_k_or_offset(client: TestClient, query: dict) -> None:
    query = {**query, "asset_id": asset(client, "Astronaut portrait")}
    whole = ids(search(client, **query, k=20))
    assert len(whole) >= 15
    assert ids(search(client, **query, k=1)) == whole[:1]
    pages = [ids(search(client, **query, k=5, offset=o)) for o in range(0, len(whole), 5)]
    assert [i for page in pages for i in page] == whole, "page 2 is the rest of page 1's list"


def test_linear_scores_follow_the_documented_formula(client: TestClient) -> None:
    weight = 0.4
    best = search(client, text="space", k=1)["hits"][0]["text_score"]
    result = search(
        client,
        asset_id=asset(client, "Chelsea the cat"),
        text="space",
        hybrid="linear",
        vector_weight=weight,
        k=20,
    )
    for hit in result["hits"]:
        assert hit["vector_score"] is not None, hit["document"]["title"]
        expected = weight * hit["vector_score"] + (1 - weight) * (hit["text_score"] or 0) / best
        assert hit["score"] == pytest.approx(expected, abs=1e-6), hit["document"]["title"]


def test_total_candidates_is_exact_with_decimal_thresholds(client: TestClient) -> None:
    body = {"labels": {"none": [{"name": "Cat", "min_confidence": 99.5}]}}
    everything = search(client, **body, k=100)
    assert everything["total_candidates"] == len(everything["hits"])
    assert everything["next_offset"] is None
    n = len(everything["hits"])
    first = search(client, **body, k=n - 1)
    assert first["next_offset"] == n - 1
    last = search(client, **body, k=n - 1, offset=n - 1)
    assert len(last["hits"]) == 1 and last["next_offset"] is None
    assert ids(first) + ids(last) == ids(everything)


@pytest.mark.parametrize(
    "text",
    ['"espresso"', '"cup of coffee"', '"espresso', "cup AND coffee", "(", "*", "NOT", "+-:~^"],
)
def test_no_text_answers_500(client: TestClient, text: str) -> None:
    response = client.post("/search", json={"text": text, "k": 5})
    assert response.status_code == 200, response.text
    if text == '"espresso"':
        assert response.json()["hits"][0]["document"]["title"] == "Cup of coffee"


def test_a_phrase_matches_words_in_order(client: TestClient) -> None:
    in_order = search(client, text='"a rocket standing"', k=5)
    assert [h["document"]["title"] for h in in_order["hits"]] == ["Rocket launch pad"]
    assert search(client, text='"standing rocket"', k=5)["hits"] == []


def test_filters_outside_the_grammar_are_refused(client: TestClient) -> None:
    cat = asset(client, "Chelsea the cat")
    refused = client.get(f"/assets/{cat}/similar", params={"metadata": "photographer>=m"})
    assert refused.status_code == 422 and "equality" in refused.text
    body = {"metadata": {"photographer>": ["m"]}, "k": 5}
    refused = client.post("/search", json=body)
    assert refused.status_code == 422 and "equality" in refused.text
    accepted = client.get(f"/assets/{cat}/similar", params={"metadata": "source=scikit-image"})
    assert accepted.status_code == 200
