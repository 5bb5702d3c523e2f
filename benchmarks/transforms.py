"""Copy edits for the near-duplicate set and cut-out compositing for the category set.

The edits are the ones people make to photos they re-share (the issue's list): crops down to
half the area, rotations up to 15 degrees, mirroring, colour changes, heavy JPEG compression,
downscaling and text on top; then harder ones so that variants can differ where single edits
are solved: two combinations, a tighter crop, grayscale, and the photo inset into another.
Each takes a seeded ``random.Random``, so a data set is the same on every machine.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

_WORDS = [
    "summer",
    "holiday",
    "beach",
    "family",
    "party",
    "best",
    "friends",
    "forever",
    "sale",
    "today",
    "only",
    "breaking",
    "news",
    "copyright",
    "all",
    "rights",
    "reserved",
    "happy",
    "birthday",
    "meme",
    "of",
    "the",
    "day",
    "look",
    "at",
    "this",
    "weekend",
    "vibes",
]


# (photo, seeded rng, another photo that is not a reference) -> edited copy
EditFunction = Callable[[Image.Image, random.Random, Image.Image], Image.Image]


@dataclass(frozen=True)
class Edit:
    """A named copy edit and the JPEG quality its result is saved with."""

    name: str
    apply: EditFunction
    quality: int = 92
    # The copy shows the other photo too, so a reference cut from that photo is also a right
    # answer: benchmarks ignore such references for it (``datasets.junk``).
    shows_other: bool = False


def fit(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is at most ``max_side`` (keeps the data set small)."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def random_crop(image: Image.Image, rng: random.Random, area: float) -> Image.Image:
    """A crop keeping ``area`` of the pixels, aspect ratio within 3:4..4:3 of the original's."""
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(image.width, round(image.width * math.sqrt(area * aspect)))
    h = min(image.height, round(image.height * math.sqrt(area / aspect)))
    left, top = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
    return image.crop((left, top, left + w, top + h))


def rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    """5 to 15 degrees either way, canvas grown to keep every pixel (black corners)."""
    angle = rng.uniform(5, 15) * rng.choice((-1, 1))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def jitter(image: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation changes and a colour cast, like a photo filter."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    gains = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], dtype=np.float32)
    arr = np.asarray(image, dtype=np.float32) * gains
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Round-trip through JPEG at ``quality`` (for edits chained before other edits)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def downscale(image: Image.Image, rng: random.Random) -> Image.Image:
    """A quarter to a third of the size (a thumbnail someone re-shared)."""
    scale = rng.uniform(0.25, 0.33)
    size = (max(32, round(image.width * scale)), max(32, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def overlay_text(image: Image.Image, rng: random.Random) -> Image.Image:
    """Two or three lines of caption text, a tenth of the image high each, in white with a
    black outline (meme style), covering a band of the picture."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    size = max(12, image.height // 10)
    font = ImageFont.load_default(size=size)
    lines = [" ".join(rng.sample(_WORDS, 3)).upper() for _ in range(rng.randint(2, 3))]
    top = rng.uniform(0.05, 0.55) * image.height
    for i, line in enumerate(lines):
        draw.text(
            (image.width * 0.05, top + i * size * 1.2),
            line,
            font=font,
            fill=(255, 255, 255),
            stroke_width=max(1, size // 12),
            stroke_fill=(0, 0, 0),
        )
    return image


def grayscale(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def inset(image: Image.Image, rng: random.Random, other: Image.Image) -> Image.Image:
    """The photo shrunk to 40-60 % of the width of another photo and pasted into it (a
    screenshot, a collage): a partial copy, which a global embedding finds hardest."""
    canvas = other.convert("RGB")
    scale = rng.uniform(0.4, 0.6) * canvas.width / image.width
    small = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    if small.height > canvas.height:
        small = small.crop((0, 0, small.width, canvas.height))
    left = rng.randint(0, canvas.width - small.width)
    top = rng.randint(0, canvas.height - small.height)
    canvas = canvas.copy()
    canvas.paste(small, (left, top))
    return canvas


def _social(image: Image.Image, rng: random.Random) -> Image.Image:
    image = ImageOps.mirror(random_crop(image, rng, 0.6))
    return overlay_text(jitter(image, rng), rng)


def _degraded(image: Image.Image, rng: random.Random) -> Image.Image:
    return downscale(rotate(random_crop(image, rng, 0.5), rng), rng)


def _ignore_other(edit: Callable[[Image.Image, random.Random], Image.Image]) -> EditFunction:
    return lambda image, rng, other: edit(image, rng)


EDITS: dict[str, Edit] = {
    e.name: e
    for e in (
        Edit("exact copy", lambda im, rng, other: im),
        # The list, one edit at a time.
        Edit("crop 70%", lambda im, rng, other: random_crop(im, rng, 0.7)),
        Edit("crop 50%", lambda im, rng, other: random_crop(im, rng, 0.5)),
        Edit("rotate 5-15deg", _ignore_other(rotate)),
        Edit("mirror", lambda im, rng, other: ImageOps.mirror(im)),
        Edit("colour jitter", _ignore_other(jitter)),
        Edit("jpeg q30", lambda im, rng, other: im, quality=30),
        Edit("downscale 1/4", _ignore_other(downscale)),
        Edit("text overlay", _ignore_other(overlay_text)),
        # Harder: combinations, and edits beyond the list, so that variants can differ.
        Edit("crop+mirror+jitter+text+q30", _ignore_other(_social), quality=30),
        Edit("crop 50%+rotate+downscale+q30", _ignore_other(_degraded), quality=30),
        Edit("crop 30%", lambda im, rng, other: random_crop(im, rng, 0.3)),
        Edit("grayscale", _ignore_other(grayscale)),
        Edit("inset in another photo", inset, shows_other=True),
    )
}
# The exact copy is a sanity check (recall must be 1.0), not a benchmark figure.
DEFAULT_EDITS = tuple(name for name in EDITS if name != "exact copy")


def composite(
    stamp: Image.Image,
    background: Image.Image,
    rng: random.Random,
    size: tuple[int, int],
    scale: tuple[float, float] = (0.45, 0.8),
) -> Image.Image:
    """Paste an RGBA cut-out onto a real-photo background of ``size``.

    The object's longer side is ``scale`` of the canvas' shorter side, at a random place,
    randomly mirrored; its alpha edge is softened by half a pixel so the outline is not a hard
    synthetic giveaway, and the background is a photo (never flat), so the only thing that
    tells images apart is what the object is.
    """
    canvas = background.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        stamp = ImageOps.mirror(stamp)
    bbox = stamp.getchannel("A").getbbox()
    if bbox:
        stamp = stamp.crop(bbox)
    target = rng.uniform(*scale) * min(size)
    factor = target / max(stamp.size)
    stamp = stamp.resize(
        (max(1, round(stamp.width * factor)), max(1, round(stamp.height * factor))),
        Image.Resampling.LANCZOS,
    )
    alpha = stamp.getchannel("A").filter(ImageFilter.GaussianBlur(0.5))
    left = rng.randint(0, max(0, size[0] - stamp.width))
    top = rng.randint(0, max(0, size[1] - stamp.height))
    canvas.paste(stamp.convert("RGB"), (left, top), alpha)
    return canvas
