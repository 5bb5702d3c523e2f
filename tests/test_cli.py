"""The ``lookalike`` CLI as a user runs it: JSON output for scripts, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookalike_cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def ingested(sample_manifest: Path, embedder) -> dict:
    code, output = invoke(
        "ingest", str(sample_manifest.parent), "--manifest", str(sample_manifest), "--json"
    )
    assert code == 3, output  # finished, with the three broken samples quarantined
    return json.loads(output)


def test_ingest_json_summary(ingested: dict) -> None:
    assert set(ingested) >= {"new", "updated", "unchanged", "deleted", "quarantined"}
    assert ingested["new"] > 30 and ingested["deleted"] == 0
    assert {q["uri"].rsplit("/", 1)[-1] for q in ingested["quarantined"]} == {
        "empty.jpg",
        "not_an_image.png",
        "truncated.jpg",
    }
    assert all(q["reason"] for q in ingested["quarantined"])
    assert ingested["outcome"] == "quarantined"


def test_runs_and_quarantine_lists(ingested: dict) -> None:
    code, output = invoke("runs", "--json")
    assert code == 0, output
    latest = json.loads(output)["runs"][0]
    assert latest["new"] == ingested["new"] and latest["run_id"] == ingested["run_id"]
    code, output = invoke("quarantine", "--json")
    assert code == 0 and len(json.loads(output)["quarantined"]) == 3


def test_search_by_image_and_by_id(ingested: dict, sample_manifest: Path) -> None:
    cat = sample_manifest.parent / "originals" / "chelsea.jpg"
    code, output = invoke("search", str(cat), "-k", "6", "--json")
    assert code == 0, output
    hits = json.loads(output)["hits"]
    assert [h["uri"].rsplit("/", 1)[-1].startswith("chelsea") for h in hits] == [True] * 6
    assert {"id", "uri", "score", "labels"} <= set(hits[0])
    code, output = invoke("search", "--id", hits[0]["id"], "-k", "5", "--json", "--label", "Cat:60")
    similar = json.loads(output)["hits"]
    assert code == 0 and hits[0]["id"] not in {h["id"] for h in similar}
    assert all(h["matched_labels"][0]["confidence"] >= 60 for h in similar)
    code, output = invoke(
        "search", str(cat), "--box", "0.1,0.1,0.6,0.8", "--regions", "both", "--json"
    )
    part = json.loads(output)
    assert code == 0 and part["note"] is None
    assert any(h["region"] is not None for h in part["hits"]), "regions name where they matched"


def test_search_text_and_metadata(ingested: dict) -> None:
    code, output = invoke("search", "--text", "galaxies", "--meta", "source=scikit-image", "--json")
    assert code == 0, output
    hits = json.loads(output)["hits"]
    assert hits[0]["uri"].endswith("hubble_deep_field.jpg") and hits[0]["text_score"] > 0


def test_labels_for_the_cat_reach_cat_and_animal(sample_manifest: Path, embedder) -> None:
    code, output = invoke(
        "labels", str(sample_manifest.parent / "originals" / "chelsea.jpg"), "--json"
    )
    assert code == 0, output
    labels = json.loads(output)["Labels"]
    top = labels[0]
    assert set(top) == {"Name", "Confidence", "Parents"}
    names = {lab["Name"] for lab in labels}
    assert {"Cat", "Animal"} <= names
    cat_class = next(lab for lab in labels if lab["Name"].endswith("Cat") and lab["Name"] != "Cat")
    parents = [p["Name"] for p in cat_class["Parents"]]
    assert "Cat" in parents and "Animal" in parents
    assert parents.index("Cat") < parents.index("Animal"), "parents are nearest first"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "{broken}/not_an_image.png"), "not an image"),
        (("search", "--id", "no-such-id"), "no indexed asset"),
        (("search", "--label", "Cat:lots"), "not a number"),
        (("search", "--meta", "nokey"), "KEY=VALUE"),
        (("search", "--box", "0,0,1,1"), "give IMAGE or --id"),
        (("search", "{broken}/../originals/chelsea.jpg", "--box", "0.5,0.5,0.6,0.1"), "<= 1"),
        (("search", "{broken}/../originals/chelsea.jpg", "--box", "0.5,0.5"), "four numbers"),
        (("search", "{broken}/../originals/chelsea.jpg", "--regions", "all"), "regions"),
        (("ingest", "/no/such/folder"), "source folder not found"),
        (("labels", "{broken}/empty.jpg"), "empty file"),
    ],
)
def test_bad_input_gives_a_clear_error(args, message, sample_manifest: Path, ingested) -> None:
    broken = sample_manifest.parent / "broken"
    code, output = invoke(*(a.format(broken=broken) for a in args))
    assert code == 2, output
    assert message in output and "Traceback" not in output
