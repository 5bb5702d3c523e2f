"""The embed stage: images in, L2-normalised embeddings and ImageNet class probabilities out.

The backbone comes from the model registry (:mod:`pipeline.backbones`). Building one means
reading a torch checkpoint (the offline default) or downloading weights (the others), so the
built model is cached once as a ``.keras`` file in ``settings.model_dir``; later processes load
that file, online or not. ``settings.backend`` says what runs it: ONNX Runtime (the default,
about twice TensorFlow's images/s on CPU) on an ``.onnx`` file converted from the Keras model
once and cached beside it, or TensorFlow itself, the reference and the fallback.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from pipeline import regions
from pipeline.backbones import DEFAULT_MODEL, ModelSpec, get_spec
from pipeline.document import Region
from pipeline.settings import get_settings

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) drowns the CLI's output; keep its
# warnings and errors. Set before the lazy ``import tensorflow``; a user's own value wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow once with file descriptor 2 muted: a few lines are printed by C++ code
    before its log level applies. Python exceptions still propagate after stderr is restored."""
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Resizing a 1-pixel-high banner so its short side is 256 would allocate gigabytes; beyond this
# aspect ratio only the centre crop's source region is resampled (equal up to rounding).
_MAX_ASPECT_RATIO = 8


@dataclass(frozen=True)
class Prediction:
    """One batch's outputs, row ``i`` for input image ``i``."""

    embeddings: np.ndarray  # float32 (N, dim), unit L2 norm: cosine similarity is a dot product
    probabilities: np.ndarray  # float32 (N, num_classes), softmax over the ImageNet-1k classes
    # float32 (N, regions, dim), unit L2 norm, region r at ``Embedder.region_boxes[r]``; None
    # when the embedder makes no region vectors
    regions: np.ndarray | None = None


