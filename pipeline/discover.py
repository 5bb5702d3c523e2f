"""Discover stage: find the assets of a source and decide what changed since the last run.

An asset's id is derived from its source URI, so it is stable across content edits; its
fingerprint hashes the content (SHA-256) together with the manifest metadata, so a new photo at
the same path *or* a new title both count as "changed". Files whose size and mtime match what
the store recorded are not even read again: re-running over a large, unchanged library costs a
directory walk, not a full re-hash.

Files are tracked by the path the user sees, symbolic links included: a link is its own asset,
under the library, however far away its target lies, so removing the link removes its document.
The walk never follows a path into trouble: loops, broken links, FIFOs, devices, sockets,
unreadable files and folders become assets with a ``problem`` (quarantined with that reason),
and the documents under a folder that cannot be listed are kept, not deleted.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

import pandas as pd

from pipeline.decode import file_problem
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
    """One file of the source, with its manifest metadata.

    ``problem`` says why the file cannot be read, found by the scan without opening it (a
    missing file, a loop, a FIFO...); ``folder`` marks a folder that could not be listed.
    """

    id: str
    uri: str
    size_bytes: int
    mtime_ns: int
    title: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None
    folder: bool = False

    @property
    def path(self) -> Path:
        """The local path of ``uri``; kept out of the fields so that an asset serialises to
        JSON (an Airflow XCom) whatever bytes its file name holds."""
        path = uri_to_path(self.uri)
        if path is None:
            raise ValueError(f"not a local file URI: {self.uri}")
        return path

    def indexed_fields(self) -> dict[str, Any]:
        """The metadata that goes into the fingerprint (and the document)."""
        return {
            "title": self.title,
            "description": self.description,
            "keywords": list(self.keywords),
            "metadata": dict(self.metadata),
        }

    def fingerprint(self, sha256: str) -> str:
        """Content hash plus metadata. A file the scan found unreadable has no content hash:
        its ``problem`` stands in for it, so the same problem found again is an unchanged asset
        (nothing is rewritten) and a different one is a change."""
        fields = self.indexed_fields()
        if not sha256 and self.problem:
            fields["problem"] = self.problem
        return compute_fingerprint(sha256, fields)


@dataclass
class Plan:
    """What an incremental run has to do."""

    todo: list[SourceAsset]  # new, changed, or not provably unchanged (re-hashed while loading)
    unchanged: int
    deleted: list[str]  # ids in the store whose file is gone from this source
    quarantined_earlier: int = 0  # unchanged assets that an earlier run quarantined


def path_to_uri(path: Path) -> str:
    """The ``file://`` URI of ``path`` as the user spells it (absolute, symbolic links kept),
    percent-encoding the exact bytes of its name (any bytes, not only UTF-8)."""
    return Path(os.path.abspath(path)).as_uri()


def uri_to_path(uri: str) -> Path | None:
    """The local path a ``file://`` URI names (the inverse of :func:`path_to_uri`, byte for
    byte), or ``None`` for any other URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return Path(os.fsdecode(unquote_to_bytes(parsed.path)))


def asset_id(uri: str) -> str:
    """A stable, URL-safe id for a source URI."""
    return hashlib.sha256(uri.encode()).hexdigest()[:32]


class SourceError(OSError):
    """The source folder is missing or cannot be listed. Raised before anything is planned: a
    source scanned as empty would make every file count as deleted, and ingestion would
    remove their documents from the index. (A subfolder that cannot be listed is an asset with
    a ``problem`` instead: the run goes on and keeps the documents under it.)"""


