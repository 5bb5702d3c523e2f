"""The layers of the code (README, "Architecture"), checked with import-linter: the contracts in
pyproject.toml hold, and a contract that the code does break is reported broken, so the check
can fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", *args], cwd=REPO, capture_output=True, text=True
    )


def test_nothing_imports_upwards_and_the_core_imports_no_app() -> None:
    done = lint()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_a_broken_layer_is_reported(tmp_path: Path) -> None:
    """The stores do use the document model: a contract saying they must not is broken."""
    config = tmp_path / "broken.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    pipeline\n\n"
        "[importlinter:contract:x]\nname = stores without documents\ntype = forbidden\n"
        "source_modules =\n    pipeline.store\nforbidden_modules =\n    pipeline.document\n"
    )
    done = lint("--config", str(config))
    assert done.returncode == 1 and "BROKEN" in done.stdout, done.stdout
