"""Ingestion survives hostile files (issue 11): each defect found in a hostile library, as the
smallest library that showed it, ingested for real (real model, real store, real files)."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import pytest
from hostile import encode, many_frames_gif, photo
from PIL import Image
from support import LOOKALIKE, cli_env, run_measured, unprivileged
from typer.testing import CliRunner

from lookalike_cli import app
from pipeline.discover import path_to_uri
from pipeline.document import IngestSummary
from pipeline.ingest import ingest
from pipeline.library import Library
from pipeline.settings import Settings, get_settings
from search_api import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow

GOOD = encode(photo(seed=1), "JPEG")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home", batch_size=4, api_allowed_hosts=["testserver", "127.0.0.1"]
    )


def run(library: Path, settings: Settings, embedder, **kwargs) -> tuple[IngestSummary, Library]:
    """One ingest; the library it wrote (open: the caller may read it)."""
    opened = Library.open(settings)
    summary = ingest(library, library=opened, embedder=embedder, settings=settings, **kwargs)
    return summary, opened


def outcome(library: Library) -> tuple[set[str], dict[str, str]]:
    """File names indexed, and file name -> quarantine reason."""
    indexed = {s.uri.rsplit("/", 1)[-1] for s in library.index().states().values()}
    records = library.quarantine.records()
    return indexed, {r.uri.rsplit("/", 1)[-1]: r.reason for r in records}


def library_of(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


# 1 -------------------------------------------------------------------------------------------
def test_a_truncated_png_is_quarantined_and_the_run_goes_on(tmp_path, settings, embedder):
    png = encode(photo((200, 200), seed=3), "PNG")
    cut = png[: png.index(b"IDAT") + 200]  # signature and IHDR intact, IDAT cut short
    library = library_of(tmp_path / "lib", {"a_cut.png": cut, "b.jpg": GOOD, "c.png": png})
    summary, store = run(library, settings, embedder)
    indexed, quarantined = outcome(store)
    assert indexed == {"b.jpg", "c.png"} and summary.new == 2
    assert "OSError" in quarantined["a_cut.png"] and "truncated" in quarantined["a_cut.png"]


# 2 -------------------------------------------------------------------------------------------
def test_symlink_loops_are_quarantined_not_fatal(tmp_path, settings, embedder):
    library = library_of(tmp_path / "lib", {"ok.jpg": GOOD})
    (library / "a.jpg").symlink_to("b.jpg")
    (library / "b.jpg").symlink_to("a.jpg")
    (library / "self.jpg").symlink_to("self.jpg")
    _, store = run(library, settings, embedder)
    indexed, quarantined = outcome(store)
    assert indexed == {"ok.jpg"}
    assert quarantined == dict.fromkeys(["a.jpg", "b.jpg", "self.jpg"], "symbolic link loop")


# 3, 4 ----------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_fifo_and_a_link_to_dev_zero_are_never_read(tmp_path, settings, embedder):
    library = library_of(tmp_path / "lib", {"ok.jpg": GOOD})
    os.mkfifo(library / "x.jpg")
    (library / "zero.png").symlink_to("/dev/zero")
    _, store = run(library, settings, embedder)
    indexed, quarantined = outcome(store)
    assert indexed == {"ok.jpg"}
    assert quarantined == {
        "x.jpg": "not a regular file: a FIFO (named pipe)",
        "zero.png": "not a regular file: a character device",
    }


# the decode time limit -------------------------------------------------------------------------
def test_a_file_that_decodes_too_long_is_quarantined_without_stopping_the_run(
    tmp_path, settings, embedder
):
    # A million 1x1 frames: walking them takes seconds, ten times the limit set here.
    slow = many_frames_gif(1_000_000)
    library = library_of(tmp_path / "lib", {"a_slow.gif": slow, "b.jpg": GOOD, "c.jpg": GOOD})
    settings = settings.model_copy(update={"decode_timeout_s": 0.5, "decode_workers": 1})
    _, store = run(library, settings, embedder)
    indexed, quarantined = outcome(store)
    assert indexed == {"b.jpg", "c.jpg"}, "the one worker was replaced and went on"
    assert "longer than 0.5 s" in quarantined["a_slow.gif"]
    record = next(r for r in store.quarantine.records() if r.uri.endswith("a_slow.gif"))
    assert record.sha256, "hashed, so that it is not decoded again until it changes"
    again, _ = run(library, settings, embedder)
    assert again.quarantined == [] and again.quarantined_earlier == 1


# 7 -------------------------------------------------------------------------------------------
def test_a_removed_symlink_to_an_outside_file_loses_its_document(tmp_path, settings, embedder):
    outside = library_of(tmp_path / "elsewhere", {"photo.jpg": GOOD})
    library = library_of(tmp_path / "lib", {"own.jpg": encode(photo(seed=5), "JPEG")})
    (library / "link.jpg").symlink_to(outside / "photo.jpg")
    first, store = run(library, settings, embedder)
    assert first.new == 2
    assert path_to_uri(library / "link.jpg") in {s.uri for s in store.index().states().values()}
    (library / "link.jpg").unlink()
    second, _ = run(library, settings, embedder)
    assert second.deleted == 1 and store.index().count() == 1


# 8, 9 ----------------------------------------------------------------------------------------
def test_unreadable_files_and_folders_are_retried_and_lose_nothing(tmp_path, embedder):
    """``lookalike ingest`` as a process that file permissions apply to: an unreadable file is
    quarantined, then indexed by the next run once readable (chmod changes neither size nor
    mtime); a folder that cannot be listed deletes none of the documents under it."""
    library = library_of(tmp_path / "lib", {"ok.jpg": GOOD, "private.jpg": GOOD})
    (library / "album").mkdir()
    (library / "album" / "a.jpg").write_bytes(encode(photo(seed=4), "JPEG"))
    (library / "private.jpg").chmod(0)
    env = cli_env(tmp_path / "home", get_settings().model_dir)
    command = unprivileged([str(LOOKALIKE), "ingest", str(library), "--json"])
    first = run_measured(command, env, timeout_s=300)
    assert first.code == 3, first.stderr  # finished with quarantined items
    assert json.loads(first.stdout)["quarantined"] == [
        {"uri": path_to_uri(library / "private.jpg"), "reason": "permission denied"}
    ]
    (library / "private.jpg").chmod(0o644)
    (library / "album").chmod(0)
    try:
        second = run_measured(command, env, timeout_s=300)
    finally:
        (library / "album").chmod(0o755)
    assert second.code == 3, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["new"], summary["deleted"]) == (1, 0), "retried; nothing deleted"
    [folder] = summary["quarantined"]
    assert folder["uri"] == path_to_uri(library / "album")
    assert "cannot list folder" in folder["reason"]
    third = run_measured(command, env, timeout_s=300)
    assert third.code == 0, third.stderr  # every file indexed
    summary = json.loads(third.stdout)
    assert (summary["outcome"], summary["deleted"]) == ("indexed", 1)  # the folder's entry
    with Library.open(Settings(home=tmp_path / "home")) as store:
        assert store.quarantine.records() == [] and store.index().count() == 3


def test_ingest_exit_codes(tmp_path, embedder, monkeypatch):
    library = library_of(tmp_path / "lib", {"ok.jpg": GOOD, "empty.jpg": b""})
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "models").symlink_to(get_settings().model_dir)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        quarantined = runner.invoke(app, ["ingest", str(library)])
        assert quarantined.exit_code == 3, quarantined.output
        assert "quarantined 1" in quarantined.output
        unchanged = runner.invoke(app, ["ingest", str(library), "--json"])
        assert unchanged.exit_code == 3, "the empty file is still not indexed"
        assert json.loads(unchanged.output)["quarantined_earlier"] == 1
        (library / "empty.jpg").unlink()
        clean = runner.invoke(app, ["ingest", str(library), "--json"])
        assert clean.exit_code == 0, clean.output
        assert json.loads(clean.output)["outcome"] == "indexed"
        monkeypatch.setenv("LOOKALIKE_HOME", str(library / "ok.jpg"))  # a file: no store there
        get_settings.cache_clear()
        failed = runner.invoke(app, ["ingest", str(library)])
        assert failed.exit_code == 1, failed.output
        assert "Traceback" not in failed.output and "error" in failed.output
    finally:
        get_settings.cache_clear()


# 10 ------------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for kill -9: nothing after the point where it is raised runs."""


