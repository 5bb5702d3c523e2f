"""One settings object for the whole project, read from ``LOOKALIKE_*`` environment variables.

Every tunable lives here so that the CLI, the DAGs and the search API agree on the same values
without passing literals around.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # Ingestion
    batch_size: int = Field(32, ge=1, le=1024, description="Images per inference batch.")
    decode_workers: int = Field(
        4, ge=1, le=64, description="Threads decoding images ahead of the model."
    )
    max_image_pixels: int = Field(
        89_478_485,
        ge=1,
        description="Decompression-bomb guard: images with more pixels are quarantined "
        "(Pillow's own default limit).",
    )
    max_file_bytes: int = Field(
        256 * 2**20, ge=1, description="Files larger than this are quarantined."
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
    exact_search_max_rows: int = Field(
        50_000,
        ge=0,
        description="Filtered vector searches whose filter matches at most this many rows are "
        "answered exactly, so selective filters never lose recall.",
    )
    nprobes: int = Field(20, ge=1, description="IVF partitions probed per ANN query.")
    refine_factor: int = Field(
        5, ge=1, description="ANN candidates re-ranked exactly, as a multiple of k."
    )

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def model_dir(self) -> Path:
        return self.home / "models"

    @property
    def samples_dir(self) -> Path:
        return self.home / "samples"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; call ``get_settings.cache_clear()`` after changing env vars."""
    return Settings()
