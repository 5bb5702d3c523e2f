"""The label stage: the packaged hierarchy table and DetectLabels-style aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.label import Labeler, get_labeler, load_table
from pipeline.settings import get_settings

TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
GOLDEN_RETRIEVER, ESPRESSO = 207, 967


@pytest.fixture(scope="module")
def labeler() -> Labeler:
    return get_labeler()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch):
    """Set LOOKALIKE_* variables for one test, with the settings cache cleared around it."""

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"LOOKALIKE_{key.upper()}", value)
        get_settings.cache_clear()

    yield set_env
    get_settings.cache_clear()


def softmax_with(**probabilities: float) -> np.ndarray:
    """A probability vector with the given ``c<index>=p`` entries and the rest spread evenly."""
    p = np.zeros(1000)
    for key, value in probabilities.items():
        p[int(key.removeprefix("c"))] = value
    rest = 1.0 - p.sum()
    p[p == 0] = rest / np.count_nonzero(p == 0)
    return p


def cat_photo() -> np.ndarray:
    return softmax_with(c281=0.13, c282=0.15, c285=0.71)


def by_name(labels) -> dict:
    return {label.name: label for label in labels}


def test_table_is_complete() -> None:
    table = load_table()
    classes, nodes = table["classes"], table["nodes"]
    assert len(classes) == 1000
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in table["license"]
    for name, wnid, parents in classes + nodes:
        assert name and name == name.strip()
        assert len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()
        assert all(0 <= p < len(nodes) for p in parents)
        assert len(set(parents)) == len(parents)
    class_names = [c[0] for c in classes]
    assert len(set(class_names)) == 1000
    all_names = [n.lower() for n, _, _ in classes + nodes]
    assert len(set(all_names)) == len(all_names)
    assert len({c[1] for c in classes}) == 1000


def test_parents_are_nearest_first(labeler: Labeler) -> None:
    """Every ancestor's own ancestors come after it, as in Rekognition's Parents."""
    table = load_table()
    nodes = table["nodes"]
    for _, _, parents in table["classes"] + nodes:
        for k, p in enumerate(parents):
            assert set(nodes[p][2]) <= set(parents[k + 1 :])


def test_cat_photo_aggregates_up_the_hierarchy(labeler: Labeler) -> None:
    labels = labeler.detect(cat_photo(), min_confidence=5, max_labels=50)
    found = by_name(labels)
    assert found["Egyptian Cat"].confidence == pytest.approx(71, abs=0.1)
    assert found["Tiger Cat"].confidence == pytest.approx(15, abs=0.1)
    assert found["Cat"].confidence == pytest.approx(99, abs=0.1)
    for broad in ("Feline", "Carnivore", "Mammal", "Animal"):
        assert found[broad].confidence >= found["Cat"].confidence
    parents = found["Egyptian Cat"].parents
    assert parents[0] == "Domestic Cat"
    assert parents.index("Cat") < parents.index("Feline") < parents.index("Animal")
    assert found["Cat"].parents[0] == "Feline"
    assert set(found["Cat"].parents) <= set(parents[parents.index("Cat") + 1 :])
    assert found["Animal"].parents == []
    confidences = [label.confidence for label in labels]
    assert confidences == sorted(confidences, reverse=True)
    assert labels[0].to_rekognition()["Parents"] == [{"Name": p} for p in labels[0].parents]


def test_equal_confidences_put_the_more_specific_label_first(labeler: Labeler) -> None:
    p = np.zeros(1000)
    p[EGYPTIAN_CAT] = 1.0
    names = [label.name for label in labeler.detect(p, min_confidence=50, max_labels=50)]
    assert names.index("Egyptian Cat") < names.index("Domestic Cat") < names.index("Cat")
    assert names.index("Cat") < names.index("Mammal") < names.index("Animal")


def test_min_confidence_and_max_labels(labeler: Labeler) -> None:
    everything = labeler.detect(cat_photo(), min_confidence=0, max_labels=10_000)
    assert len(everything) == len(labeler.names())

    confident = labeler.detect(cat_photo(), min_confidence=80, max_labels=100)
    assert confident and all(label.confidence >= 80 for label in confident)
    assert "Cat" in by_name(confident) and "Egyptian Cat" not in by_name(confident)

    top = labeler.detect(cat_photo(), min_confidence=0, max_labels=3)
    assert [label.name for label in top] == [label.name for label in everything[:3]]

    with pytest.raises(ValueError):
        labeler.detect(cat_photo(), min_confidence=101)
    with pytest.raises(ValueError):
        labeler.detect(cat_photo(), max_labels=0)


def test_defaults_come_from_settings(labeler: Labeler, settings_env) -> None:
    settings_env(label_min_confidence="60", label_max_labels="4")
    labels = labeler.detect(cat_photo())
    assert len(labels) == 4
    assert all(label.confidence >= 60 for label in labels)


def test_dog_breed_reaches_dog(labeler: Labeler) -> None:
    found = by_name(labeler.detect(softmax_with(c207=0.9), min_confidence=50, max_labels=50))
    assert labeler.class_name(GOLDEN_RETRIEVER) == "Golden Retriever"
    assert "Dog" in found["Golden Retriever"].parents
    assert found["Dog"].confidence >= 90
    assert {"Mammal", "Animal"} <= set(found["Dog"].parents)


def test_espresso_reaches_drink_and_food(labeler: Labeler) -> None:
    found = by_name(labeler.detect(softmax_with(c967=0.8), min_confidence=50, max_labels=50))
    assert labeler.class_name(ESPRESSO) == "Espresso"
    assert {"Coffee", "Beverage", "Food"} <= set(found["Espresso"].parents)
    assert found["Beverage"].confidence >= 80


def test_uniform_distribution_is_not_confident(labeler: Labeler) -> None:
    labels = labeler.detect(np.full(1000, 1 / 1000), min_confidence=50, max_labels=100)
    assert labels == []


def test_confidences_stay_percentages(labeler: Labeler) -> None:
    """Softmax rounding can make a sum exceed 1; the Label model rejects anything over 100."""
    p = np.full(1000, 1.001 / 1000)
    p[0] = -1e-9
    labels = labeler.detect(p, min_confidence=0, max_labels=10_000)
    assert all(0 <= label.confidence <= 100 for label in labels)


def test_batch_matches_single(labeler: Labeler) -> None:
    batch = np.random.default_rng(0).dirichlet(np.full(1000, 0.02), size=32)
    batch[0] = cat_photo()
    assert labeler.detect_batch(batch, 1, 25) == [labeler.detect(p, 1, 25) for p in batch]


def test_shapes_are_checked(labeler: Labeler) -> None:
    with pytest.raises(ValueError):
        labeler.detect(np.zeros((1, 1000)))
    with pytest.raises(ValueError):
        labeler.detect_batch(np.zeros(1000))
    with pytest.raises(ValueError):
        labeler.detect_batch(np.zeros((2, 999)))


def test_names(labeler: Labeler) -> None:
    names = labeler.names()
    assert names[:3] == ["Tench", "Goldfish", "Great White Shark"]
    assert {"Cat", "Dog", "Animal", "Vehicle", "Food", "Bird"} <= set(names)
    assert len(names) == len(set(names))
    assert labeler.class_name(TABBY) == "Tabby Cat" and labeler.class_name(TIGER_CAT) == "Tiger Cat"
    with pytest.raises(IndexError):
        labeler.class_name(1000)
    assert get_labeler() is labeler


def test_custom_table() -> None:
    """Another backbone's classes work the same way, with a table of the same shape."""
    table = {
        "classes": [["Sparrow", "n1", [0, 1]], ["Trout", "n2", [2, 1]]],
        "nodes": [["Bird", "n3", [1]], ["Animal", "n4", []], ["Fish", "n5", [1]]],
    }
    labels = Labeler(table).detect(np.array([0.3, 0.7]), min_confidence=0, max_labels=10)
    assert [(label.name, round(label.confidence)) for label in labels] == [
        ("Animal", 100),
        ("Trout", 70),
        ("Fish", 70),
        ("Sparrow", 30),
        ("Bird", 30),
    ]
