"""The app factory: wires the settings, the engine, the middleware, the error handlers, the
OpenAPI document and the web page around the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.middleware.trustedhost import TrustedHostMiddleware

from pipeline.decode import DecodeError
from pipeline.search import AssetNotFound
from pipeline.settings import Settings, get_settings
from pipeline.store.base import StoreError
from search_api.engine import EngineNotReady, SearchEngine
from search_api.media import MediaUnavailable
from search_api.metrics import Metrics
from search_api.middleware import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    SecurityHeadersMiddleware,
    TimeoutMiddleware,
)
from search_api.routes import (
    API_KEY_HEADER,
    api,
    probes,
    store_unavailable,
    upload_limit_message,
)
from search_api.schemas import FormFilters, SearchQuery, error_message

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Room for the multipart framing and the text fields around an upload of the maximum size.
_FORM_OVERHEAD_BYTES = 64 * 1024
# Every response: no MIME sniffing (a served image is never run as HTML or script), no framing.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# The page: its own scripts and styles only; images from the API, pasted or dropped files
# (blob:) and the inline icon (data:). /docs (Swagger UI from a CDN) does not get it.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


DESCRIPTION = """\
Similarity search over a media library: find images that look like an uploaded one or an
indexed one, narrowed by text, labels (with minimum confidences) and metadata. Every hit says
why it matched: its vector (cosine) and text (BM25) scores and the labels that matched.

When the server sets `LOOKALIKE_API_KEY`, send it in the `X-API-Key` header. The web page is
at `/`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A ready-to-serve app over the store and model ``settings`` select.

    The model is loaded once, when the app starts (lifespan), so the first query is as fast as
    the others and a broken model setup fails at start-up, not on a user's request.
    """
    settings = settings or get_settings()
    metrics = Metrics()
    engine = SearchEngine(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(engine.start)
        yield
        engine.close()

    app = FastAPI(
        title="Lookalike search API",
        version=version("lookalike"),
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "search", "description": "Similarity, text, label and metadata search."},
            {"name": "assets", "description": "Indexed assets, their images and thumbnails."},
            {"name": "tags", "description": "Custom tags learned from yes/no judgements."},
            {"name": "operations", "description": "Probes and metrics for operators."},
        ],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.image_limiter = anyio.CapacityLimiter(settings.api_image_workers)

    app.include_router(api)
    app.include_router(probes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP},
        )

    _add_error_handlers(app, settings)
    # Added innermost first: metrics see every answer, 413 and 504 included; CORS headers go
    # on error responses too, so a browser client can read why its request failed; a request
    # naming a host that is not allowed (DNS rebinding) is refused before the app sees it.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.api_max_upload_bytes + _FORM_OVERHEAD_BYTES,
        message=upload_limit_message(settings),
    )
    app.add_middleware(TimeoutMiddleware, seconds=settings.api_request_timeout_s)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if "*" not in settings.api_allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.api_allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware, headers=SECURITY_HEADERS)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """The core library's exceptions, as HTTP statuses with their message as ``detail``."""

    def handler(status: int) -> Callable[[Request, Exception], Any]:
        async def handle(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    async def store_failed(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": store_unavailable(settings)}, status_code=503)

    app.add_exception_handler(AssetNotFound, handler(404))
    app.add_exception_handler(MediaUnavailable, handler(404))
    app.add_exception_handler(DecodeError, handler(415))
    app.add_exception_handler(EngineNotReady, handler(503))
    app.add_exception_handler(StoreError, store_failed)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The submitted value is left out: it may be a whole upload or a secret.
        issues = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        message = "; ".join(error_message(i["loc"], i["msg"]) for i in issues)
        return JSONResponse({"detail": issues, "message": message}, status_code=422)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document plus the two bodies of ``POST /search``, which the route reads by
    hand (one operation, two content types) and so declares in ``openapi_extra``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _, bodies = models_json_schema(
                [(SearchQuery, "validation"), (FormFilters, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in bodies["$defs"].items():
                components.setdefault(name, definition)
            form = components.pop("FormFilters")
            components["ImageSearchForm"] = {
                **form,
                "title": "ImageSearchForm",
                "description": "An image upload and the search options, as form fields.",
                "properties": {
                    "image": {
                        "type": "string",
                        "format": "binary",
                        "description": "The query image (JPEG, PNG, WebP, GIF, TIFF, BMP...).",
                    },
                    **form["properties"],
                },
                "required": ["image"],
            }
            if app.state.settings.api_key is None:
                _drop_security(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _drop_security(schema: dict[str, Any]) -> None:
    """Without LOOKALIKE_API_KEY nothing is checked, so the document promises no scheme."""
    schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
