"""Model rollouts through the library and the CLI: the GeM variant, backfill, validation, the
quality gate (labelled and self-check), the atomic switch and rollbacks. Real model, real
photos, the embedded store; the DAG that runs the same steps is tested in ``test_dags.py``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike_cli import app
from pipeline.backbones import REGISTRY, get_spec
from pipeline.embed import Embedder, get_embedder, model_path
from pipeline.ingest import ingest, plan_batches
from pipeline.library import Library
from pipeline.rollout import (
    QualityGateError,
    RolloutError,
    backfill_batch,
    mean_average_precision,
    plan_backfill,
    rollback,
    rollout,
    validate,
)
from pipeline.search import SearchRequest
from pipeline.settings import Settings, get_settings

pytestmark = pytest.mark.slow

BASE, GEM = "mobilenet_v2-imagenet@1", "mobilenet_v2-gem-imagenet@1"


@pytest.fixture(scope="module")
def gem(embedder: Embedder) -> Embedder:
    """The GeM variant, converted from the same checkpoint once per session."""
    return get_embedder("mobilenet_v2-gem-imagenet")


def test_gem_variant_is_gem_pooling_over_the_same_network(embedder: Embedder, gem: Embedder):
    spec = get_spec("mobilenet_v2-gem-imagenet")
    assert spec.offline and spec.model_id == GEM and "GeM" in spec.description
    base = get_spec("mobilenet_v2-imagenet")
    assert (spec.dim, spec.image_size, spec.resize_size, spec.num_classes) == (
        base.dim,
        base.image_size,
        base.resize_size,
        base.num_classes,
    )
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    _, base_probabilities, maps = embedder.runtime(batch)  # raw outputs: the last feature map
    expected = np.sqrt(np.mean(np.square(maps), axis=(1, 2)))
    features, probabilities, _ = gem.runtime(batch)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probabilities, base_probabilities, atol=1e-6)  # same labels
    assert not np.allclose(gem.predict(batch).embeddings, embedder.predict(batch).embeddings)


def test_gem_variant_reloads_from_its_cache_without_custom_objects(gem: Embedder) -> None:
    path = model_path(gem.spec, get_settings().model_dir)
    written = path.stat().st_mtime_ns
    cached = Embedder.load(gem.spec, path.parent)
    assert path.stat().st_mtime_ns == written, "loaded, not converted again"
    batch = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3))
    np.testing.assert_array_equal(cached.predict(batch).embeddings, gem.predict(batch).embeddings)
    assert len([s for s in REGISTRY.values() if s.offline]) == 2


def test_mean_average_precision() -> None:
    a1, a2, b1 = [1.0, 0.0], [0.6, 0.8], [0.8, 0.6]  # cosines: a1·b1 0.8, a2·b1 0.96, a1·a2 0.6
    vectors = np.array([a1, a2, b1])
    # Each "a" finds the "b" first, its partner second: AP 1/2; "b" alone only distracts.
    assert mean_average_precision(vectors, ["a", "a", "b"]) == pytest.approx(0.5)
    # a1 -> b1 first (AP 1); b1 -> a2, then a1 (AP 1/2); a2 has no partner.
    assert mean_average_precision(vectors, ["a", "c", "a"]) == pytest.approx(0.75)
    with pytest.raises(RolloutError, match="two images with the same label"):
        mean_average_precision(vectors, ["a", "b", "c"])


@pytest.fixture(scope="module")
def library(sample_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rollout") / "library"
    shutil.copytree(sample_manifest.parent, folder)
    return folder


@pytest.fixture(scope="module")
def indexed(library: Path, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory):
    """The sample library ingested with the default model, then rolled out to GeM."""
    settings = Settings(home=tmp_path_factory.mktemp("home"), batch_size=16, rollout_sample_size=8)
    summary = ingest(library, library / "manifest.csv", settings=settings, embedder=embedder)
    done = rollout("mobilenet_v2-gem-imagenet", settings)
    return settings, summary, done


def test_rollout_fills_a_new_index_checks_it_and_switches(indexed) -> None:
    settings, summary, done = indexed
    assert (done.switch.previous, done.switch.active) == (BASE, GEM)
    assert done.embedded == summary.new and done.plan.resumed == 0
    assert done.validation.documents == summary.new
    gate = done.validation.gate
    assert gate.passed and gate.method == "self-check" and gate.queries == 32
    assert gate.candidate >= gate.required >= settings.rollout_min_match_rate
    with Library.open(settings) as library:
        index = library.index()
        assert index.model_id == GEM and library.catalogue.active() == GEM
        assert {i.model_id: i.count for i in library.catalogue.indexes()} == {
            BASE: summary.new,
            GEM: summary.new,
        }
        first = next(iter(index.states()))
        doc = index.get([first])[first]
        assert (doc.model, doc.model_version) == ("mobilenet_v2-gem-imagenet", "1")
        assert doc.labels, "labelled by the new version"
        switch = library.runs.switches()[0]
        assert (switch.previous, switch.model, switch.trigger, switch.embedded) == (
            BASE,
            GEM,
            "rollout",
            done.embedded,
        )
        text = SearchRequest(text="espresso", k=3)
        assert library.searcher().search(text).hits, "the new index serves text search too"


def active(settings: Settings) -> str | None:
    with Library.open(settings) as library:
        return library.catalogue.active()


def make_active(settings: Settings, model_id: str) -> None:
    if active(settings) != model_id:
        rollback(settings, to=model_id)


def test_rollback_returns_to_the_previous_version_and_back(indexed) -> None:
    settings, _, _ = indexed
    make_active(settings, GEM)
    assert rollback(settings).model_dump() == {"previous": GEM, "active": BASE}
    assert active(settings) == BASE
    assert rollback(settings).model_dump() == {"previous": BASE, "active": GEM}
    with pytest.raises(RolloutError, match="already the active"):
        rollback(settings, to=GEM)
    with pytest.raises(RolloutError, match="no index with documents for nope@1"):
        rollback(settings, to="nope@1")


def test_a_failed_gate_leaves_the_alias_and_a_new_attempt_resumes(indexed) -> None:
    settings, summary, _ = indexed
    make_active(settings, BASE)
    plan = plan_backfill("mobilenet_v2-gem-imagenet@1", settings)
    assert plan.todo == [] and plan.resumed == summary.new, "nothing to embed again"
    demanding = settings.model_copy(update={"rollout_tolerance": -1.0})
    with pytest.raises(QualityGateError) as failure:
        validate(plan, [], demanding)
    message = str(failure.value)
    assert message.startswith(f"quality gate failed: self-check rank-1 rate of {GEM} is ")
    assert f"the alias still points to {BASE}" in message
    assert active(settings) == BASE
    with pytest.raises(RolloutError, match="already the active"):
        plan_backfill("mobilenet_v2-imagenet", settings)
    with pytest.raises(RolloutError, match="mobilenet_v2-gem-imagenet has only version 1"):
        plan_backfill("mobilenet_v2-gem-imagenet@2", settings)


def test_labelled_evaluation_set_gates_on_map(indexed, library: Path) -> None:
    """Photos and their transformed copies are labelled by the photo they show; every other
    sample photo is a distractor."""
    settings, _, _ = indexed
    manifest = library / "eval.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for path in sorted((library / "copies").iterdir()) + sorted(
            (library / "originals").iterdir()
        ):
            writer.writerow([path.relative_to(library), path.stem.split("_")[0]])
    make_active(settings, BASE)
    plan = plan_backfill("mobilenet_v2-gem-imagenet", settings)
    labelled = settings.model_copy(update={"rollout_eval_manifest": manifest})
    gate = validate(plan, [], labelled).gate
    assert gate.method == "labelled" and gate.metric == "mAP" and gate.passed
    assert gate.queries == len(list((library / "copies").iterdir())) + 21
    assert gate.current > 0.8 and gate.candidate > 0.8
    assert gate.required == pytest.approx(gate.current - settings.rollout_tolerance)


def test_files_that_cannot_be_read_again_stop_the_rollout(
    sample_manifest: Path, embedder: Embedder, tmp_path: Path
) -> None:
    library = tmp_path / "library"
    shutil.copytree(sample_manifest.parent / "copies", library)
    settings = Settings(home=tmp_path / "home", batch_size=4)
    ingest(library, settings=settings, embedder=embedder)
    (library / "coffee_flip.jpg").unlink()
    plan = plan_backfill("mobilenet_v2-gem-imagenet", settings)
    results = [backfill_batch(plan, ids, settings) for ids in plan_batches(plan.todo, 4)]
    assert sum(r.written for r in results) == 9
    [missing] = [m for r in results for m in r.missing]
    assert missing.uri.endswith("coffee_flip.jpg") and missing.reason == "file not found"
    with pytest.raises(RolloutError, match=r"could not be read again .*coffee_flip.jpg"):
        validate(plan, results, settings)
    assert active(settings) == BASE
    with pytest.raises(RolloutError, match="no recorded switch to mobilenet_v2-imagenet@1"):
        rollback(settings)


def test_cli_rollout_and_rollback(
    sample_manifest: Path, embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    # A table of its own in the session's home: the model cache stays where it is.
    monkeypatch.setenv("LOOKALIKE_TABLE", "cli_rollout")
    monkeypatch.setenv("LOOKALIKE_ROLLOUT_SAMPLE_SIZE", "4")
    get_settings.cache_clear()
    try:
        library = tmp_path / "library"
        shutil.copytree(sample_manifest.parent / "originals", library)
        assert runner.invoke(app, ["ingest", str(library), "--json"]).exit_code == 0
        result = runner.invoke(app, ["rollout", "mobilenet_v2-gem-imagenet", "--json"])
        assert result.exit_code == 0, result.output
        done = json.loads(result.output)
        assert done["switch"] == {"previous": BASE, "active": GEM} and done["embedded"] == 21
        result = runner.invoke(app, ["rollback"])
        assert result.exit_code == 0 and f"{GEM} -> {BASE}" in result.output
        result = runner.invoke(app, ["rollout", "mobilenet_v2-imagenet"])
        assert result.exit_code == 2 and "already the active model version" in result.output
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
