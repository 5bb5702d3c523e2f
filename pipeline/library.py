"""The library: one handle on everything a deployment keeps, opened the same way by the CLI, the
search API and the DAGs.

``Library.open(settings)`` connects to the store ``LOOKALIKE_STORE`` names and offers its five
concerns (``pipeline/store/base.py``): the ``catalogue`` of model versions' indexes and the
alias, each version's ``index``, the ``quarantine`` and ``runs`` logs and the ``judgements``
of custom tags, plus a ``searcher`` over the version searches use.
"""

from __future__ import annotations

from typing import Self

from pipeline.backbones import get_spec
from pipeline.document import StoredState
from pipeline.search import Searcher
from pipeline.settings import Settings, get_settings
from pipeline.store import open_backend
from pipeline.store.base import (
    Backend,
    DocumentIndex,
    IndexCatalogue,
    JudgementLog,
    QuarantineLog,
    RunLog,
)


class Library:
    """A store's catalogue, indexes and logs (see the module docstring)."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings

    @classmethod
    def open(cls, settings: Settings | None = None) -> Self:
        settings = settings or get_settings()
        return cls(open_backend(settings), settings)

    @property
    def catalogue(self) -> IndexCatalogue:
        return self.backend.catalogue

    @property
    def quarantine(self) -> QuarantineLog:
        return self.backend.quarantine

    @property
    def runs(self) -> RunLog:
        return self.backend.runs

    @property
    def judgements(self) -> JudgementLog:
        return self.backend.judgements

    def active_model(self) -> str:
        """The model version searches and scheduled ingests use: the one the alias names, or
        the configured model's before anything was activated."""
        return self.catalogue.active() or get_spec(self.settings.model).model_id

    def index(self, model_id: str | None = None) -> DocumentIndex:
        """One model version's index; without ``model_id``, the active one."""
        return self.backend.index(model_id or self.active_model())

    def searcher(self, model_id: str | None = None) -> Searcher:
        return Searcher(self.index(model_id), self.settings)

    def states(self, index: DocumentIndex) -> dict[str, StoredState]:
        """Id -> state of every document of ``index`` and every quarantined file: what an
        incremental run compares the folder with."""
        states = index.states()
        for record in self.quarantine.records():
            states[record.id] = StoredState(
                uri=record.uri,
                sha256=record.sha256,
                fingerprint=record.fingerprint,
                size_bytes=record.size_bytes,
                mtime_ns=record.mtime_ns,
                quarantined=True,
            )
        return states

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
