"""What both Lookalike DAGs (``dags/``) share: the settings they were parsed with, the index
Asset they update, and how a task builds the settings of its run (the OpenSearch provider's
Airflow connection for a cluster store). An installed package beside the CLI: the apps' layer,
the only one that imports Airflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, BaseHook, Param
from airflow.sdk.exceptions import AirflowNotFoundException

from pipeline.settings import Settings, get_settings

SETTINGS = get_settings()
INDEX = Asset(name="lookalike_index", uri=SETTINGS.index_asset_uri)


def connection(conn_id: str) -> Any | None:
    """The Airflow connection for a cluster store, or ``None`` to use the settings."""
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def run_settings(params: Mapping[str, Any], **overrides: Any) -> Settings:
    """The settings of one task: the processes' ``LOOKALIKE_*`` variables, the run's ``store``
    param and ``overrides``, and the cluster connection."""
    return Settings.for_run({"store": params["store"], **overrides}, connection)


def pulled(results: Sequence[Any] | None) -> list[Any]:
    """The mapped tasks' results that exist (none when nothing was mapped), indexed rather
    than iterated: iterating asks for one past the last and logs the miss as an error."""
    return [results[i] for i in range(len(results))] if results else []


def default_args(retries: int) -> dict[str, Any]:
    """Task defaults of both DAGs: retries with exponential back-off from the settings."""
    return {
        "owner": "lookalike",
        "retries": retries,
        "retry_delay": timedelta(seconds=SETTINGS.airflow_retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    }


def common_params() -> dict[str, Param]:
    """The params both DAGs take: the batch size of their mapped tasks, and the store."""
    return {
        "batch_size": Param(
            SETTINGS.airflow_batch_size,
            type="integer",
            minimum=1,
            description="Images per mapped task.",
        ),
        "store": Param(
            SETTINGS.store,
            type="string",
            enum=["embedded", "opensearch", "elasticsearch"],
            description="Where the index lives.",
        ),
    }
