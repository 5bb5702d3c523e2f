"""The label stage: Rekognition DetectLabels-style labels from an ImageNet-1k softmax.

The backbone scores 1000 narrow classes ("Egyptian Cat"), but people search a library with broad
words ("cat", "animal"), and DetectLabels answers with the whole hierarchy, each ancestor carrying
its own confidence. This stage does the same: an ancestor's confidence is the summed probability
of the distinct classes beneath it, so "Cat" is confident even when the model hesitates between
three cat breeds, and each label lists its ancestors as ``parents``, nearest first.

The hierarchy is WordNet 3.0's, pruned and named by ``scripts/build_label_table.py`` into
``pipeline/data/imagenet_labels.json``, which ships with the package.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from pipeline.document import Label
from pipeline.settings import get_settings

TABLE_FILE = "imagenet_labels.json"

# Confidences are rounded before ranking so that a parent and a child whose sums are equal in
# exact arithmetic tie (and the child, being more specific, comes first) despite float noise.
_DECIMALS = 4


def load_table() -> dict[str, Any]:
    """The packaged hierarchy: ``classes[i]`` and ``nodes[j]`` are ``[name, wordnet_id, parents]``
    with ``parents`` the node ids of all ancestors, nearest first."""
    text = (resources.files("pipeline") / "data" / TABLE_FILE).read_text(encoding="utf-8")
    return json.loads(text)


class Labeler:
    """Scores every class and hierarchy node at once from the class probabilities.

    Labels are columns: the classes first (column ``i`` is class ``i``), then the nodes. A fixed
    0/1 incidence matrix (class x label) makes the aggregation one matrix product per batch.
    """

    def __init__(self, table: dict[str, Any] | None = None) -> None:
        """Build from ``table`` (the packaged ImageNet one by default; another backbone with its
        own classes can pass a table of the same shape)."""
        table = table if table is not None else load_table()
        classes, nodes = table["classes"], table["nodes"]
        self.num_classes = len(classes)
        rows = [*classes, *nodes]
        self._names: list[str] = [name for name, _, _ in rows]
        if len(set(self._names)) != len(self._names):
            raise ValueError("label names must be unique: labels are matched by name")
        self._parents: list[list[str]] = [
            [self._names[self.num_classes + p] for p in parents] for _, _, parents in rows
        ]
        self._incidence = np.zeros((self.num_classes, len(rows)), dtype=np.float64)
        self._incidence[np.arange(self.num_classes), np.arange(self.num_classes)] = 1.0
        for i, (_, _, parents) in enumerate(classes):
            self._incidence[i, self.num_classes + np.asarray(parents, dtype=np.intp)] = 1.0
        # Tie order: more ancestors (deeper, more specific) first, then by name.
        order = sorted(range(len(rows)), key=lambda j: (-len(self._parents[j]), self._names[j]))
        self._tie_rank = np.empty(len(rows), dtype=np.intp)
        self._tie_rank[order] = np.arange(len(rows))

    def class_name(self, index: int) -> str:
        """The display name of model output ``index``."""
        if not 0 <= index < self.num_classes:
            raise IndexError(f"class index {index} outside 0..{self.num_classes - 1}")
        return self._names[index]

    def names(self) -> list[str]:
        """Every label name this labeler can produce (classes, then hierarchy nodes), e.g. to
        validate a label filter in a search request."""
        return list(self._names)

    def detect(
        self,
        probabilities: np.ndarray,
        min_confidence: float | None = None,
        max_labels: int | None = None,
    ) -> list[Label]:
        """Labels for one image's softmax (shape ``(num_classes,)``), like DetectLabels: only
        labels with confidence >= ``min_confidence`` (percent), the ``max_labels`` most confident,
        most confident first. Defaults come from the settings."""
        probs = np.asarray(probabilities)
        if probs.shape != (self.num_classes,):
            raise ValueError(
                f"expected probabilities of shape ({self.num_classes},), got {probs.shape}; "
                "use detect_batch for a batch"
            )
        return self.detect_batch(probs[np.newaxis], min_confidence, max_labels)[0]

    def detect_batch(
        self,
        probabilities: np.ndarray,
        min_confidence: float | None = None,
        max_labels: int | None = None,
    ) -> list[list[Label]]:
        """``detect`` for a batch of softmax rows (shape ``(n, num_classes)``) in one product."""
        settings = get_settings()
        min_confidence = settings.label_min_confidence if min_confidence is None else min_confidence
        max_labels = settings.label_max_labels if max_labels is None else max_labels
        if not 0 <= min_confidence <= 100:
            raise ValueError(f"min_confidence must be a percentage, got {min_confidence}")
        if max_labels < 1:
            raise ValueError(f"max_labels must be at least 1, got {max_labels}")
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"expected probabilities of shape (n, {self.num_classes}), got {probs.shape}"
            )
        # Clipping absorbs softmax rounding (sums a hair over 1) and stray negative inputs.
        confidences = np.clip(np.round(100.0 * (probs @ self._incidence), _DECIMALS), 0.0, 100.0)
        return [self._labels(row, min_confidence, max_labels) for row in confidences]

    def _labels(
        self, confidences: np.ndarray, min_confidence: float, max_labels: int
    ) -> list[Label]:
        """The kept labels of one row of label confidences, in DetectLabels order."""
        kept = np.flatnonzero(confidences >= min_confidence)
        kept = kept[np.lexsort((self._tie_rank[kept], -confidences[kept]))][:max_labels]
        return [
            Label(name=self._names[j], confidence=float(confidences[j]), parents=self._parents[j])
            for j in kept
        ]


@lru_cache(maxsize=1)
def get_labeler() -> Labeler:
    """The process-wide labeler for the packaged table (built once: parsing and the incidence
    matrix are the only costly part)."""
    return Labeler()