def scan(
    source: Path,
    manifest: Path | None = None,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    max_file_bytes: int = sys.maxsize,
) -> list[SourceAsset]:
    """Every image file under ``source`` (recursively, hidden folders skipped), merged with the
    manifest's rows. Manifest rows may also name files outside ``source``. Nothing is opened:
    each path is only checked (:func:`pipeline.decode.file_problem`); one that cannot be read,
    and each folder that cannot be listed, is returned with its ``problem`` so that it is
    reported, not silently dropped (``max_file_bytes`` makes a larger file such a problem).
    Symbolic links to folders are not followed. ``SourceError`` when ``source`` itself is
    missing, not a folder, or cannot be listed."""
    source = Path(os.path.abspath(source))
    if not source.exists():
        raise SourceError(f"source folder not found: {source}")
    if not source.is_dir():
        raise SourceError(f"source is not a folder: {source}")
    try:
        os.scandir(source).close()
    except OSError as exc:
        raise SourceError(
            f"cannot read source folder {source}: {exc.strerror}; nothing was changed"
        ) from exc
    exts = {e.lower() for e in extensions}
    found: dict[Path, None] = {}
    unlisted: list[OSError] = []
    for root, dirs, files in os.walk(source, onerror=unlisted.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                found[Path(root) / name] = None
    rows = read_manifest(manifest, base=source) if manifest else {}
    assets = [_folder_asset(exc) for exc in unlisted]
    for path in {**found, **dict.fromkeys(rows)}:
        meta = rows.get(path, {})
        problem = file_problem(path, max_file_bytes)
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        uri = path_to_uri(path)
        assets.append(
            SourceAsset(
                id=asset_id(uri),
                uri=uri,
                size_bytes=size,
                mtime_ns=mtime,
                problem=problem,
                **meta,
            )
        )
    return sorted(assets, key=lambda a: a.uri)


def _folder_asset(exc: OSError) -> SourceAsset:
    """A folder ``os.walk`` could not list, as an asset that is quarantined with the reason."""
    uri = path_to_uri(Path(os.fsdecode(exc.filename)))
    reason = exc.strerror.lower() if exc.strerror else type(exc).__name__
    return SourceAsset(
        id=asset_id(uri),
        uri=uri,
        size_bytes=0,
        mtime_ns=0,
        problem=f"cannot list folder: {reason}; the files in it are neither indexed nor deleted",
        folder=True,
    )


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

    A file quarantined without being read (its record has no content hash: permission denied,
    an I/O error, a FIFO...) is retried as soon as the scan finds nothing wrong with it, even if
    its size and mtime did not change (``chmod`` changes neither).

    Only ids whose URI lies under ``source`` (or that the manifest named) can be deleted, so two
    sources ingested into one store never delete each other's assets; nor can ids under a folder
    that could not be listed this time (its files may well still be there).
    """
    todo, unchanged, quarantined_earlier = [], 0, 0
    for asset in assets:
        state = stored.get(asset.id)
        if (
            state is not None
            and state.size_bytes == asset.size_bytes
            and state.mtime_ns == asset.mtime_ns
            and state.fingerprint == asset.fingerprint(state.sha256)
            and not (state.quarantined and not state.sha256 and asset.problem is None)
        ):
            unchanged += 1
            quarantined_earlier += state.quarantined
        else:
            todo.append(asset)
    seen = {a.id for a in assets}
    prefix = path_to_uri(Path(source)).rstrip("/") + "/"
    unlisted = tuple(a.uri.rstrip("/") + "/" for a in assets if a.folder)
    deleted = sorted(
        i
        for i, s in stored.items()
        if i not in seen and s.uri.startswith(prefix) and not s.uri.startswith(unlisted)
    )
    return Plan(
        todo=todo, unchanged=unchanged, deleted=deleted, quarantined_earlier=quarantined_earlier
    )


def _resolve(value: str, manifest_dir: Path, base: Path) -> Path:
    """A manifest row's file, spelled as the scan spells the files it finds (absolute, symbolic
    links kept), so a row and the file it names meet."""
    if value.startswith("file:"):
        path = uri_to_path(value)
        if path is None:
            raise ManifestError(f"only local files are supported for now, got {value!r}")
        return Path(os.path.abspath(path))
    if "://" in value:
        raise ManifestError(f"only local files are supported for now, got {value!r}")
    path = Path(value).expanduser()
    if path.is_absolute():
        return Path(os.path.abspath(path))
    candidate = manifest_dir / path
    return Path(os.path.abspath(candidate if os.path.lexists(candidate) else base / path))


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
