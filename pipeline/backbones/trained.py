"""Fine-tuned models: a registry backbone plus an embedding head learned by ``lookalike train``.

Why a head on a frozen backbone: ImageNet features know ImageNet classes, not a user's notion
of "the same item" (this garment, this character, this glyph). A linear projection trained
with a metric-learning loss on the backbone's pooled features re-weights them for that notion;
it trains on the CPU in seconds from cached features, and the backbone's labels are untouched.

Each training run is a numbered version under ``<model_dir>/trained/<name>/<version>/``:

* ``model.json``: :class:`TrainedModel`, everything needed to reproduce and judge it (the
  training configuration, the data, the metrics before and after, the open-set threshold);
* ``head.npz``: the projection (``kernel`` ``(base dim, dim)``, ``bias``);
* ``gallery.npz``: the labelled images' embeddings and labels, which ``lookalike identify``
  compares a new image with;
* ``validation.csv``: the held-out images and their labels (classes never trained on), the
  set the rollout quality gate measures the old and the new model on.

A version is written atomically (``pipeline/registry.py``). Its name is
``<backbone>-<head>-<name>`` (``mobilenet_v2-arcface-shoes``) and its id ``<name>@<version>``,
like the built-in models; the model the stores see is the backbone with the head appended (stock
Keras layers), so it embeds, caches and loads like any other.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from pipeline import registry

if TYPE_CHECKING:
    import keras

    from pipeline.backbones import ModelSpec

Head = Literal["arcface", "triplet"]


class TrainedModel(BaseModel):
    """One trained version, as ``model.json`` records it."""

    name: str = Field(description="Registry name, e.g. mobilenet_v2-arcface-shoes.")
    version: int
    base: str = Field(description="The backbone's registry name.")
    head: Head
    dim: int
    match_threshold: float | None = Field(
        None,
        description="Cosine similarity from which a nearest neighbour counts as the same "
        "identity (calibrated on the validation split for target_precision).",
    )
    target_precision: float
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    config: dict[str, Any] = Field(description="The training configuration (reproducible).")
    data: dict[str, Any] = Field(description="Where the images came from and how many.")
    metrics: dict[str, Any] = Field(description="Validation figures before and after.")

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"


def root(model_dir: Path) -> Path:
    return model_dir / "trained"


def versions(name: str, model_dir: Path) -> list[int]:
    """The versions of ``name`` in the registry, oldest first."""
    return registry.versions(root(model_dir) / name, "model.json")


def folder(name: str, version: int, model_dir: Path) -> Path:
    return root(model_dir) / name / str(version)


def find(name: str, model_dir: Path, version: int | None = None) -> TrainedModel | None:
    """Version ``version`` of ``name`` (default: the newest), or None when there is none."""
    known = versions(name, model_dir)
    if not known or (version is not None and version not in known):
        return None
    path = folder(name, version or known[-1], model_dir) / "model.json"
    return TrainedModel.model_validate_json(path.read_text())


def all_models(model_dir: Path) -> list[TrainedModel]:
    """Every trained version, by name and version."""
    found = [
        find(name, model_dir, version)
        for name in registry.names(root(model_dir))
        for version in versions(name, model_dir)
    ]
    return [m for m in found if m is not None]


def write(
    record: TrainedModel,
    model_dir: Path,
    head: dict[str, np.ndarray],
    gallery: dict[str, np.ndarray],
    validation: list[tuple[Path, str]],
) -> Path:
    """Write a version atomically (a temporary folder renamed into place) and return its
    folder; a version that exists already is never overwritten."""
    target = folder(record.name, record.version, model_dir)
    with registry.new_version(target) as tmp:
        np.savez(tmp / "head.npz", **head)
        np.savez(tmp / "gallery.npz", **gallery)
        with (tmp / "validation.csv").open("w", newline="") as out:
            rows = csv.writer(out)
            rows.writerow(["path", "label"])
            rows.writerows((str(path), label) for path, label in validation)
        (tmp / "model.json").write_text(record.model_dump_json(indent=1))
    return target


def gallery(record: TrainedModel, model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The labelled embeddings ``(N, dim)`` and their labels ``(N,)`` of a version."""
    with np.load(folder(record.name, record.version, model_dir) / "gallery.npz") as saved:
        return saved["embeddings"], saved["labels"]


def build(record: TrainedModel, model_dir: Path, base: ModelSpec) -> keras.Model:
    """The backbone with the head appended: the registry's two-output contract, the features
    replaced by the head's projection of the unit-length backbone features."""
    import keras

    model = base.build()
    features, probabilities = model.outputs
    unit = keras.layers.UnitNormalization(name="head_input")(features)
    head = keras.layers.Dense(record.dim, name="head")
    projected = head(unit)
    with np.load(folder(record.name, record.version, model_dir) / "head.npz") as saved:
        head.set_weights([saved["kernel"], saved["bias"]])
    return keras.Model(model.input, [projected, probabilities], name=record.name)