def preprocess(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """The input ``spec``'s model expects for one image: uint8 ``(image_size, image_size, 3)`` RGB.

    Mirrors torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)`` on PIL images
    exactly (same output size arithmetic, PIL bilinear with antialiasing, same crop rounding),
    which is how the ImageNet accuracy of the weights was measured. A plain function, so decode
    workers can prepare images without loading the model.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    short, long = sorted(image.size)
    new_short, new_long = spec.resize_size, int(spec.resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    crop = spec.image_size
    left, top = round((new_w - crop) / 2.0), round((new_h - crop) / 2.0)
    if long > _MAX_ASPECT_RATIO * short:
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return np.array(image.resize((crop, crop), Image.Resampling.BILINEAR, box=box))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.array(image.crop((left, top, left + crop, top + crop)))


Backend = Literal["onnx", "tensorflow"]


class KerasRuntime:
    """TensorFlow running the Keras model: the reference every other backend is checked against,
    and the fallback where ONNX Runtime is missing.

    One ``tf.function`` with a fixed input signature: ``model.predict`` re-creates its data
    pipeline on every call (half the throughput at batch 32 here), and a ``tf.function`` without
    a signature would retrace for every new batch size.
    """

    backend: Backend = "tensorflow"

    def __init__(self, network: keras.Model) -> None:
        import tensorflow as tf

        self.network = network
        size = int(network.input.shape[1])
        self.infer = tf.function(
            lambda images: network(images, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
            autograph=False,
        )
        self.map_size = int(network.outputs[2].shape[1]) if len(network.outputs) > 2 else None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return [output.numpy() for output in self.infer(batch)]


class OnnxRuntime:
    """ONNX Runtime running the same network converted once by tf2onnx (:func:`onnx_model`):
    the same weights and graph, vectors equal to TensorFlow's to float rounding.

    Its intra-op threads sleep instead of spinning between batches (ONNX Runtime spins by
    default): during ingest the decode workers need those cores while a batch is being read.
    """

    backend: Backend = "onnx"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        self.map_size = int(outputs[2].shape[1]) if len(outputs) > 2 else None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: batch})


Runtime = KerasRuntime | OnnxRuntime


def _unit(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised along the last axis (as ``tf.math.l2_normalize``: zero stays zero)."""
    norms = np.sqrt(np.maximum(np.square(vectors).sum(axis=-1, keepdims=True), 1e-12))
    return (vectors / norms).astype(np.float32, copy=False)


class Embedder:
    """A backbone on an inference runtime, with its preprocessing; build one with :meth:`load`
    or :func:`get_embedder`.

    The runtime gives the network's raw outputs (pooled features, class probabilities and,
    where the backbone has a ``region_layer``, its last feature map); normalising and region
    pooling happen here, once for every backend. With ``region_levels`` > 0 every prediction
    also holds region vectors (:mod:`pipeline.regions`), pooled from the same forward pass.
    """

    def __init__(self, spec: ModelSpec, runtime: Runtime, region_levels: int = 0) -> None:
        self.spec = spec
        self.runtime = runtime
        self._pooling: np.ndarray | None = None
        self.region_boxes = np.zeros((0, 4), np.float32)
        self.region_levels = 0
        if region_levels > 0 and runtime.map_size is not None:
            self.region_levels = region_levels
            self._pooling = regions.pooling_matrix(runtime.map_size, region_levels)
            self.region_boxes = regions.crop_boxes(runtime.map_size, region_levels)

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        model_dir: Path,
        region_levels: int = 0,
        backend: Backend = "onnx",
        threads: int = 0,
    ) -> Embedder:
        """The backbone from the caches in ``model_dir`` (converting it on first use), on
        ``backend``; TensorFlow when ONNX Runtime cannot be used, with a warning that says why."""
        if backend == "onnx":
            try:
                return cls(spec, _onnx_runtime(spec, model_dir, threads), region_levels)
            except (ImportError, ConversionError) as exc:
                log.warning("embedding with TensorFlow instead of ONNX Runtime: %s", exc)
        model = network(load_keras_model(spec, model_dir), spec.region_layer)
        return cls(spec, KerasRuntime(model), region_levels)

    @property
    def backend(self) -> Backend:
        """What runs the network: ``onnx`` or ``tensorflow``."""
        return self.runtime.backend

    @property
    def regions(self) -> bool:
        """Whether predictions hold region vectors."""
        return self._pooling is not None

    @property
    def model_id(self) -> str:
        """``name@version``, recorded with every stored embedding."""
        return self.spec.model_id

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model input for one image (see :func:`preprocess`)."""
        return preprocess(image, self.spec)

    def regions_of(self, vectors: np.ndarray | None, width: int, height: int) -> list[Region]:
        """One image's region vectors (a row of ``Prediction.regions``) with their boxes on
        the ``width x height`` image; none when the embedder makes no region vectors."""
        if vectors is None:
            return []
        window = regions.crop_window(width, height, self.spec.resize_size, self.spec.image_size)
        boxes = regions.to_image(self.region_boxes, window)
        return [Region(box=box, embedding=v) for box, v in zip(boxes, vectors, strict=True)]

    def cut_regions(self, image: Image.Image, batch_size: int = 32) -> list[Region]:
        """A query image's regions: each box of the R-MAC layout (:func:`regions.layout`) cut
        out of ``image`` and embedded as a whole image, so that its vector sees nothing around
        it (better than pooling, and affordable for one image); none without region levels."""
        boxes = regions.layout(self.region_levels) if self.region_levels else ()
        if not boxes:
            return []
        crops = [self.preprocess(image.crop(regions.pixel_box(b, *image.size))) for b in boxes]
        vectors = np.concatenate(
            [
                self.predict(np.stack(crops[start : start + batch_size])).embeddings
                for start in range(0, len(crops), batch_size)
            ]
        )
        return [
            Region(box=tuple(round(v, 4) for v in box), embedding=vector)
            for box, vector in zip(boxes, vectors, strict=True)
        ]

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as an array, if it has the shape the model takes (else ``ValueError``)."""
        size = self.spec.image_size
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"expected a batch of shape (N, {size}, {size}, 3), got {batch.shape}")
        return batch

    def predict(self, batch: np.ndarray) -> Prediction:
        """Embeddings and class probabilities for a batch of preprocessed images.

        ``batch``: ``(N, image_size, image_size, 3)`` 0-255 RGB, uint8 or float.
        """
        batch = self.check_batch(batch)
        if len(batch) == 0:
            return Prediction(
                np.zeros((0, self.spec.dim), np.float32),
                np.zeros((0, self.spec.num_classes), np.float32),
                np.zeros((0, len(self.region_boxes), self.spec.dim), np.float32)
                if self.regions
                else None,
            )
        features, probabilities, *maps = self.runtime(batch.astype(np.float32, copy=False))
        if self._pooling is None:
            return Prediction(_unit(features), probabilities)
        cells = maps[0].reshape(len(batch), -1, maps[0].shape[-1])  # (N, h * w, C)
        if self.spec.region_pooling == "rms":
            pooled = np.sqrt(self._pooling @ np.square(cells))
        else:
            pooled = self._pooling @ cells  # (R, h * w) @ (N, h * w, C) -> (N, R, C)
        return Prediction(_unit(features), probabilities, _unit(pooled))


