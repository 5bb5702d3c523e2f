"""Decode stage: turn untrusted file bytes into an RGB image, or a clear reason why not.

Media libraries contain everything: CMYK scans, 16-bit TIFFs, palette GIFs with transparency,
phone photos that rely on EXIF orientation, truncated uploads and files that are not images at
all. Every one of them must either become a correct RGB image or a ``DecodeError`` whose message
is fit for a quarantine report; nothing here may crash a batch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_SRGB = ImageCms.createProfile("sRGB")


class DecodeError(ValueError):
    """The bytes cannot be indexed; the message is the quarantine reason."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus the facts about the original worth storing."""

    image: Image.Image
    width: int
    height: int
    format: str
    frames: int = 1


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_size: int | None = None,
) -> DecodedImage:
    """Decode ``data`` into an upright RGB image.

    ``max_pixels`` guards against decompression bombs *before* any pixel is decoded.
    ``min_size`` enables JPEG draft decoding: the DCT is scaled down (1/2, 1/4, 1/8) as long as
    both sides stay >= ``min_size``, which is several times faster for large photos and loses
    nothing when the model only needs e.g. a 256-pixel short side.
    """
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns at its own limit; our explicit check below gives the real answer.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from None
    except Exception as exc:
        raise DecodeError(f"cannot open image: {exc}") from None

    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(
            f"decompression bomb guard: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels}"
        )
    fmt = im.format or "unknown"
    frames = getattr(im, "n_frames", 1)
    if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # 90/270-degree turns
        width, height = height, width
    try:
        if min_size and fmt == "JPEG":
            im.draft("RGB", (min_size, min_size))
        im.load()  # animated images: Image.open leaves the first frame selected
        im = ImageOps.exif_transpose(im)
        rgb = to_rgb(im)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"corrupt or truncated image data: {exc}") from None
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, frames=frames)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit sRGB, compositing transparency onto white."""
    icc = im.info.get("icc_profile")
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = Image.fromarray(_to_uint8(np.asarray(im)), mode="L")
        mode = "L"
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, (*_WHITE, 255))
        im = Image.alpha_composite(background, im)
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        im = _icc_to_srgb(im, icc)
    return im if im.mode == "RGB" else im.convert("RGB")


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Colour-manage with the embedded profile (Adobe RGB, CMYK press profiles...).

    A broken profile is not worth quarantining the image for: fall back to Pillow's plain
    conversion, which is what most viewers show anyway.
    """
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(
            im.convert("RGB") if im.mode == "RGBA" else im, src, _SRGB, outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale high-bit-depth grey to 8 bits: 16-bit by its full range, floats by min/max."""
    if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0:
        if arr.max() <= 255:
            return arr.astype(np.uint8)
        if arr.dtype == np.uint16 or arr.max() <= 65535:
            return (arr.astype(np.uint32) // 257).astype(np.uint8)
    arr = arr.astype(np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
