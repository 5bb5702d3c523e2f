"""Custom tags from judgements (pipeline/tags.py), on the real sample library in an embedded
store: training with cross-validation, the threshold at the tolerated false-positive rate, the
versioned artefact, applying at ingest and as a backfill, tag filters, the CLI, and every bad
input refused with nothing written. (The same on OpenSearch and Elasticsearch:
tests/test_store_contract.py; the API and the web page: tests/test_api.py, tests/test_web.py.)
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import ingest_samples
from typer.testing import CliRunner

from lookalike_cli.main import app
from pipeline import filters, maps, tags
from pipeline.document import Judgement
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.search import SearchRequest
from pipeline.settings import Settings, get_settings

pytestmark = pytest.mark.slow

runner = CliRunner()


def is_cat(uri: str) -> int:
    """The sample library's cat photos: the original and its edited copies."""
    return int("chelsea" in uri)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, sample_manifest: Path, embedder) -> Settings:
    settings = Settings(home=tmp_path_factory.mktemp("tags_home"), batch_size=8)
    with Library.open(settings) as library:
        ingest_samples(library, sample_manifest, embedder)
    return settings


@pytest.fixture
def library(home: Settings) -> Iterator[Library]:
    """The module's library; every test leaves it without tags or judgements."""
    with Library.open(home) as lib:
        yield lib
        for name in {j.tag for j in lib.judgements.judgements()} | {
            t.name for t in tags.all_tags(home)
        }:
            tags.remove(lib, name)
            tags.delete(name, home)
            lib.judgements.remove(name)


def cat_judgements(library: Library, tag: str = "kitty") -> list[Judgement]:
    index = library.index()
    docs = index.get(list(index.states()))
    return [
        Judgement(tag=tag, asset_id=i, uri=d.uri, judge=is_cat(d.uri))
        for i, d in sorted(docs.items())
    ]


def test_operating_point_has_the_most_recall_within_the_fpr() -> None:
    judges = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.85, 0.92, 0.97, 0.99])
    # FPR <= 0.1 allows one of the ten negatives (0.95) above the threshold: 0.92 passes too.
    threshold, recall, fpr = tags.operating_point(judges, scores, 0.1)
    assert (threshold, recall, fpr) == (0.92, 0.75, 0.1)
    # No false positive at all: only the two scores above the best negative pass.
    threshold, recall, fpr = tags.operating_point(judges, scores, 0.0)
    assert (threshold, recall, fpr) == (0.97, 0.5, 0.0)


def test_train_cross_validates_and_writes_a_version(library: Library, home: Settings) -> None:
    judged = cat_judgements(library)
    done = tags.train("kitty", judged, library.index(), home, features="both")
    tag, m = done.classifier, done.classifier.metrics
    assert (tag.name, tag.version, tag.model_id) == ("kitty", 1, library.index().model_id)
    assert tag.positives == sum(j.judge for j in judged) >= 6 and tag.negatives > 20
    assert m.folds == 5 and len(m.fold_auc) == 5 and m.auc == pytest.approx(np.mean(m.fold_auc))
    assert m.auc >= 0.95 and m.fpr <= m.max_fpr == 0.05 and 0 < m.threshold <= 1
    assert tag.features == "both" and 0 < len(tag.vocabulary) <= 100
    # The threshold read from the fold models' scores holds for the kept model: the two share
    # one regularisation, so their scores share a scale (on its own judgements, the kept model
    # lets through no more negatives than the tolerated rate, and no fewer positives).
    index = library.index()
    docs = index.get([j.asset_id for j in judged], with_embedding=True)
    judges = np.array([j.judge for j in judged])
    passed = done.weights.score([docs[j.asset_id] for j in judged], "both") >= m.threshold
    assert passed[judges == 0].mean() <= m.max_fpr and passed[judges == 1].mean() >= m.recall
    assert {p.name for p in done.folder.iterdir()} == {
        "classifier.json",
        "weights.npz",
        "roc.png",
        "judgements.csv",
    }
    with Image.open(done.folder / "roc.png") as roc:
        assert roc.format == "PNG" and roc.width > 300
    with (done.folder / "judgements.csv").open() as saved:
        assert len(list(csv.DictReader(saved))) == len(judged)
    assert tags.find("kitty", home) == tag
    again = tags.train("kitty", judged, library.index(), home, features="embedding")
    assert again.classifier.version == 2 and tags.versions("kitty", home) == [1, 2]
    assert again.classifier.vocabulary == []


