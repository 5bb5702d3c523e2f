"""Lookalike's search API and web page: a thin FastAPI shell over the ``pipeline`` library.

Start it with ``lookalike serve``, or build the app with :func:`create_app` to embed it.
"""

from search_api.app import create_app

__all__ = ["create_app"]