def _onnx_runtime(spec: ModelSpec, model_dir: Path, threads: int) -> OnnxRuntime:
    """ONNX Runtime on the cached ONNX file; a cached file it cannot load (truncated, or from
    an incompatible converter) is converted again, once, as the Keras cache is."""
    path = onnx_model(spec, model_dir)
    try:
        return OnnxRuntime(path, threads)
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        log.warning("cannot load cached ONNX model %s (%s); converting it again", path, exc)
        path.unlink(missing_ok=True)
        return OnnxRuntime(onnx_model(spec, model_dir), threads)


def network(model: keras.Model, region_layer: str | None) -> keras.Model:
    """What a runtime runs: the registry's two-output model, plus the last feature map as a
    third output where the backbone has a ``region_layer`` (its cost is nil: it is computed
    anyway, and an embedder without region levels ignores it)."""
    import keras

    if region_layer is None:
        return model
    feature_map = model.get_layer(region_layer).input
    return keras.Model(model.input, [*model.outputs, feature_map], name=model.name)


def model_path(spec: ModelSpec, model_dir: Path) -> Path:
    """Where the converted model is cached; the version in the name invalidates old copies."""
    return model_dir / f"{spec.name}-v{spec.version}.keras"


def onnx_path(spec: ModelSpec, model_dir: Path) -> Path:
    """Where the ONNX form of :func:`model_path`'s model is cached, keyed the same way."""
    return model_dir / f"{spec.name}-v{spec.version}.onnx"


class ConversionError(RuntimeError):
    """The Keras model could not be converted to ONNX (the TensorFlow backend still works)."""


def onnx_model(spec: ModelSpec, model_dir: Path) -> Path:
    """The ONNX file of ``spec``'s network (:func:`network`), converted from the Keras cache by
    tf2onnx on first use and written atomically, so concurrent processes never read half a file.

    Converting imports TensorFlow (seconds); later processes load the file with ONNX Runtime
    alone and never import TensorFlow to embed.
    """
    import onnxruntime  # noqa: F401  (ImportError here: no ONNX backend on this machine)

    path = onnx_path(spec, model_dir)
    if path.is_file():
        return path
    log.info("converting %s to ONNX in %s (once)", spec.model_id, path)
    _import_tensorflow_quietly()
    try:
        import tensorflow as tf
        import tf2onnx

        model = network(load_keras_model(spec, model_dir), spec.region_layer)
        size = spec.image_size
        signature = [tf.TensorSpec((None, size, size, 3), tf.float32, name="images")]
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=17)
    except ImportError:
        raise
    except Exception as exc:  # tf2onnx raises many kinds for graphs it cannot convert
        raise ConversionError(f"tf2onnx could not convert {spec.model_id}: {exc}") from exc
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp.onnx")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(proto.SerializeToString())
        os.replace(tmp, path)
    except OSError as exc:
        raise ConversionError(f"cannot cache the ONNX model in {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_keras_model(spec: ModelSpec, model_dir: Path) -> keras.Model:
    """The registry's Keras model for ``spec`` from the ``.keras`` cache in ``model_dir``,
    converting it on first use (a torch checkpoint read, or weights downloaded once)."""
    _import_tensorflow_quietly()
    import keras

    path = model_path(spec, model_dir)
    model = None
    if path.is_file():
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except (OSError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            # e.g. written by an incompatible Keras version: convert again
            log.warning("cannot load cached model %s (%s); converting it again", path, exc)
    if model is None:
        log.info("converting %s into %s (once)", spec.model_id, path)
        try:
            model = spec.build()
        except Exception as exc:
            if spec.offline:
                raise
            raise RuntimeError(
                f"building {spec.model_id} failed; it downloads its weights on first use, so "
                f"it needs internet access once (the offline default is {DEFAULT_MODEL!r})"
            ) from exc
        _save_atomically(model, path)
    return model


def _save_atomically(model: keras.Model, path: Path) -> None:
    """Write to a temporary file beside ``path``, then rename: concurrent processes see either
    no file or a complete one, never a half-written one."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp.keras")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(tmp))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs speed: keep the model in memory
        log.warning("cannot cache the converted model in %s: %s", path, exc)
    finally:
        tmp.unlink(missing_ok=True)


_load_lock = threading.Lock()


def get_embedder(name: str | None = None) -> Embedder:
    """The process-wide embedder for ``name`` (default: ``settings.model``).

    Loaded once per process and model cache directory; the lock stops concurrent first callers
    (e.g. API worker threads) from each loading a copy.
    """
    settings = get_settings()
    with _load_lock:
        return _cached_embedder(
            name or settings.model,
            settings.model_dir,
            settings.region_levels,
            settings.backend,
            settings.inference_threads,
        )


@lru_cache(maxsize=4)
def _cached_embedder(
    name: str, model_dir: Path, region_levels: int, backend: Backend, threads: int
) -> Embedder:
    return Embedder.load(get_spec(name), model_dir, region_levels, backend, threads)
