"""The ``lookalike`` command line: a thin shell over the core library (``pipeline``)."""

from lookalike_cli.main import app

__all__ = ["app"]