def test_apply_backfills_once_and_new_files_are_tagged_as_written(
    library: Library,
    home: Settings,
    sample_manifest: Path,
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tags, "WRITE_CHUNK", 10)  # tag writes between reads, and a last one
    judged = cat_judgements(library)
    tags.train("kitty", judged, library.index(), home)
    index = library.index()
    total = index.count()
    applied = tags.apply(library)
    assert applied.scored == total and applied.passing == {"kitty": sum(j.judge for j in judged)}
    assert tags.apply(library).scored == 0, "nothing is stale any more"
    docs = index.get(list(index.states()))
    assert all(d.tags["kitty"].version == 1 for d in docs.values())
    passing = {i for i, d in docs.items() if d.tags["kitty"].passed}
    assert passing == {j.asset_id for j in judged if j.judge}

    searcher = library.searcher()
    found = searcher.search(SearchRequest(tags=["kitty"], k=100))
    assert {h.id for h in found.hits} == passing
    rest = searcher.search(SearchRequest(tags_none=["kitty"], k=100))
    assert {h.id for h in rest.hits} == set(docs) - passing

    # A new version makes every document stale again; an ingest tags new files as it writes.
    tags.train("kitty", judged, index, home)
    assert index.count(tags.Tagger.load(index.model_id, home).stale()) == total
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(sample_manifest.parent / "originals" / "chelsea.jpg", folder / "chelsea_again.jpg")
    ingest(folder, library=library, embedder=embedder, settings=home)
    [new] = [d for d in index.get(list(index.states())).values() if "chelsea_again" in d.uri]
    assert new.tags["kitty"].version == 2 and new.tags["kitty"].passed


def test_remove_takes_the_tag_off_every_document(library: Library, home: Settings) -> None:
    tags.train("kitty", cat_judgements(library), library.index(), home)
    tags.apply(library)
    index = library.index()
    assert tags.remove(library, "kitty") == index.count()
    assert all(not d.tags for d in index.get(list(index.states())).values())
    assert index.count(filters.Term("tag_names", ("kitty",))) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda js: js[:9], "9 judgement(s) of indexed assets, at least 10"),
        (lambda js: [j.model_copy(update={"judge": 1}) for j in js], "every judgement says yes"),
        (
            lambda js: [j.model_copy(update={"judge": int(n == 0)}) for n, j in enumerate(js)],
            "1 yes and",
        ),
    ],
    ids=["too-few", "one-class", "one-positive"],
)
def test_judgements_a_tag_cannot_learn_from_are_refused(
    library: Library, home: Settings, change, message: str
) -> None:
    with pytest.raises(tags.TagError, match=re.escape(message)):
        tags.train("kitty", change(cat_judgements(library)), library.index(), home)
    assert tags.versions("kitty", home) == [], "nothing is half-written"


@pytest.mark.parametrize(
    ("name", "max_fpr", "message"),
    [
        ("Kitty", 0.05, "use lower-case letters"),
        ("labels", 0.05, "the name of a document field"),
        ("kitty", 1.5, "between 0 and 1"),
        ("kitty", 0.0, "between 0 and 1"),
    ],
)
def test_bad_names_and_rates_are_refused(
    library: Library, home: Settings, name: str, max_fpr: float, message: str
) -> None:
    with pytest.raises(tags.TagError, match=message):
        tags.train(name, cat_judgements(library, name), library.index(), home, max_fpr=max_fpr)


