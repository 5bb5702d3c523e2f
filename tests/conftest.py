"""Shared fixtures: an isolated LOOKALIKE_HOME, the real model, the real sample library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nodes
import pytest

from pipeline.settings import get_settings


@pytest.fixture(scope="session", autouse=True)
def lookalike_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs against a throw-away home: no test touches ~/.lookalike."""
    from pipeline.embed import _cached_embedder

    home = tmp_path_factory.mktemp("lookalike_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_HOME", str(home))
        get_settings.cache_clear()
        _cached_embedder.cache_clear()
        yield home
    get_settings.cache_clear()
    _cached_embedder.cache_clear()


@pytest.fixture(scope="session")
def embedder(lookalike_home: Path):
    """The default embedder, converted from the torch checkpoint once per session."""
    from pipeline.embed import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def reference(embedder):
    """The default model on TensorFlow, the reference backend, from the session's caches."""
    from pipeline.embed import Embedder

    settings = get_settings()
    return Embedder.load(
        embedder.spec, settings.model_dir, settings.region_levels, backend="tensorflow"
    )


@pytest.fixture(scope="session")
def sample_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample library (read-only for tests: copy it before changing files)."""
    from pipeline.samples import build_samples

    return build_samples(tmp_path_factory.mktemp("samples"))


def _node_fixture(distribution: str):
    """A session-wide real node (see tests/nodes.py); started at most once, stopped at the end."""

    @pytest.fixture(scope="session")
    def node() -> Iterator[nodes.Node]:
        try:
            found = nodes.session_node(distribution)
        except nodes.NodeUnavailable as exc:
            nodes.unavailable(str(exc))
        yield found
        if found.close is not None:
            found.close()

    return node


opensearch_node = _node_fixture("opensearch")
elasticsearch_node = _node_fixture("elasticsearch")
