"""Fine-tuning (``lookalike train``) on tiny real data: the loss falls, a version is written and
loads, identification answers "class X" or "no known match", search hits say whether they are a
match, a rollout goes through the validation-split gate, and bad training data gets a clear
message with nothing half-written left in the registry."""

from __future__ import annotations

import csv
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from typer.testing import CliRunner

from benchmarks import general, sources
from benchmarks.datasets import CategoryConfig
from benchmarks.families import FamilyConfig
from lookalike_cli import app
from pipeline.backbones import get_spec, trained
from pipeline.embed import get_embedder, model_path
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.rollout import QualityGateError, rollout
from pipeline.samples import load_photo
from pipeline.search import SearchRequest
from pipeline.settings import Settings, get_settings
from pipeline.train import TrainConfig, TrainingError, calibrate, split_classes, train

pytestmark = pytest.mark.slow

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "china", "flower")
TINY = {"epochs": 12, "views": 1, "dim": 32, "batch_size": 16}


def _views(name: str, count: int, seed: int) -> list[Image.Image]:
    """``count`` different pictures of one photo: crops, mirrors, colour changes."""
    rng = random.Random(seed)
    photo = load_photo(name).convert("RGB")
    photo.thumbnail((320, 320))
    out = []
    for _ in range(count):
        w, h = photo.size
        side = rng.uniform(0.6, 0.9)
        left, top = rng.uniform(0, 1 - side) * w, rng.uniform(0, 1 - side) * h
        view = photo.crop((int(left), int(top), int(left + side * w), int(top + side * h)))
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        out.append(ImageEnhance.Color(view).enhance(rng.uniform(0.6, 1.4)))
    return out


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 classes (one photo each), 4 pictures per class, as ``<class>/<n>.jpg``."""
    root = tmp_path_factory.mktemp("classes")
    for n, name in enumerate(PHOTOS):
        (root / name).mkdir()
        for i, image in enumerate(_views(name, 4, seed=n)):
            image.save(root / name / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def home(embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A home of its own (the registry, the store), with the session's converted backbone."""
    home = tmp_path_factory.mktemp("train_home")
    (home / "models").mkdir()
    cached = model_path(embedder.spec, get_settings().model_dir)
    os.symlink(cached, home / "models" / cached.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_HOME", str(home))
        get_settings.cache_clear()  # (embedders are cached by model folder: no clash)
        yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def tiny(classes: Path, home: Settings):
    return train(classes, TrainConfig(name="tiny", **TINY), settings=home)


def test_training_writes_a_version_that_loads(tiny, home: Settings, classes: Path) -> None:
    model = tiny.model
    assert model.model_id == "mobilenet_v2-arcface-tiny@1"
    loss = model.metrics["loss"]
    assert len(loss["per_epoch"]) == TINY["epochs"] and loss["last"] < 0.5 * loss["first"]
    assert model.data["images"] == 32 and model.data["classes"] == 8
    assert model.data["validation_classes"] == 2 and tiny.quarantined == []
    folder = trained.folder(model.name, 1, home.model_dir)
    assert {p.name for p in folder.iterdir()} == {
        "model.json",
        "head.npz",
        "gallery.npz",
        "validation.csv",
    }
    assert len((folder / "validation.csv").read_text().splitlines()) == 1 + 2 * 4
    spec = get_spec("mobilenet_v2-arcface-tiny")
    assert spec.model_id == model.model_id and spec.dim == 32
    assert spec.match_threshold == pytest.approx(model.match_threshold)
    # The model embeds like any other: 32-d unit vectors, the backbone's labels unchanged.
    embedder = get_embedder(model.model_id)
    image = Image.open(classes / "chelsea" / "0.jpg")
    prediction = embedder.predict(embedder.preprocess(image)[None])
    assert prediction.embeddings.shape == (1, 32)
    assert np.linalg.norm(prediction.embeddings[0]) == pytest.approx(1.0, abs=1e-5)
    base = get_embedder("mobilenet_v2-imagenet")
    np.testing.assert_allclose(
        prediction.probabilities,
        base.predict(base.preprocess(image)[None]).probabilities,
        atol=1e-5,
    )


def test_identify_names_a_known_class_or_says_no_match(
    tiny, home: Settings, classes: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    known = classes / "chelsea" / "0.jpg"  # a labelled image itself: similarity 1
    result = runner.invoke(app, ["identify", str(known), "--model", tiny.model.model_id, "--json"])
    assert result.exit_code == 0, result.output
    assert '"label": "chelsea"' in result.output
    stranger = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(stranger)
    result = runner.invoke(app, ["identify", str(stranger), "--model", tiny.model.model_id])
    assert result.exit_code == 0 and result.output.startswith("no known match"), result.output
    result = runner.invoke(app, ["identify", str(known), "--model", "mobilenet_v2-imagenet"])
    assert result.exit_code == 2 and "not a trained model" in result.output


def test_a_rollout_goes_through_the_validation_split_gate(tiny, home: Settings, sample_manifest):
    """The library ingested with the backbone, rolled out to the trained version: the gate
    measures both on the version's held-out classes and the alias moves only if it improved."""
    settings = home.model_copy(update={"batch_size": 16})
    ingest(sample_manifest.parent, sample_manifest, settings=settings)
    try:
        done = rollout(tiny.model.model_id, settings)
    except QualityGateError as failed:
        assert "validation split mAP" in str(failed) and "needs more than" in str(failed)
        with Library.open(settings) as library:
            assert library.catalogue.active() == "mobilenet_v2-imagenet@1"
        return
    gate = done.validation.gate
    assert gate.method == "validation split" and gate.queries == 8
    assert gate.passed and gate.candidate > gate.current
    with Library.open(settings) as library:
        assert library.catalogue.active() == tiny.model.model_id
        hits = (
            library.searcher()
            .search(
                SearchRequest(
                    vector=get_embedder(tiny.model.model_id)
                    .predict(np.zeros((1, 224, 224, 3), np.uint8))
                    .embeddings[0]
                    .tolist(),
                    k=3,
                )
            )
            .hits
        )
    assert hits and all(isinstance(h.match, bool) for h in hits)


def test_bad_training_data_gets_a_clear_message_and_writes_nothing(
    classes: Path, home: Settings, tiny, tmp_path: Path
) -> None:
    runner = CliRunner()

    def run(source: Path, *extra: str) -> str:
        result = runner.invoke(app, ["train", str(source), "--epochs", "2", "--views", "0", *extra])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())  # the console wraps long lines

    before = sorted(p.name for p in (home.model_dir / "trained").rglob("*"))
    assert "exists already (version 1)" in run(classes, "--name", "tiny", "--dim", "32")
    one = tmp_path / "one"
    for name in PHOTOS[:4]:
        (one / name).mkdir(parents=True)
        for i, image in enumerate(_views(name, 1 if name == "coffee" else 3, seed=1)):
            image.save(one / name / f"{i}.jpg")
    assert "fewer than 2 usable images: coffee (1)" in run(one, "--name", "one")
    (one / "empty").mkdir()
    assert "hold no images: empty" in run(one, "--name", "one")
    (tmp_path / "nothing").mkdir()
    assert "no images in class folders" in run(tmp_path / "nothing", "--name", "x")
    assert "use lower-case" in run(classes, "--name", "Bad Name")
    assert sorted(p.name for p in (home.model_dir / "trained").rglob("*")) == before


def test_corrupt_training_images_are_quarantined_and_counted(
    classes: Path, home: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "data"
    source.mkdir()
    for folder in classes.iterdir():
        (source / folder.name).symlink_to(folder)
    broken = source / "broken"
    broken.mkdir()
    (broken / "0.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (broken / "1.jpg").write_bytes(b"")
    with pytest.raises(TrainingError, match=r"fewer than 2 usable images: broken \(0\)"):
        train(source, TrainConfig(name="broken", **TINY), settings=home)
    for i, image in enumerate(_views("moon", 2, seed=5)):
        image.save(broken / f"{i + 2}.jpg")
    report = train(source, TrainConfig(name="counted", **TINY), settings=home)
    assert report.model.data["quarantined"] == 2 and len(report.quarantined) == 2
    assert {Path(q.uri).name for q in report.quarantined} == {"0.jpg", "1.jpg"}
    assert all(q.reason for q in report.quarantined)
    assert report.model.data["classes"] == 9


def test_split_and_calibration_have_known_answers() -> None:
    labels = [f"c{i}" for i in range(10) for _ in range(3)]
    train_classes, held = split_classes(labels, 0.3, seed=1)
    assert len(held) == 3 and not train_classes & held and len(train_classes | held) == 10
    assert split_classes(labels, 0.3, seed=1) == (train_classes, held)
    # Perfectly separated identities: every known query matches right, strangers stay below.
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((64, 10)))[0].T
    vectors = np.repeat(centres, 3, axis=0) + 0.01 * rng.standard_normal((30, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    open_set = calibrate(vectors, labels, target_precision=0.9, seed=0)
    assert open_set.precision == 1.0 and open_set.recall == 1.0 and open_set.f1 == 1.0
    assert 0.1 < open_set.threshold < 1.0


def test_self_supervised_training_needs_no_labels(classes: Path, home: Settings) -> None:
    """Every image its own identity, its augmented views the positives: judged on held-out
    images, each finding its own views."""
    config = TrainConfig(name="copies", self_supervised=True, **{**TINY, "views": 2})
    report = train(classes, config, settings=home)
    model = report.model
    assert model.data["classes"] == 32 and model.config["self_supervised"] is True
    assert model.metrics["loss"]["last"] < model.metrics["loss"]["first"]
    assert model.metrics["after"]["P@1"] > 0.5, model.metrics["after"]
    with pytest.raises(TrainingError, match="augmented views"):
        train(classes, config.model_copy(update={"views": 0, "name": "x"}), settings=home)


def test_the_general_model_trains_from_the_image_families(home: Settings, tmp_path: Path) -> None:
    """``scripts/train_general.sh`` on tiny families: one manifest of ``<family>/<class>``
    identities built from the installed packages (single-image identities left out), trained
    as ``lookalike train`` trains it, into a version that loads by its name."""
    if not (sources.FONT_PACKAGES["fonts-dejavu-core"] / "DejaVuSans.ttf").is_file():
        pytest.skip("needs the Debian package fonts-dejavu-core (installed by .ci/run)")
    out = tmp_path / "general"
    per_family = general.write_manifest(
        out,
        tmp_path / "bench",
        FamilyConfig(max_classes=4, max_per_class=4, min_fonts=2),
        CategoryConfig(max_stamps=12),
    )
    rows = list(csv.DictReader((out / general.MANIFEST).open()))
    identities = Counter(row[general.LABEL_COLUMN] for row in rows)
    assert min(identities.values()) >= 2
    assert {label.partition("/")[0] for label in identities} == set(per_family)
    assert "fonts" in per_family and all(Path(row["path"]).is_file() for row in rows)
    config = TrainConfig(name="general", mirror=False, **TINY)
    report = train(
        out,
        config,
        manifest=out / general.MANIFEST,
        label_column=general.LABEL_COLUMN,
        settings=home,
    )
    model = report.model
    assert model.model_id == "mobilenet_v2-arcface-general@1"
    assert model.data["classes"] == len(identities) and model.data["images"] == len(rows)
    assert model.metrics["loss"]["last"] < model.metrics["loss"]["first"]
    assert get_spec("mobilenet_v2-arcface-general").dim == TINY["dim"]


def test_a_new_version_never_embeds_with_a_deleted_versions_conversion(
    classes: Path, home: Settings
) -> None:
    """Converted models are cached by model id; a version trained where a deleted one was must
    not load the old Keras or ONNX file (the old head's vectors)."""
    stale = [
        home.model_dir / f"mobilenet_v2-arcface-reused-v1.{kind}" for kind in ("keras", "onnx")
    ]
    for path in stale:
        path.write_bytes(b"the deleted version's conversion")
    report = train(classes, TrainConfig(name="reused", **TINY), settings=home)
    assert report.model.model_id == "mobilenet_v2-arcface-reused@1"
    assert not any(path.exists() for path in stale)