def cli(home: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("LOOKALIKE_HOME", str(home.home))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, list(args))
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def test_cli_trains_from_a_file_applies_lists_shows_and_deletes(
    library: Library, home: Settings, sample_manifest: Path, tmp_path: Path, monkeypatch
) -> None:
    base = sample_manifest.parent
    files = sorted((base / "originals").iterdir()) + sorted((base / "copies").iterdir())
    judgements = tmp_path / "judged.csv"
    with judgements.open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["path", "judge"])
        rows.writerows([(str(p), is_cat(p.name)) for p in files])
        rows.writerow([str(tmp_path / "never_indexed.jpg"), 1])

    code, output = cli(home, monkeypatch, "tags", "train", "kitty", "--judgements", str(judgements))
    assert code == 0, output
    assert "kitty@1" in output and "AUC" in output and "roc.png" in output
    assert "never_indexed.jpg" in output.replace("\n", ""), "unknown paths are listed, skipped"
    stored = library.judgements.judgements("kitty")
    assert len(stored) == len(files) and {j.source for j in stored} == {"file"}

    code, output = cli(home, monkeypatch, "tags", "apply", "--json")
    docs = library.index().get(list(library.index().states()))
    cats = sum(is_cat(d.uri) for d in docs.values())  # the judged ones and unjudged copies
    assert code == 0 and json.loads(output)["passing"]["kitty"] == cats
    code, output = cli(home, monkeypatch, "search", "--tag", "kitty", "-k", "50", "--json")
    assert code == 0
    assert {is_cat(h["uri"]) for h in json.loads(output)["hits"]} == {1}
    code, output = cli(home, monkeypatch, "tags", "list", "--json")
    [info] = json.loads(output)
    assert (info["name"], info["version"], info["judgements"]) == ("kitty", 1, len(files))
    code, output = cli(home, monkeypatch, "tags", "show", "kitty")
    assert code == 0 and "threshold" in output and "folds" in output

    # Retraining learns from every judgement in the store, with no file given.
    code, output = cli(home, monkeypatch, "tags", "train", "kitty")
    assert code == 0 and "kitty@2" in output

    code, output = cli(home, monkeypatch, "tags", "delete", "kitty", "--yes")
    assert code == 0 and "2 version(s)" in output
    assert tags.all_tags(home) == [] and library.judgements.judgements("kitty") == []


def test_cli_refuses_bad_input_with_one_line_and_writes_nothing(
    library: Library, home: Settings, tmp_path: Path, monkeypatch
) -> None:
    bad_rows = tmp_path / "bad.csv"
    bad_rows.write_text("path,judge\na.jpg,1\nb.jpg,maybe\n")
    no_column = tmp_path / "nocolumn.csv"
    no_column.write_text("file,verdict\na.jpg,1\n")
    for args, message in [
        (("--judgements", str(bad_rows)), "judge of 1/0: line 3"),
        (("--judgements", str(no_column)), "needs a 'path'"),
        (("--judgements", str(tmp_path / "missing.csv")), "cannot read judgements"),
        (("--max-fpr", "2"), "between 0 and 1"),
        (("--positives", str(tmp_path)), "--positives and --negatives together"),
        (("--features", "pixels"), "features 'pixels'"),
    ]:
        code, output = cli(home, monkeypatch, "tags", "train", "kitty", *args)
        assert code == 2 and message in " ".join(output.split()), output
    code, output = cli(home, monkeypatch, "tags", "train", "id")
    assert code == 2 and "name of a document field" in output
    code, output = cli(home, monkeypatch, "search", "--tag", "Not A Tag")
    assert code == 2 and "string_pattern_mismatch" in output
    assert tags.all_tags(home) == [] and library.judgements.judgements() == []


def test_the_library_map_places_every_asset(library: Library, home: Settings) -> None:
    computed = maps.build_map(library)
    index = library.index()
    assert computed.model == index.model_id and len(computed.points) == index.count()
    xy = np.array([(p.x, p.y) for p in computed.points])
    assert xy.min() >= 0 and xy.max() <= 1 and np.ptp(xy, axis=0).max() == pytest.approx(1)
    # The cat photos are near copies of each other: they sit closer together than the rest.
    docs = index.get([p.id for p in computed.points])
    cats = np.array([is_cat(docs[p.id].uri) for p in computed.points])
    assert cats.sum() >= 6
    spread = lambda rows: np.mean(np.linalg.norm(rows - rows.mean(axis=0), axis=1))  # noqa: E731
    assert spread(xy[cats == 1]) < 0.5 * spread(xy)
    path = maps.save_map(computed, home)
    assert maps.load_map(home, index.model_id) == computed and path.is_file()
