"""Serving indexed images and their thumbnails, safely.

The only files ever served are those whose ``file://`` URI the index holds for a known asset
id: no path from a request reaches the file system, so there is nothing to traverse. Even so a
library changes under a running server: an indexed file may since have been replaced by a
symbolic link to somewhere else, or by a FIFO. So a file is served only when it resolves inside
one of the configured library roots (``LOOKALIKE_API_LIBRARY_ROOTS``), or when its content still
is the content that was indexed (its SHA-256); it is opened the way ingestion opens files
(regular files only, never past the size limit). Error messages name the asset, not the disk.

Thumbnails go through the same safe decoding as ingestion (pixel limit, EXIF orientation, any
mode to sRGB) and are cached on disk, keyed by the asset's content hash, so a re-indexed file
gets a new one.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from PIL import Image

from pipeline.decode import DecodeError, UnreadableFile, decode_image, file_problem, read_file
from pipeline.discover import uri_to_path
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
    "AVIF": "image/avif",
}


class MediaUnavailable(LookupError):
    """The asset is indexed, but its file cannot be served (the message says why)."""


def image_file(doc: AssetDocument, settings: Settings) -> Path | bytes:
    """What ``GET /assets/{id}/image`` serves: the file's resolved path when it lies inside a
    library root, else its bytes, once they proved to be the indexed content."""
    path = _local_path(doc)
    real = Path(os.path.realpath(path))
    if not _inside_roots(real, settings):
        return _verified_bytes(doc, path, settings)
    if reason := file_problem(real, settings.max_file_bytes):
        raise _unavailable(doc, reason)
    return real


def image_bytes(doc: AssetDocument, settings: Settings) -> bytes:
    """The file's bytes, read safely: inside a library root as they are now, elsewhere only
    while they are the indexed content."""
    path = _local_path(doc)
    if _inside_roots(Path(os.path.realpath(path)), settings):
        return _read(doc, path, settings)
    return _verified_bytes(doc, path, settings)


def _local_path(doc: AssetDocument) -> Path:
    path = uri_to_path(doc.uri)
    if path is None:
        raise MediaUnavailable(f"asset {doc.id} is not a local file; fetch it from its URI")
    return path


def _inside_roots(real: Path, settings: Settings) -> bool:
    return any(real.is_relative_to(os.path.realpath(root)) for root in settings.api_library_roots)


def _read(doc: AssetDocument, path: Path, settings: Settings) -> bytes:
    try:
        return read_file(path, settings.max_file_bytes)
    except UnreadableFile as exc:
        raise _unavailable(doc, str(exc)) from None


def _verified_bytes(doc: AssetDocument, path: Path, settings: Settings) -> bytes:
    data = _read(doc, path, settings)
    if hashlib.sha256(data).hexdigest() != doc.sha256:
        raise MediaUnavailable(
            f"the file of asset {doc.id} changed since it was indexed; ingest it again to serve it"
        )
    return data


def _unavailable(doc: AssetDocument, reason: str) -> MediaUnavailable:
    return MediaUnavailable(f"the file of asset {doc.id} is not available: {reason}")


def media_type(doc: AssetDocument) -> str:
    return MEDIA_TYPES.get(doc.format.upper(), "application/octet-stream")


def thumbnail_path(doc: AssetDocument, settings: Settings) -> Path:
    """Where the thumbnail of ``doc`` is cached: a new file content gets a new name."""
    size = settings.api_thumbnail_size
    return settings.thumbnail_dir / f"{doc.id}-{doc.sha256[:16]}-{size}.jpg"


def make_thumbnail(doc: AssetDocument, settings: Settings, path: Path) -> None:
    """Decode the asset's file safely, shrink it and write the JPEG to ``path``."""
    size = settings.api_thumbnail_size
    try:
        # min_size lets JPEGs decode at a reduced scale: several times faster for big photos.
        image = decode_image(
            image_bytes(doc, settings), max_pixels=settings.max_image_pixels, min_size=size
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
