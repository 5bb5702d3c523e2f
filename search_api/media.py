"""Serving indexed images and their thumbnails, safely.

The only files ever served are those whose ``file://`` URI the index holds for a known asset
id: no path from a request reaches the file system, so there is nothing to traverse. Thumbnails
go through the same safe decoding as ingestion (pixel limit, EXIF orientation, any mode to sRGB)
and are cached on disk, keyed by the asset's content hash, so a re-indexed file gets a new one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from PIL import Image

from pipeline.decode import DecodeError, decode_image
from pipeline.document import AssetDocument
from pipeline.settings import Settings

# Pillow format name -> the media type browsers know it by.
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "ICO": "image/x-icon",
}


class MediaUnavailable(LookupError):
    """The asset is indexed, but its file cannot be served (the message says why)."""


def local_file(doc: AssetDocument) -> Path:
    """The file behind an indexed asset, if it is a local file that still exists."""
    uri = urlparse(doc.uri)
    if uri.scheme != "file" or uri.netloc not in ("", "localhost"):
        raise MediaUnavailable(
            f"asset {doc.id} is not a local file ({uri.scheme or 'no'} URI); fetch it from its URI"
        )
    path = Path(url2pathname(uri.path))
    if not path.is_absolute() or not path.is_file():
        raise MediaUnavailable(f"the file of asset {doc.id} is no longer at {doc.uri}")
    return path


def media_type(doc: AssetDocument) -> str:
    return MEDIA_TYPES.get(doc.format.upper(), "application/octet-stream")


def thumbnail_path(doc: AssetDocument, settings: Settings) -> Path:
    """Where the thumbnail of ``doc`` is cached: a new file content gets a new name."""
    size = settings.api_thumbnail_size
    return settings.thumbnail_dir / f"{doc.id}-{doc.sha256[:16]}-{size}.jpg"


def make_thumbnail(doc: AssetDocument, settings: Settings, path: Path) -> None:
    """Decode the asset's file safely, shrink it and write the JPEG to ``path``."""
    size = settings.api_thumbnail_size
    source = local_file(doc)
    if source.stat().st_size > settings.max_file_bytes:
        raise MediaUnavailable(f"the file of asset {doc.id} is larger than ingestion accepts")
    try:
        # min_size lets JPEGs decode at a reduced scale: several times faster for big photos.
        image = decode_image(
            source.read_bytes(), max_pixels=settings.max_image_pixels, min_size=size
        ).image
    except DecodeError as exc:
        raise MediaUnavailable(f"the file of asset {doc.id} cannot be decoded: {exc}") from None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    _write_atomically(image, path)


def _write_atomically(image: Image.Image, path: Path) -> None:
    """Concurrent requests for the same thumbnail each write a private file and rename it:
    readers see no file or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")
    try:
        image.save(tmp, format="JPEG", quality=85, optimize=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
