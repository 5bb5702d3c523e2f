"""A small, real sample library for the demo, the tests and the benchmarks, built offline.

The photos ship inside the scikit-image and scikit-learn wheels (public domain / CC0 / BSD, see
their docs), so nothing is downloaded. Transformed copies of two photos make "find this photo
again" visible, a few files exercise the decoder's conversions (alpha, palette, 1-bit, 16-bit,
CMYK, EXIF rotation), and three broken files show quarantine at work.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# name -> (title, description, keywords)
_PHOTOS: dict[str, tuple[str, str, str]] = {
    "chelsea": (
        "Chelsea the cat",
        "A tabby cat sitting on a rug, looking at the camera.",
        "cat, pet, animal",
    ),
    "coffee": (
        "Cup of coffee",
        "An espresso in a white cup on a saucer with a spoon.",
        "coffee, drink, cup",
    ),
    "astronaut": (
        "Astronaut portrait",
        "Official portrait of astronaut Eileen Collins.",
        "person, space, portrait",
    ),
    "rocket": ("Rocket launch pad", "A rocket standing on its launch pad.", "rocket, space"),
    "hubble_deep_field": (
        "Hubble deep field",
        "Thousands of galaxies seen by Hubble.",
        "space, galaxy, stars",
    ),
    "stereo_motorcycle": ("Motorcycle", "A motorcycle parked in a studio.", "motorcycle, vehicle"),
    "immunohistochemistry": (
        "Stained tissue",
        "Immunohistochemistry microscope slide.",
        "science, microscope",
    ),
    "retina": ("Retina", "A fundus photograph of a human retina.", "science, eye, medicine"),
    "camera": (
        "Cameraman",
        "A man with a camera on a tripod, black and white.",
        "person, camera, photographer",
    ),
    "coins": ("Coins", "Greek coins on a dark background.", "money, coins"),
    "clock": ("Clock", "A wall clock photographed at an angle.", "clock, time"),
    "moon": ("Moon surface", "Craters on the surface of the moon.", "moon, space"),
    "page": ("Book page", "A scanned page of printed text.", "text, document"),
    "text": ("Text sample", "Printed and handwritten text.", "text, document"),
    "brick": ("Brick wall", "A brick wall texture.", "texture, wall"),
    "grass": ("Grass", "A patch of grass.", "texture, grass, nature"),
    "gravel": ("Gravel", "A patch of gravel.", "texture, stone"),
    "cell": ("Cell", "A cell under the microscope.", "science, microscope"),
    "colorwheel": ("Colour wheel", "A colour wheel.", "colour, graphic"),
    "china": ("Summer palace", "A Chinese temple with trees.", "building, temple, travel"),
    "flower": ("Flower", "A close-up of a flower.", "flower, nature, plant"),
}

_COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "crop": lambda im: im.crop(_box(im, 0.7)),
    "flip": ImageOps.mirror,
    "warm": lambda im: ImageEnhance.Color(_tint(im, (1.15, 1.0, 0.85))).enhance(1.3),
    "small": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
}
COPIED = ("chelsea", "coffee")


def load_photo(name: str) -> Image.Image:
    """One of the bundled real photos as a Pillow image, in its native mode."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):  # stereo pairs: keep the left view
        arr = arr[0]
    if arr.dtype == bool:
        return Image.fromarray(arr).convert("1")
    return Image.fromarray(arr)


def build_samples(dest: Path) -> Path:
    """Write the sample library under ``dest`` and return the manifest's path.

    Layout: ``originals/`` (one file per photo), ``copies/`` (transformed copies of the cat and
    the coffee), ``formats/`` (unusual encodings), ``broken/`` (files that must be quarantined)
    and ``manifest.csv`` with titles, descriptions and keywords. Deterministic and idempotent.
    """
    dest = Path(dest)
    for sub in ("originals", "copies", "formats", "broken"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (title, description, keywords) in _PHOTOS.items():
        im = load_photo(name)
        rel = f"originals/{name}.{'png' if im.mode in ('L', '1') else 'jpg'}"
        _save(im.convert("RGB") if im.mode not in ("L", "1") else im, dest / rel)
        rows.append(
            {
                "path": rel,
                "title": title,
                "description": description,
                "keywords": keywords,
                "source": _source(name),
                "variant": "original",
            }
        )
        if name in COPIED:
            for variant, transform in _COPIES.items():
                rel = f"copies/{name}_{variant}.jpg"
                _save(transform(im.convert("RGB")), dest / rel)
                rows.append(
                    {
                        "path": rel,
                        "title": f"{title} ({variant})",
                        "description": "",
                        "keywords": keywords,
                        "source": _source(name),
                        "variant": variant,
                    }
                )
            rel = f"copies/{name}_q30.jpg"
            _save(im.convert("RGB"), dest / rel, quality=30)
            rows.append(
                {
                    "path": rel,
                    "title": f"{title} (JPEG q30)",
                    "description": "",
                    "keywords": keywords,
                    "source": _source(name),
                    "variant": "q30",
                }
            )
    _write_formats(dest / "formats")
    _write_broken(dest / "broken")
    manifest = dest / "manifest.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _write(manifest, text.getvalue().encode())
    return manifest


def _write_formats(folder: Path) -> None:
    """Encodings the decoder must convert correctly (each shows a photo that also exists as an
    original, so a search proves the conversion kept the content)."""
    astronaut = load_photo("astronaut")
    rotated = astronaut.rotate(90, expand=True)  # stored sideways, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(rotated, folder / "astronaut_exif_rotated.jpg", exif=exif.tobytes())
    logo = load_photo("logo")  # RGBA with transparency
    _save(logo, folder / "logo_rgba.png")
    _save(load_photo("horse"), folder / "horse_1bit.png")
    camera16 = np.asarray(load_photo("camera"), dtype=np.uint16) * 257
    _save(Image.fromarray(camera16), folder / "camera_16bit.png")
    _save(
        load_photo("colorwheel").convert("P", palette=Image.Palette.ADAPTIVE),
        folder / "colorwheel_palette.gif",
    )
    _save(load_photo("rocket").convert("CMYK"), folder / "rocket_cmyk.jpg")


def _write_broken(folder: Path) -> None:
    _write(folder / "empty.jpg", b"")
    _write(folder / "not_an_image.png", b"This is a text file with an image extension.\n")
    buf = io.BytesIO()
    load_photo("chelsea").save(buf, format="JPEG", quality=90)
    _write(folder / "truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])


def _save(im: Image.Image, path: Path, **params: object) -> None:
    if path.suffix == ".jpg":
        params.setdefault("quality", 90)
    buf = io.BytesIO()
    im.save(buf, format=Image.registered_extensions()[path.suffix.lower()], **params)
    _write(path, buf.getvalue())


def _write(path: Path, data: bytes) -> None:
    """Write only what differs, so rebuilding the samples leaves unchanged files untouched
    (same mtime) and the next incremental ingest does not even re-read them."""
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)


def _box(im: Image.Image, fraction: float) -> tuple[int, int, int, int]:
    w, h = int(im.width * fraction), int(im.height * fraction)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return left, top, left + w, top + h


def _tint(im: Image.Image, gains: tuple[float, float, float]) -> Image.Image:
    arr = np.asarray(im, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _source(name: str) -> str:
    return "scikit-learn" if name in ("china", "flower") else "scikit-image"
