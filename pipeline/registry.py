"""Numbered versions in a folder: how trained models and custom tag classifiers are kept.

Each version is a folder ``<root>/<name>/<N>/`` holding a marker file (its JSON record) and
whatever else it needs. A version is written into a temporary folder beside it and renamed into
place, so a reader never sees half of one and a crash leaves nothing behind but a hidden
temporary folder; a version that exists is never overwritten.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def versions(folder: Path, marker: str) -> list[int]:
    """The complete versions under ``folder`` (those with their ``marker`` file), oldest
    first."""
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / marker).is_file()
    )


def names(root: Path) -> list[str]:
    """The names with a folder under ``root``, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@contextmanager
def new_version(target: Path) -> Iterator[Path]:
    """A temporary folder to write a version into; renamed to ``target`` when the block ends
    without an error, removed otherwise. ``FileExistsError`` when ``target`` exists."""
    if target.exists():
        raise FileExistsError(f"version {target.name} exists already in {target.parent}")
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
