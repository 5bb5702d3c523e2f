"""Real search nodes for the tests: OpenSearch and Elasticsearch, never a stand-in.

A node comes from, in this order:

1. ``LOOKALIKE_TEST_OPENSEARCH_URL`` / ``LOOKALIKE_TEST_ELASTICSEARCH_URL``: a node that is
   already running (``.ci/run`` starts them with ``scripts/opensearch.sh`` and sets these);
2. OpenSearch only, where a Docker engine answers: the image docker-compose.yml pins, with the
   security plugin on (TLS, basic auth), through testcontainers;
3. ``scripts/opensearch.sh start``: a node put together from Maven Central, started here and
   stopped when the test session ends (needs Maven and Java 21; the first start downloads
   about 200 MB into the cache, later starts take seconds).

Where neither works the tests that need the node skip with the reason, except when
``LOOKALIKE_REQUIRE_OPENSEARCH=1`` (CI): then they fail, so CI can never skip them silently.
Tests that need a node of their own (a tiny write queue, a two-node cluster to kill a node of)
start it with ``start()`` and stop it themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "opensearch.sh"
REQUIRED = os.environ.get("LOOKALIKE_REQUIRE_OPENSEARCH") == "1"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKER_ADMIN_PASSWORD = "Lookalike-Test-2026!"
Distribution = Literal["opensearch", "elasticsearch"]

# What a node from the script needs in the store settings: no security plugin (plain HTTP, no
# auth) and, for OpenSearch, the pure-Java lucene engine (the Maven k-NN zip has no faiss).
# Elasticsearch's integ-test zip lacks the analysis-common module, so no `cjk` analyzer there.
SCRIPT_NODE_SETTINGS: dict[Distribution, dict[str, Any]] = {
    "opensearch": {"cluster_user": None, "opensearch_engine": "lucene"},
    "elasticsearch": {"cluster_user": None, "text_analyzer": "standard"},
}


class NodeUnavailable(RuntimeError):
    """No node could be had; the message says why."""


@dataclass
class Node:
    """A running node (or cluster) and the store settings that reach it."""

    url: str
    distribution: Distribution
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    """The script's cluster name, when this session started it."""
    close: Callable[[], None] | None = None
    """Stops the node, when this session started it."""

    @property
    def store(self) -> str:
        return self.distribution

    def settings(self, home: Path, **overrides: Any) -> Settings:
        """Store settings for this node, with ``home`` for everything local."""
        return Settings(
            home=home,
            store=self.distribution,
            **{"cluster_urls": self.url, **self.overrides, **overrides},
        )

    def env(self) -> dict[str, str]:
        """The same settings as ``LOOKALIKE_*`` variables, for the CLI, the API and Airflow."""
        env = {"LOOKALIKE_STORE": self.distribution, "LOOKALIKE_CLUSTER_URLS": self.url}
        for key, value in self.overrides.items():
            env[f"LOOKALIKE_{key.upper()}"] = "" if value is None else str(value)
        return env


def _script(*args: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeUnavailable(f"scripts/opensearch.sh {' '.join(args)} timed out") from exc
    if done.returncode != 0:
        raise NodeUnavailable(
            f"scripts/opensearch.sh {' '.join(args)} failed: {done.stderr.strip()[-2000:]}"
        )
    return done.stdout.strip()


def start(
    name: str,
    distribution: Distribution = "opensearch",
    *,
    nodes: int = 1,
    node: int | None = None,
    node_settings: dict[str, str] | None = None,
) -> Node:
    """Start a node (or a cluster of ``nodes``, or restart one ``node`` of it) with the script."""
    args = ["start", "--name", name, "--distribution", distribution, "--nodes", str(nodes)]
    if node is not None:
        args += ["--node", str(node)]
    for key, value in (node_settings or {}).items():
        args += ["-E", f"{key}={value}"]
    url = _script(*args).splitlines()[-1]
    return Node(url, distribution, dict(SCRIPT_NODE_SETTINGS[distribution]), name)


def stop(name: str, node: int | None = None) -> None:
    _script("stop", "--name", name, *(["--node", str(node)] if node else []))


def kill(name: str, node: int) -> None:
    """``kill -9`` one node of a cluster the script started (a crash, not a shutdown)."""
    pid_file = Path(_run_dir()) / name / f"node-{node}" / "pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _run_dir() -> str:
    return os.environ.get(
        "LOOKALIKE_NODE_RUN", f"{os.environ.get('TMPDIR', '/tmp')}/lookalike-nodes-{os.getuid()}"
    )


def session_node(distribution: Distribution) -> Node:
    """The node a whole test session shares: from the environment, else started here."""
    url = os.environ.get(f"LOOKALIKE_TEST_{distribution.upper()}_URL")
    if url:
        return Node(url, distribution, dict(SCRIPT_NODE_SETTINGS[distribution]))
    if distribution == "opensearch" and (node := docker_node()) is not None:
        return node
    name = f"pytest-{distribution}-{os.getpid()}"
    node = start(name, distribution)
    node.close = lambda: stop(name)
    return node


def docker_node() -> Node | None:
    """The compose stack's OpenSearch image with security on, where Docker runs; else None."""
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return None
    from testcontainers.community.opensearch import OpenSearchContainer

    image = COMPOSE["services"]["opensearch"]["image"]
    container = OpenSearchContainer(
        image, security_enabled=True, initial_admin_password=DOCKER_ADMIN_PASSWORD
    ).with_env("OPENSEARCH_JAVA_OPTS", "-Xms1g -Xmx1g")
    container.start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(9200)
    overrides = {
        "cluster_user": "admin",
        "cluster_password": DOCKER_ADMIN_PASSWORD,
        "cluster_verify_certs": False,  # the image's self-signed demo certificate
    }
    return Node(f"https://{host}:{port}", "opensearch", overrides, close=container.stop)


def unavailable(reason: str) -> None:
    """Skip (on a developer machine) or fail (CI, ``LOOKALIKE_REQUIRE_OPENSEARCH=1``)."""
    if REQUIRED:
        pytest.fail(f"LOOKALIKE_REQUIRE_OPENSEARCH=1 but no node: {reason}", pytrace=False)
    pytest.skip(f"no search node: {reason}")


def node_url(name: str, node: int) -> str:
    """The HTTP URL of one node of a cluster the script started."""
    port = (Path(_run_dir()) / name / f"node-{node}" / "http_port").read_text().strip()
    return f"http://127.0.0.1:{port}"
