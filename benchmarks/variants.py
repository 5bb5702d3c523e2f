"""Embedding variants computed from the same model outputs: raw, centred, PCA, PCA-whitened.

Why these: the backbone's features come after a ReLU6, so every coordinate is non-negative and
unrelated photos still score 0.4-0.5 cosine; subtracting the corpus mean spreads the scores,
PCA keeps the directions that vary in the corpus (and shrinks the vectors: 1280 -> 256 floats
is 5x less memory and faster search), and whitening additionally rescales them so that a few
dominant directions (lighting, "photo-ness") stop drowning the rest. Each learned variant is a
fixed linear map plus L2 normalisation, so it could be stored with the model version and
applied at ingest and query time alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VariantSpec:
    """``dims`` None keeps all dimensions; ``whiten`` is the eigenvalue power divided out
    (0: plain PCA rotation, 1: full whitening, 0.5: the usual compromise)."""

    name: str
    centre: bool = False
    dims: int | None = None
    whiten: float = 0.0

    @property
    def learned(self) -> bool:
        return self.centre or self.dims is not None or self.whiten > 0


@dataclass(frozen=True)
class Projection:
    """``x -> l2normalise(((x - mean) @ components.T) * scale)``, fitted on some corpus."""

    mean: np.ndarray
    components: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x - self.mean
        if self.components is not None:
            y = y @ self.components.T
        if self.scale is not None:
            y = y * self.scale
        return _normalise(y)


def fit(spec: VariantSpec, corpus: np.ndarray) -> Projection | None:
    """The projection ``spec`` describes, learned on ``corpus``; ``None`` for the raw variant.

    PCA comes from the SVD of the centred corpus, so it needs no more memory than the corpus;
    components are capped at the corpus rank. Whitening divides by ``eigenvalue ** (whiten /
    2)`` with a small floor, so near-zero directions are not blown up into noise.
    """
    if not spec.learned:
        return None
    mean = corpus.mean(axis=0)
    if spec.dims is None and spec.whiten == 0:
        return Projection(mean)
    _, singular, vt = np.linalg.svd(corpus - mean, full_matrices=False)
    dims = min(spec.dims or vt.shape[0], len(corpus) - 1, vt.shape[0])
    components = vt[:dims]
    scale = None
    if spec.whiten > 0:
        eigen = singular[:dims] ** 2 / max(1, len(corpus) - 1)
        eigen = np.maximum(eigen, eigen[0] * 1e-4)
        scale = (eigen ** (-spec.whiten / 2)).astype(np.float32)
    return Projection(mean.astype(np.float32), components.astype(np.float32), scale)


def default_specs(dims: tuple[int, ...] = (256, 128)) -> list[VariantSpec]:
    """Raw, centred, and for each size: PCA, PCA-whitened (power 0.5 and 1)."""
    specs = [VariantSpec("raw"), VariantSpec("centred", centre=True)]
    for d in dims:
        specs += [
            VariantSpec(f"pca {d}", centre=True, dims=d),
            VariantSpec(f"pca-whiten^0.5 {d}", centre=True, dims=d, whiten=0.5),
            VariantSpec(f"pca-whiten {d}", centre=True, dims=d, whiten=1.0),
        ]
    return specs


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
