"""Discover stage: walking, manifests, stable ids and the incremental plan."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline.discover import ManifestError, SourceError, asset_id, path_to_uri, scan


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("one.jpg", "a/two.PNG", "a/b/three.webp", ".hidden/secret.jpg", "notes.txt"):
        (tmp_path / rel).write_bytes(rel.encode())
    return tmp_path


def test_scan_walks_recursively_and_filters(tree: Path) -> None:
    names = [a.path.name for a in scan(tree)]
    assert sorted(names) == ["one.jpg", "three.webp", "two.PNG"]


def test_ids_are_stable_and_derived_from_the_uri(tree: Path) -> None:
    first = {a.uri: a.id for a in scan(tree)}
    (tree / "one.jpg").write_bytes(b"new content")
    second = {a.uri: a.id for a in scan(tree)}
    assert first == second
    assert first[path_to_uri(tree / "one.jpg")] == asset_id(path_to_uri(tree / "one.jpg"))


def test_manifest_csv_adds_metadata_and_reports_missing(tree: Path) -> None:
    manifest = tree / "m.csv"
    pd.DataFrame(
        {
            "path": ["one.jpg", "a/two.PNG", "gone.jpg"],
            "title": ["One", "", "Gone"],
            "keywords": ["cat; pet | sofa", "", "x"],
            "photographer": ["Ann", "Bo", ""],
        }
    ).to_csv(manifest, index=False)
    assets = {a.path.name: a for a in scan(tree, manifest)}
    one = assets["one.jpg"]
    assert one.title == "One" and one.keywords == ("cat", "pet", "sofa")
    assert one.metadata == {"photographer": "Ann"}
    assert assets["two.PNG"].title is None
    assert assets["gone.jpg"].problem == "file not found"
    assert assets["three.webp"].metadata == {}


def test_manifest_parquet_with_list_keywords(tree: Path) -> None:
    manifest = tree / "m.parquet"
    pd.DataFrame(
        {"uri": [path_to_uri(tree / "one.jpg")], "keywords": [["a", "b", "a"]]}
    ).to_parquet(manifest)
    one = next(a for a in scan(tree, manifest) if a.path.name == "one.jpg")
    assert one.keywords == ("a", "b")


def test_manifest_without_path_column_is_a_clear_error(tree: Path) -> None:
    manifest = tree / "m.csv"
    manifest.write_text("name,title\nx,y\n")
    with pytest.raises(ManifestError, match="no path column"):
        scan(tree, manifest)


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="source folder not found"):
        scan(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="source is not a folder"):
        scan(tmp_path / "file.jpg")


_SCAN = """
import sys
from pipeline.discover import SourceError, scan
try:
    print(sorted((a.path.name, a.problem) for a in scan(sys.argv[1])))
except SourceError as exc:
    print(exc)
"""


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A tree that another user can reach (pytest's own temporary folders are private)."""
    base = Path(tempfile.mkdtemp(prefix="lookalike-discover-"))
    base.chmod(0o755)
    (base / "library" / "locked").mkdir(parents=True)
    (base / "library" / "one.jpg").write_bytes(b"one")
    (base / "library" / "locked" / "two.jpg").write_bytes(b"two")
    yield base / "library"
    for folder in (base / "library", base / "library" / "locked"):
        folder.chmod(0o755)
    shutil.rmtree(base)


def scan_unprivileged(source: Path) -> str:
    """What ``scan`` says in a process that cannot read every folder: this user's, or, when the
    tests run as root (root reads even a mode-000 folder), the ``nobody`` user's."""
    drop = []
    if os.geteuid() == 0:
        drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    done = subprocess.run(
        [*drop, sys.executable, "-c", _SCAN, str(source)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return done.stdout.strip()


def test_unreadable_folders_are_reported_never_skipped(shared_tree: Path) -> None:
    """``os.walk`` would skip a folder it cannot list silently: its files would count as
    deleted. A subfolder becomes an asset with the problem (its documents are kept); the
    source folder itself stops the scan."""
    assert scan_unprivileged(shared_tree) == str([("one.jpg", None), ("two.jpg", None)])
    (shared_tree / "locked").chmod(0)
    said = scan_unprivileged(shared_tree)
    assert said.startswith("[('locked', 'cannot list folder") and "('one.jpg', None)" in said
    (shared_tree / "locked").chmod(0o755)
    shared_tree.chmod(0)
    said = scan_unprivileged(shared_tree)
    assert said.startswith(f"cannot read source folder {shared_tree}:"), said