@pytest.mark.parametrize("kill_at", ["planned", "first batch", "last batch"])
def test_a_rerun_after_a_kill_leaves_the_store_an_uninterrupted_run_leaves(
    tmp_path, embedder, sample_manifest: Path, kill_at: str
):
    library = sample_manifest.parent / "copies"

    def killer(done: int, total: int) -> None:
        point = {"planned": 0, "first batch": 4, "last batch": total}[kill_at]
        if done == point:
            raise Killed

    clean_settings = Settings(home=tmp_path / "clean", batch_size=4)
    _, clean_store = run(library, clean_settings, embedder)
    settings = Settings(home=tmp_path / "killed", batch_size=4)
    with pytest.raises(Killed):
        run(library, settings, embedder, on_progress=killer)
    with Library.open(settings) as opened:
        killed = opened.runs.runs()
    assert [(r.outcome, r.run_id) for r in killed][:1] == [("running", killed[0].run_id)]
    rerun, store = run(library, settings, embedder)
    assert rerun.outcome == "indexed"
    assert _contents(store) == _contents(clean_store)
    assert _indexes(store) == _indexes(clean_store)
    outcomes = {r.run_id: r.outcome for r in store.runs.runs()}
    assert outcomes[killed[0].run_id] == "interrupted"
    version = store.index().table.version
    idle, _ = run(library, settings, embedder)
    assert store.index().table.version == version and idle.outcome == "indexed"


