"""`lookalike ingest` over a library of every kind of odd and hostile file (tests/hostile.py):
the run completes with the documented exit code, every file ends indexed or quarantined with
its reason, peak memory stays bounded, and a re-run after the files were fixed indexes them.

The CLI runs as a user would run it, in its own process, which file permissions apply to (as
root: without the capabilities that bypass them), so unreadable files really are unreadable.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hostile import MAX_FILE_BYTES, MAX_PIXELS, build_library
from support import LOOKALIKE, cli_env, run_measured, unprivileged

from pipeline.discover import path_to_uri
from pipeline.library import Library
from pipeline.settings import Settings, get_settings

pytestmark = pytest.mark.slow

# The whole run peaked at 1.2 GB here: the CLI process holds TensorFlow and the model; a worker
# decoding one file at the pixel limit takes a few hundred megabytes. Reading /dev/zero to the
# end, or decoding a bomb, would go far beyond.
PEAK_RSS_LIMIT = 2 * 2**30
LIMITS = {"max_image_pixels": MAX_PIXELS, "max_file_bytes": MAX_FILE_BYTES, "batch_size": 16}


def test_every_hostile_kind_ends_indexed_or_quarantined(tmp_path: Path, embedder) -> None:
    library = tmp_path / "library"
    expected = build_library(library)
    assert len({e.kind for e in expected}) >= 60
    home = tmp_path / "home"
    env = cli_env(home, get_settings().model_dir, **LIMITS)
    command = unprivileged([str(LOOKALIKE), "ingest", str(library), "--json"])

    first = run_measured(command, env, timeout_s=300)
    assert first.code == 3, first.stderr  # finished, with quarantined files
    assert "Traceback" not in first.stderr
    summary = json.loads(first.stdout)
    assert summary["outcome"] == "quarantined"
    settings = Settings(home=home, **LIMITS)
    store = Library.open(settings)
    indexed = _indexed_uris(store)
    quarantined = {r.uri: r.reason for r in store.quarantine.records()}
    assert {q["uri"]: q["reason"] for q in summary["quarantined"]} == quarantined
    wrong = []
    for e in expected:
        uri = path_to_uri(e.path)
        if e.outcome == "indexed" and uri not in indexed:
            wrong.append(f"{e.kind}: not indexed ({quarantined.get(uri, 'not seen')})")
        if e.outcome == "quarantined" and e.reason.lower() not in quarantined.get(uri, "").lower():
            wrong.append(
                f"{e.kind}: expected quarantine for {e.reason!r}, got {quarantined.get(uri)}"
            )
    assert not wrong, "\n".join(wrong)
    assert all(quarantined.values()), "every quarantine entry says why"
    assert len(indexed) == summary["new"] == sum(e.outcome == "indexed" for e in expected)
    print(f"{len(expected)} files, peak {first.peak_rss_bytes / 2**20:.0f} MiB")
    assert first.peak_rss_bytes < PEAK_RSS_LIMIT, first.peak_rss_bytes

    again = run_measured(command, env, timeout_s=300)
    assert again.code == 3, again.stderr  # the quarantined files are still there
    rerun = json.loads(again.stdout)
    assert (rerun["new"], rerun["updated"], rerun["deleted"], rerun["quarantined"]) == (0, 0, 0, [])
    assert rerun["quarantined_earlier"] == len(quarantined)

    # Fix the transient problems: the files become readable. The next run retries them.
    (library / "private" / "no_read.jpg").chmod(0o644)
    (library / "locked").chmod(stat.S_IRWXU)
    fixed = run_measured(command, env, timeout_s=300)
    assert fixed.code == 3, fixed.stderr
    after = json.loads(fixed.stdout)
    assert after["new"] == 2 and after["deleted"] == 1  # the folder's own quarantine entry
    now_indexed = _indexed_uris(store)
    for path in (library / "private" / "no_read.jpg", library / "locked" / "inside.jpg"):
        assert path_to_uri(path) in now_indexed
    left = {r.uri for r in store.quarantine.records()}
    store.close()
    assert path_to_uri(library / "private" / "no_read.jpg") not in left
    assert path_to_uri(library / "locked") not in left


def _indexed_uris(library: Library) -> set[str]:
    return {s.uri for s in library.index().states().values()}
