"""One settings object for the whole project, read from ``LOOKALIKE_*`` environment variables.

Every tunable lives here so that the CLI, the DAGs and the search API agree on the same values
without passing literals around.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration. ``LOOKALIKE_HOME`` holds the embedded store and the model cache."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".lookalike",
        description="Where the embedded store, the model cache and generated samples live.",
    )
    store: Literal["embedded", "opensearch", "elasticsearch"] = "embedded"
    model: str = Field(
        "mobilenet_v2-imagenet", description="Backbone name from the model registry."
    )

    backend: Literal["onnx", "tensorflow"] = Field(
        "onnx",
        description="What runs the model: ONNX Runtime on the Keras model converted once "
        "(faster on CPU; vectors equal to TensorFlow's to float rounding), or TensorFlow, the "
        "reference (also used, with a warning, where ONNX Runtime cannot be).",
    )
    inference_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads ONNX Runtime uses within one batch (0: one per physical core).",
    )
    region_levels: int = Field(
        3,
        ge=0,
        le=6,
        description="R-MAC levels of region vectors stored beside each global vector "
        "(pipeline/regions.py): 3 gives 29 regions from half to two-fifths of the side; 0 "
        "stores none (no region search).",
    )

    # Ingestion
    batch_size: int = Field(32, ge=1, le=1024, description="Images per inference batch.")
    decode_workers: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 2),
        ge=1,
        le=64,
        description="Worker processes decoding images ahead of the model: one per core (more "
        "were never faster in benchmarks/throughput.py, and cost memory).",
    )
    decode_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest time one file may take to read, decode and resize; a file that "
        "takes longer is quarantined and its worker replaced (an 88-megapixel PNG takes about "
        "2 s on one core).",
    )
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description="Decompression-bomb guard: images with more pixels are quarantined "
        "(Pillow's own default limit).",
    )
    max_file_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="Files larger than this are quarantined, before any byte is read (and no "
        "more than this is ever read of a file).",
    )
    label_min_confidence: float = Field(
        5.0, ge=0, le=100, description="Labels below this confidence (percent) are not stored."
    )
    label_max_labels: int = Field(
        25, ge=1, description="At most this many labels stored per asset."
    )

    # Embedded store (LanceDB)
    table: str = Field("assets", description="Base name of the asset table / index.")
    ann_min_rows: int = Field(
        20_000,
        ge=256,
        description="Build an ANN (IVF) index only once the table has this many rows.",
    )
    ann_partition_rows: int = Field(
        1_000,
        ge=16,
        description="Rows per IVF partition of the ANN index, kept so by LanceDB as the table "
        "grows (it splits larger partitions and joins smaller ones). Changing it builds the "
        "index again. 1,000 answered a top-10 at 1M rows in about 10 ms.",
    )
    exact_search_max_rows: int = Field(
        2_000,
        ge=0,
        description="Filtered vector searches whose filter matches at most this many rows are "
        "answered exactly (so a very selective filter never loses recall); larger ones use the "
        "ANN index (at 1M rows an exact ranking of the 10,000 rows a 1 % filter passes took "
        "118 ms, 1,000 rows 30 ms).",
    )
    nprobes: int = Field(20, ge=1, description="Fewest IVF partitions probed per ANN query.")
    ann_candidates: int = Field(
        5_000,
        ge=1,
        description="Rows passing a search's filter that the IVF partitions it probes should "
        "hold, by estimate (the filter's share of a partition taken as its share of the "
        "table): a filter passing fewer rows probes more partitions, at least nprobes. Recall "
        "of a top-10 with a 5 % filter on 100k rows rose with the passing rows probed (0.75 "
        "with 1,000, 0.95 with 3,000, 1.0 with all 5,000); 5,000 kept it at 1.0 for every "
        "filter on 1M rows (docs/benchmarks.md, section 3).",
    )
    refine_factor: int = Field(
        5, ge=1, description="ANN candidates re-ranked exactly, as a multiple of k."
    )
    read_cache_documents: int = Field(
        5_000,
        ge=0,
        description="Documents (with their embedding, without region vectors; about 8 kB "
        "each) a process keeps from the embedded table's current version, so that repeated "
        "reads skip LanceDB's fixed cost per query (about 3 ms); any new version empties it. "
        "0 turns the cache off.",
    )
    memory_search_max_rows: int = Field(
        5_000,
        ge=0,
        description="A table with at most this many rows is ranked exactly in memory, from "
        "its current version's embeddings (5 kB a row, read once per version), instead of by "
        "a LanceDB query (about 3 ms however small the table; numpy ranks 5,000 rows in 1 ms). "
        "0 always asks LanceDB.",
    )

    # Search (every store)
    num_candidates: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Candidates each ranking (vector, text) contributes to a hybrid search "
        "before fusion (at least offset + k): the fused order does not depend on the page "
        "asked for, as with OpenSearch's and Elasticsearch's own hybrid search.",
    )

    # -- OpenSearch / Elasticsearch stores (LOOKALIKE_STORE=opensearch|elasticsearch) ----------
    # One connection block serves whichever cluster LOOKALIKE_STORE names. Secure by default:
    # certificates are verified; point cluster_ca_certs at the CA that signed the cluster's
    # certificate rather than switching verification off (the compose stack only does so for
    # the OpenSearch image's self-signed demo certificate).
    cluster_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https://localhost:9200"],
        description="Cluster node URLs, comma-separated (scheme decides TLS).",
    )
    cluster_user: str | None = Field("admin", description="Basic-auth user (None: no auth).")
    cluster_password: SecretStr | None = Field(None, description="Basic-auth password.")
    cluster_verify_certs: bool = Field(True, description="Verify the cluster's TLS certificate.")
    cluster_ca_certs: Path | None = Field(
        None, description="PEM bundle of the CA that signed the cluster's certificate."
    )
    cluster_timeout_s: float = Field(30.0, gt=0, description="Per-request timeout.")
    cluster_shards: int = Field(
        1, ge=1, description="Primary shards per asset index (one holds millions of images)."
    )
    opensearch_engine: Literal["faiss", "lucene"] = Field(
        "faiss",
        description="k-NN engine of the knn_vector field: faiss (SIMD, efficient filtering with "
        "an exact fallback) or lucene (pure Java, smaller deployments).",
    )
    hnsw_m: int = Field(
        16, ge=2, le=100, description="HNSW links per node (memory vs recall), fixed per index."
    )
    hnsw_ef_construction: int = Field(
        128, ge=16, description="HNSW build-time candidate list (index speed vs graph quality)."
    )
    knn_ef_search: int = Field(
        100,
        ge=1,
        description="HNSW search-time candidate list (OpenSearch ef_search, Elasticsearch "
        "num_candidates); never below the number of hits asked for.",
    )
    text_analyzer: str = Field(
        "cjk",
        description="Analyzer of the title, description and keywords text fields: `cjk` "
        "(standard tokenizer, CJK width folding, lower-casing, CJK bigrams, English stop words; "
        "Japanese, Chinese and Korean titles match without a plugin) needs the analysis-common "
        "module that every full distribution ships; `standard` works on any node.",
    )
    bulk_chunk_size: int = Field(500, ge=1, description="Documents per bulk request.")
    bulk_max_retries: int = Field(
        5, ge=0, description="Retries of bulk items rejected with 429/502/503/504."
    )
    bulk_initial_backoff_s: float = Field(
        1.0, ge=0, description="First wait before a bulk retry; doubles on every retry."
    )
    bulk_max_backoff_s: float = Field(60.0, ge=0, description="Longest wait between retries.")
    read_max_retries: int = Field(
        5,
        ge=0,
        description="Retries of a search or count that a cluster could not answer from the "
        "whole index (a node went away; 429/502/503/504), with the bulk back-off.",
    )

    @field_validator("cluster_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        """Accept ``https://a:9200,https://b:9200``, the form an environment variable takes."""
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    # -- end of the OpenSearch / Elasticsearch block -------------------------------------------

    # -- Search API and web page (search_api/, `lookalike serve`) ------------------------------
    # Safe by default: loopback only, no cross-origin access, uploads capped at 25 MiB (the
    # issue's ceiling for the default; photos from phones and cameras stay well below it).
    api_host: str = Field("127.0.0.1", description="Interface `lookalike serve` binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port `lookalike serve` listens on.")
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost"],
        description="Host names the API answers to, comma-separated ('*.example.org' matches "
        "subdomains, '*' any host); others get 400. Guards a server on loopback against DNS "
        "rebinding: add the names clients use when serving beyond this machine.",
    )
    api_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a request's headers once it connected or "
        "started a request; a slower one (slowloris) is disconnected.",
    )
    api_keep_alive_s: int = Field(
        5, ge=1, description="Idle time after which a keep-alive connection is closed."
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, every data endpoint needs it in the X-API-Key header (or the "
        "lookalike_api_key cookie the web page sets); probes, metrics and the page stay open.",
    )
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser, comma-separated "
        "(e.g. 'https://app.example.org'); '*' allows any. Empty: same origin only.",
    )
    api_max_upload_bytes: int = Field(
        25 * 2**20, ge=1024, description="Largest query image accepted (413 above it)."
    )
    api_request_timeout_s: float = Field(
        30.0, gt=0, description="Time allowed until a response starts (504 after it)."
    )
    api_image_workers: int = Field(
        8,
        ge=1,
        le=64,
        description="Query images decoded and embedded at once, and thumbnails made: the "
        "most images one micro-batch can hold (each holds its decoded pixels meanwhile).",
    )
    api_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description="Most query images embedded in one model call (micro-batching of "
        "concurrent requests; 1 turns it off).",
    )
    api_batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="Longest a query image waits for others still being decoded to join its "
        "batch (a query alone never waits); it also waits while the model runs a batch.",
    )
    api_thumbnail_size: int = Field(
        320, ge=32, le=1024, description="Longest side of the thumbnails the API serves (px)."
    )
    api_library_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders whose files the API serves as they are now, comma-separated. A "
        "file that resolves anywhere else (e.g. an indexed file since replaced by a symbolic "
        "link out of the library) is served only while its content is the content indexed.",
    )
    api_alias_check_s: float = Field(
        1.0,
        ge=0,
        description="How often the API asks the store which model version the alias names (a "
        "round trip on a cluster); a rollout is served within this time. 0: every request.",
    )

    @field_validator("api_cors_origins", "api_library_roots", "api_allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept the comma-separated form an environment variable naturally takes."""
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def thumbnail_dir(self) -> Path:
        """Thumbnails the API generated, keyed by asset id, content hash and size."""
        return self.home / "thumbnails"

    # -- end of the search API block ------------------------------------------------------------

    # -- Airflow DAGs (dags/) and model rollouts (pipeline/rollout.py, `lookalike rollout`) -----
    # The scheduled ingest reads its source from here (a DAG run's params override it); each
    # TensorFlow task holds a model (~0.8 GB), so parallelism is capped per DAG run and,
    # through a pool, across DAGs. A rollout must pass its quality gate before the alias moves.
    ingest_source: Path | None = Field(
        None, description="Folder the scheduled ingest DAG indexes (default: samples_dir)."
    )
    ingest_manifest: Path | None = Field(
        None, description="Manifest (CSV/Parquet) the scheduled ingest DAG reads, if any."
    )
    ingest_schedule: str | None = Field(
        "@hourly",
        description="When the ingest DAG runs: a cron expression or Airflow preset; `none`: "
        "only when triggered (unpausing a scheduled DAG starts a run for the latest interval).",
    )
    airflow_batch_size: int = Field(
        256,
        ge=1,
        description="Images per mapped Airflow task (each runs them through the model "
        "batch_size at a time); raised when needed so that a run maps at most Airflow's "
        "max_map_length tasks.",
    )
    airflow_max_active_tasks: int = Field(
        2, ge=1, description="Tasks one DAG run executes at once (each embedding task ~0.8 GB)."
    )
    airflow_pool: str = Field(
        "default_pool",
        description="Airflow pool of the embedding tasks; create a small one (e.g. "
        "`airflow pools set lookalike_tf 2 ...`) to cap TensorFlow tasks across both DAGs.",
    )
    airflow_retry_delay_s: float = Field(
        60.0,
        gt=0,
        description="First wait before Airflow retries a failed task; it doubles with every "
        "retry (up to 30 min). A minute rides out a restarting node; tests use seconds.",
    )
    worker_name: str | None = Field(
        None,
        description="The host name Airflow records for the tasks this process runs (through "
        "worker_hostname); default: the machine's. Set one per Celery worker when several run "
        "on one machine (scripts/stack.sh does), or the task instances cannot tell them apart.",
    )
    airflow_opensearch_conn_id: str = Field(
        "opensearch_default",
        description="Airflow connection the DAGs read the cluster's URL and credentials from "
        "(LOOKALIKE_STORE=opensearch); without it they use the cluster_* settings.",
    )
    rollout_eval_manifest: Path | None = Field(
        None,
        description="Labelled evaluation set for the rollout quality gate: a manifest whose "
        "rows name an image and its label (column rollout_eval_label_column). Without it the "
        "gate runs a self-check that needs no labels.",
    )
    rollout_eval_label_column: str = Field(
        "label", description="Column of the evaluation manifest that holds each image's label."
    )
    rollout_tolerance: float = Field(
        0.02,
        ge=-1,
        le=1,
        description="How much worse than the current index (mAP or self-check rank-1 rate) the "
        "new one may be; a negative value demands an improvement of at least that much.",
    )
    rollout_min_match_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Self-check floor: share of transformed copies (crop, flip, colour, JPEG) "
        "of sampled assets that must find their original (or a copy of it already in the "
        "library) at rank 1 in the new index. A working model scores near 1 on distinct "
        "photos but lower on libraries full of near-copies (the sample library: 0.89), so "
        "this floor only catches a broken model; the comparison with the current index "
        "(rollout_tolerance) decides.",
    )
    rollout_sample_size: int = Field(
        50, ge=1, description="Self-check: indexed assets sampled (4 queries each)."
    )
    rollout_seed: int = Field(0, description="Self-check: seed of the sample (reproducible).")

    @field_validator("ingest_schedule", mode="before")
    @classmethod
    def _no_schedule(cls, value: object) -> object:
        """``none`` (or nothing), the only way an environment variable can say None."""
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @property
    def index_asset_uri(self) -> str:
        """The Airflow Asset the DAGs update whenever the searchable index changes (ingest
        writes, a rollout or rollback moves the alias): downstream DAGs schedule on it."""
        return f"lookalike://index/{self.table}"

    @classmethod
    def for_run(
        cls,
        overrides: Mapping[str, Any],
        connection: Callable[[str], Any | None] | None = None,
    ) -> Settings:
        """The settings of one DAG run: ``LOOKALIKE_*`` variables, overridden by ``overrides``
        (field name -> value from the run's params; ``None`` keeps the variable) and, for a
        cluster store, by the Airflow connection that ``connection(airflow_opensearch_conn_id)``
        returns (an object with the ``host``, ``port``, ``login``, ``password`` and
        ``extra_dejson`` of Airflow's ``Connection``, or ``None`` to keep the cluster_*
        settings). The connection is read as the OpenSearch provider's hook reads it
        (``extra``: ``use_ssl``, ``scheme``, ``verify_certs``, ``ca_certs``, ``timeout``; a host
        given as a URL is used as it is), except that certificates stay verified unless
        ``verify_certs`` says otherwise (the hook's default is not to)."""
        values = {key: value for key, value in overrides.items() if value is not None}
        settings = cls(**values)
        if settings.store == "embedded" or connection is None:
            return settings
        conn = connection(settings.airflow_opensearch_conn_id)
        if conn is None:
            return settings
        extra = conn.extra_dejson or {}
        if "://" in (conn.host or ""):
            url = conn.host
        else:
            tls = str(extra.get("use_ssl", "false")).lower() in ("true", "1")
            scheme = extra.get("scheme") or ("https" if tls else "http")
            url = f"{scheme}://{conn.host or 'localhost'}:{conn.port or 9200}"
        values |= {
            "cluster_urls": [url],
            "cluster_user": conn.login,
            "cluster_password": conn.password,
        }
        if "verify_certs" in extra:
            values["cluster_verify_certs"] = str(extra["verify_certs"]).lower() in ("true", "1")
        if extra.get("ca_certs"):
            values["cluster_ca_certs"] = extra["ca_certs"]
        if extra.get("timeout") is not None:
            values["cluster_timeout_s"] = float(extra["timeout"])
        return cls(**values)

    # -- end of the Airflow and rollout block ----------------------------------------------------

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def model_dir(self) -> Path:
        return self.home / "models"

    @property
    def samples_dir(self) -> Path:
        return self.home / "samples"


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` for Lookalike's workers: ``LOOKALIKE_WORKER_NAME``,
    else the machine's fully qualified name (Airflow's own default). Airflow records it on every
    task instance it runs, which is how the UI, the logs and the tests see which worker ran what.
    """
    return get_settings().worker_name or socket.getfqdn()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; call ``get_settings.cache_clear()`` after changing env vars."""
    return Settings()