def _contents(library: Library) -> dict[str, tuple]:
    rows = library.index().table.search().limit(None).to_arrow().to_pylist()
    return {
        r["uri"]: (
            r["sha256"],
            r["fingerprint"],
            r["label_keys"],
            tuple(round(x, 4) for x in r["embedding"]),
        )
        for r in rows
    }


def _indexes(library: Library) -> dict[str, tuple[str, int]]:
    """Each index, with the rows it does not cover yet (all must be covered)."""
    table = library.index().table
    return {
        i.name: (i.index_type, table.index_stats(i.name).num_unindexed_rows)
        for i in table.list_indices()
    }


# 6 -------------------------------------------------------------------------------------------
def test_images_and_thumbnails_are_served_whatever_bytes_the_name_holds(
    tmp_path, settings, embedder
):
    names = [b"latin1-\xe9t\xe9.jpg", b"two\nlines.jpg", b"100% #1 ?q=a&b.jpg", b"sp ace.jpg"]
    library = tmp_path / "lib"
    library.mkdir()
    for i, name in enumerate(names):
        (library / os.fsdecode(name)).write_bytes(encode(photo(seed=20 + i), "JPEG"))
    summary, store = run(library, settings, embedder)
    assert summary.new == len(names)
    with TestClient(create_app(settings)) as client:
        for name in names:
            path = library / os.fsdecode(name)
            states = store.index().states().items()
            asset_id = next(i for i, s in states if s.uri == path_to_uri(path))
            image = client.get(f"/assets/{asset_id}/image")
            assert image.status_code == 200, (name, image.text)
            assert image.content == path.read_bytes()
            thumb = client.get(f"/assets/{asset_id}/thumbnail")
            assert thumb.status_code == 200, (name, thumb.text)
            assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
