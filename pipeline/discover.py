"""Discover stage: find the assets of a source and decide what changed since the last run.

An asset's id is derived from its source URI, so it is stable across content edits; its
fingerprint hashes the content (SHA-256) together with the manifest metadata, so a new photo at
the same path *or* a new title both count as "changed". Files whose size and mtime match what
the store recorded are not even read again: re-running over a large, unchanged library costs a
directory walk, not a full re-hash.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from pipeline.document import StoredState, compute_fingerprint

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
        ".jp2",
        ".j2k",
        ".avif",
        ".heic",
        ".heif",
    }
)
_PATH_COLUMNS = ("path", "uri", "url", "file", "filename")
_KEYWORD_SPLIT = re.compile(r"\s*[,;|]\s*")


class ManifestError(ValueError):
    """The manifest cannot be used; the message says which file and column."""


@dataclass(frozen=True)
class SourceAsset:
    """One file of the source, with its manifest metadata."""

    id: str
    uri: str
    path: Path
    size_bytes: int
    mtime_ns: int
    title: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    exists: bool = True

    def indexed_fields(self) -> dict[str, Any]:
        """The metadata that goes into the fingerprint (and the document)."""
        return {
            "title": self.title,
            "description": self.description,
            "keywords": list(self.keywords),
            "metadata": dict(self.metadata),
        }

    def fingerprint(self, sha256: str) -> str:
        return compute_fingerprint(sha256, self.indexed_fields())


@dataclass
class Plan:
    """What an incremental run has to do."""

    todo: list[SourceAsset]  # new, changed, or not provably unchanged (re-hashed while loading)
    unchanged: int
    deleted: list[str]  # ids in the store whose file is gone from this source


def path_to_uri(path: Path) -> str:
    return path.resolve().as_uri()


def asset_id(uri: str) -> str:
    """A stable, URL-safe id for a source URI."""
    return hashlib.sha256(uri.encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SourceError(OSError):
    """The source folder is missing or cannot be read. Raised before anything is planned: a
    folder scanned as empty, or one whose unreadable subfolder was skipped, would make those
    files count as deleted, and ingestion would remove their documents from the index."""


def _unreadable(exc: OSError) -> None:
    """``os.walk`` skips folders it cannot list unless told otherwise: stop the scan instead."""
    raise SourceError(
        f"cannot read folder {exc.filename}: {exc.strerror}; nothing was changed "
        "(fix its permissions, or the files in it would count as deleted)"
    ) from exc


def scan(
    source: Path,
    manifest: Path | None = None,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> list[SourceAsset]:
    """Every image file under ``source`` (recursively, hidden folders skipped), merged with the
    manifest's rows. Manifest rows may also name files outside ``source``; rows naming missing
    files are returned with ``exists=False`` so they can be reported, not silently dropped."""
    source = Path(source)
    try:
        is_dir = stat.S_ISDIR(source.stat().st_mode)
    except FileNotFoundError:
        raise SourceError(f"source folder not found: {source}") from None
    except OSError as exc:
        raise SourceError(f"cannot read source folder {source}: {exc.strerror}") from exc
    if not is_dir:
        raise SourceError(f"source is not a folder: {source}")
    exts = {e.lower() for e in extensions}
    found: dict[Path, None] = {}
    for root, dirs, files in os.walk(source, onerror=_unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                found[(Path(root) / name).resolve()] = None
    rows = read_manifest(manifest, base=source) if manifest else {}
    assets = []
    for path in {**found, **dict.fromkeys(rows)}:
        meta = rows.get(path, {})
        try:
            st = path.stat()
            size, mtime, exists = st.st_size, st.st_mtime_ns, True
        except FileNotFoundError:
            size, mtime, exists = 0, 0, False
        uri = path_to_uri(path)
        assets.append(
            SourceAsset(
                id=asset_id(uri),
                uri=uri,
                path=path,
                size_bytes=size,
                mtime_ns=mtime,
                exists=exists,
                **meta,
            )
        )
    return sorted(assets, key=lambda a: a.uri)


def read_manifest(manifest: Path, base: Path) -> dict[Path, dict[str, Any]]:
    """Read a CSV or Parquet manifest: one path/uri column, optional ``title``, ``description``,
    ``keywords`` (list, or a string split on , ; |); every other column becomes metadata.
    Relative paths are resolved against the manifest's folder, then against ``base``."""
    manifest = Path(manifest)
    suffix = manifest.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(manifest)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(
                manifest, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False
            )
        else:
            raise ManifestError(f"{manifest}: manifest must be .csv, .tsv or .parquet")
    except (OSError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{manifest}: cannot read manifest: {exc}") from exc
    columns = {c.lower(): c for c in df.columns}
    path_col = next((columns[c] for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise ManifestError(
            f"{manifest}: no path column (expected one of {', '.join(_PATH_COLUMNS)}); "
            f"columns are {list(df.columns)}"
        )
    known = {path_col, *(columns.get(c) for c in ("title", "description", "keywords"))}
    rows: dict[Path, dict[str, Any]] = {}
    for record in df.to_dict(orient="records"):
        path = _resolve(str(record[path_col]), manifest.parent, base)
        rows[path] = {
            "title": _text(record.get(columns.get("title", ""))),
            "description": _text(record.get(columns.get("description", ""))),
            "keywords": _keywords(record.get(columns.get("keywords", ""))),
            "metadata": {
                str(k): str(v) for k, v in record.items() if k not in known and _text(v) is not None
            },
        }
    return rows


def plan(assets: list[SourceAsset], stored: Mapping[str, StoredState], source: Path) -> Plan:
    """Split the scan into work to do, unchanged assets, and ids to delete.

    Only ids whose URI lies under ``source`` (or that the manifest named) can be deleted, so two
    sources ingested into one store never delete each other's assets.
    """
    todo, unchanged = [], 0
    for asset in assets:
        state = stored.get(asset.id)
        if (
            state is not None
            and state.size_bytes == asset.size_bytes
            and state.mtime_ns == asset.mtime_ns
            and state.fingerprint == asset.fingerprint(state.sha256)
        ):
            unchanged += 1
        else:
            todo.append(asset)
    seen = {a.id for a in assets}
    prefix = path_to_uri(Path(source)).rstrip("/") + "/"
    deleted = sorted(i for i, s in stored.items() if i not in seen and s.uri.startswith(prefix))
    return Plan(todo=todo, unchanged=unchanged, deleted=deleted)


def _resolve(value: str, manifest_dir: Path, base: Path) -> Path:
    if value.startswith("file:"):
        return Path(unquote(urlparse(value).path)).resolve()
    if "://" in value:
        raise ManifestError(f"only local files are supported for now, got {value!r}")
    path = Path(value).expanduser()
    if path.is_absolute():
        return path.resolve()
    candidate = manifest_dir / path
    return (candidate if candidate.exists() else base / path).resolve()


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _keywords(value: Any) -> tuple[str, ...]:
    if value is None or isinstance(value, float):
        return ()
    items = value if isinstance(value, list | tuple) or hasattr(value, "tolist") else None
    if items is None:
        items = _KEYWORD_SPLIT.split(str(value))
    elif hasattr(items, "tolist"):
        items = items.tolist()
    return tuple(dict.fromkeys(s for s in (str(i).strip() for i in items) if s))
