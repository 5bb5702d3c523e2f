"""Ingestion end to end with the real model on the real sample library."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from support import CAT_COPIES, stem

from pipeline.document import IngestSummary
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.search import LabelFilter, SearchRequest, image_vector
from pipeline.settings import Settings

pytestmark = pytest.mark.slow

BROKEN = {
    "empty.jpg": "empty file",
    "not_an_image.png": "not an image",
    "truncated.jpg": "truncated",
}


@pytest.fixture(scope="module")
def indexed(sample_manifest: Path, embedder, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(home=tmp_path_factory.mktemp("home"), batch_size=8)
    library = Library.open(settings)
    summary = ingest(
        sample_manifest.parent,
        sample_manifest,
        library=library,
        embedder=embedder,
        settings=settings,
    )
    yield settings, library, summary
    library.close()


def test_first_run_indexes_every_sample_and_quarantines_broken_files(indexed, sample_manifest):
    _, library, summary = indexed
    good = len(pd.read_csv(sample_manifest)) + len(
        list((sample_manifest.parent / "formats").iterdir())
    )
    assert summary.new == good == library.index().count()
    assert summary.updated == summary.unchanged == summary.deleted == 0
    reasons = {item.uri.rsplit("/", 1)[-1]: item.reason for item in summary.quarantined}
    assert set(reasons) == set(BROKEN)
    for name, expected in BROKEN.items():
        assert expected in reasons[name].lower()
    assert {r.uri.rsplit("/", 1)[-1] for r in library.quarantine.records()} == set(BROKEN)


def test_cat_photo_finds_its_copies_above_every_other_photo(indexed, sample_manifest, embedder):
    _, library, _ = indexed
    query = (sample_manifest.parent / "originals" / "chelsea.jpg").read_bytes()
    request = SearchRequest(vector=image_vector(query, embedder), k=10)
    hits = library.searcher().search(request).hits
    top = [stem(h.document.uri) for h in hits[: len(CAT_COPIES)]]
    assert set(top) == CAT_COPIES, top
    assert hits[len(CAT_COPIES)].score < min(h.score for h in hits[: len(CAT_COPIES)])
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_formats_are_decoded_into_the_right_picture(indexed, sample_manifest, embedder):
    """The EXIF-rotated, CMYK and palette files find their originals first."""
    _, library, _ = indexed
    searcher = library.searcher()
    for variant, original in [
        ("astronaut_exif_rotated", "astronaut"),
        ("rocket_cmyk", "rocket"),
        ("colorwheel_palette", "colorwheel"),
    ]:
        hit = searcher.similar(_id_of(library, variant), SearchRequest(k=1)).hits[0]
        assert stem(hit.document.uri) == original, variant


def _id_of(library: Library, name: str) -> str:
    hits = library.searcher().search(SearchRequest(k=1000)).hits
    return next(h.id for h in hits if stem(h.document.uri) == name)


def test_label_and_text_filters_change_the_results(indexed, sample_manifest, embedder):
    _, library, _ = indexed
    store = library.searcher()
    vector = image_vector(
        (sample_manifest.parent / "originals" / "coffee.jpg").read_bytes(), embedder
    )
    cats = store.search(
        SearchRequest(vector=vector, k=10, labels_all=[LabelFilter(name="Cat", min_confidence=50)])
    )
    assert cats.hits and {stem(h.document.uri) for h in cats.hits} <= CAT_COPIES
    assert all(h.matched_labels[0].name == "Cat" for h in cats.hits)
    texts = store.search(SearchRequest(text="espresso cup", k=10)).hits
    assert stem(texts[0].document.uri).startswith("coffee")
    space = store.search(SearchRequest(vector=vector, text="space", k=3)).hits
    assert any(h.text_score for h in space)


def test_second_run_writes_nothing(indexed, sample_manifest, embedder):
    settings, library, first = indexed
    table = library.index().table
    version = table.version
    again = ingest(
        sample_manifest.parent,
        sample_manifest,
        library=library,
        embedder=embedder,
        settings=settings,
    )
    assert (again.new, again.updated, again.deleted, again.quarantined) == (0, 0, 0, [])
    assert again.unchanged == first.new + len(first.quarantined)
    assert table.version == version, "an unchanged library must not write a new version"
    runs = library.runs.runs()
    assert [r.run_id for r in runs] == [first.run_id], "an idle run records nothing"
    assert runs[0].new == first.new


def test_changes_are_picked_up_incrementally(sample_manifest, embedder, tmp_path):
    library = tmp_path / "lib"
    shutil.copytree(sample_manifest.parent / "copies", library / "copies")
    shutil.copytree(sample_manifest.parent / "broken", library / "broken")
    settings = Settings(home=tmp_path / "home", batch_size=4)
    lib = Library.open(settings)

    def run() -> IngestSummary:
        return ingest(library, library=lib, embedder=embedder, settings=settings)

    first = run()
    assert (first.new, len(first.quarantined)) == (10, 3)
    (library / "copies" / "coffee_flip.jpg").unlink()
    shutil.copy(library / "copies" / "coffee_crop.jpg", library / "copies" / "chelsea_warm.jpg")
    shutil.copy(library / "copies" / "chelsea_crop.jpg", library / "broken" / "truncated.jpg")
    second = run()
    assert (second.new, second.updated, second.deleted, second.unchanged) == (1, 1, 1, 10)
    assert lib.index().count() == 10
    hits = (
        lib.searcher()
        .search(SearchRequest(labels_all=[LabelFilter(name="Espresso", min_confidence=50)], k=20))
        .hits
    )
    assert "chelsea_warm" in {stem(h.document.uri) for h in hits}
    lib.close()


def test_a_run_whose_batches_did_not_all_land_says_which_did(sample_manifest) -> None:
    """What the ingest DAG's ``all_landed`` decides when mapped batches failed for good."""
    from pipeline.ingest import BatchResult, IncompleteRun, landed_results, plan_batches, plan_run

    plan = plan_run(sample_manifest.parent / "copies", settings=Settings())
    batches = plan_batches(plan.todo, 4)
    assert len(batches) == 3
    landed = {2: BatchResult(new=2), 0: BatchResult(new=3, updated=1)}
    with pytest.raises(IncompleteRun) as raised:
        landed_results(batches, landed)
    lines = str(raised.value).splitlines()
    assert lines[0] == "1 of 3 batches did not land:"
    assert lines[1] == f"  batch 1: 4 images, first {batches[1][0].asset.uri}"
    assert lines[2:5] == [
        "2 landed:",
        "  batch 0: 4 images (3 new, 1 updated, 0 quarantined)",
        "  batch 2: 2 images (2 new, 0 updated, 0 quarantined)",
    ]
    assert "Nothing was deleted and the run was not recorded" in lines[5]
    landed[1] = BatchResult(updated=4)
    assert landed_results(batches, landed) == [landed[0], landed[1], landed[2]]
    assert landed_results([], {}) == []
