"""The API's endpoints. Each one validates its input, hands the blocking work (model, store,
files) to a worker thread and shapes the answer; the search itself is the core library's
(``pipeline.search.Searcher``), exactly as the CLI runs it."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Annotated, Any, TypeVar, get_origin

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyCookie, APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from pipeline import maps, tags
from pipeline.document import AssetDocument, Judgement
from pipeline.search import SearchRequest, SearchResponse, TagName, ranks_query_regions
from pipeline.settings import Settings
from pipeline.store.base import StoreError
from search_api import media
from search_api.engine import Backend, EngineNotReady, SearchEngine
from search_api.schemas import (
    ASSET_ID_PATTERN,
    MAX_ASSET_ID,
    MAX_FILTERS,
    Asset,
    ErrorResponse,
    FormFilters,
    Health,
    JudgementIn,
    JudgementOut,
    Judgements,
    LabelCount,
    LabelCounts,
    Readiness,
    SearchHit,
    SearchQuery,
    SearchResult,
    Tag,
    Tags,
    ValidationErrorResponse,
    unit_vector,
)

M = TypeVar("M", SearchQuery, FormFilters)
log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_COOKIE = "lookalike_api_key"

_header_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The key the server was started with (LOOKALIKE_API_KEY).",
)
_cookie_key = APIKeyCookie(
    name=API_KEY_COOKIE,
    auto_error=False,
    description="The same key, as the web page sends it with image requests.",
)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Statuses any data endpoint can answer, besides its own.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("LOOKALIKE_API_KEY is set and the request does not carry it."),
    422: {"model": ValidationErrorResponse, "description": "A parameter is invalid."},
    503: _error("The model or the store is not available."),
    504: _error("No response within LOOKALIKE_API_REQUEST_TIMEOUT_S."),
}
_NOT_FOUND = {404: _error("No indexed asset has this id, or its file cannot be served.")}

_QUERY_EXAMPLES = {
    "asset": {
        "summary": "More like an indexed asset",
        "value": {"asset_id": "c9c3aab28a330cf8c4deecaf68a21e2c", "k": 12},
    },
    "filtered": {
        "summary": "Cats (>= 80 %) whose text mentions 'sofa'",
        "value": {"text": "sofa", "labels": {"all": [{"name": "Cat", "min_confidence": 80}]}},
    },
    "hybrid": {
        "summary": "Like an asset, weighted with text, not labelled Dog",
        "value": {
            "asset_id": "c9c3aab28a330cf8c4deecaf68a21e2c",
            "text": "rug",
            "hybrid": "linear",
            "vector_weight": 0.7,
            "labels": {"none": [{"name": "Dog", "min_confidence": 50}]},
            "metadata": {"source": ["scikit-image"]},
        },
    },
    "browse": {"summary": "Browse: filters only, second page", "value": {"k": 24, "offset": 24}},
}

SEARCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either an image upload (multipart) or a JSON query.",
        "content": {
            "multipart/form-data": {
                "schema": {"$ref": "#/components/schemas/ImageSearchForm"},
                "encoding": {"image": {"contentType": "image/*"}},
            },
            "application/json": {
                "schema": {"$ref": "#/components/schemas/SearchQuery"},
                "examples": _QUERY_EXAMPLES,
            },
        },
    }
}

# Fields of a multipart search that may be repeated (the others take their last value).
_LIST_FIELDS = {
    name for name, field in FormFilters.model_fields.items() if get_origin(field.annotation) is list
}
# The multipart parser's own bound on fields: every list at its longest, plus the scalars.
_MAX_FORM_FIELDS = 1000 + 4 * MAX_FILTERS + 20


def get_engine(request: Request) -> SearchEngine:
    return request.app.state.engine


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
AssetIdPath = Annotated[
    str,
    Path(max_length=MAX_ASSET_ID, pattern=ASSET_ID_PATTERN, description="An indexed asset's id."),
]


def require_api_key(
    settings: SettingsDep,
    header: Annotated[str | None, Security(_header_key)] = None,
    cookie: Annotated[str | None, Security(_cookie_key)] = None,
) -> None:
    """401 unless the configured key came with the request (no key configured: open)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = header or cookie
    if given is None or not secrets.compare_digest(given.encode(), expected):
        raise HTTPException(
            status_code=401,
            detail=f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )


api = APIRouter(dependencies=[Depends(require_api_key)], responses=COMMON_RESPONSES)
probes = APIRouter(tags=["operations"])


@api.post(
    "/search",
    tags=["search"],
    summary="Search by image, asset, vector, text, labels and metadata",
    response_model=SearchResult,
    openapi_extra=SEARCH_BODY,
    responses={
        **_NOT_FOUND,
        400: _error("The multipart body is malformed."),
        413: _error("The upload is larger than LOOKALIKE_API_MAX_UPLOAD_BYTES."),
        415: _error("Neither JSON nor multipart, or the upload is not a decodable image."),
    },
)
async def search(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Upload an image (`multipart/form-data`, field `image`) to find similar ones, or send
    JSON naming an indexed `asset_id` or a `vector`; either can add `text` (hybrid search),
    label filters with minimum confidences, metadata filters, `k`/`offset` pagination,
    `min_score` and the hybrid fusion. JSON without a query lists the assets passing the
    filters. Each hit carries its score, the vector and text scores behind it and the labels
    that matched the filters: why it was found."""
    started = time.perf_counter()
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        options, data = await _read_image_form(request, settings)
        backend = await run_in_threadpool(engine.backend)
        request_ = options.to_request()
        image = await anyio.to_thread.run_sync(
            engine.embed,
            backend,
            data,
            options.box,
            ranks_query_regions(request_),
            limiter=request.app.state.image_limiter,
        )
        response = await _timed(engine, backend.searcher.search_image, request_, image)
        return _result(response, request_, "image", backend, started)
    elif media_type == "application/json" or media_type.endswith("+json"):
        query = _validated(SearchQuery, await request.body())
        backend = await run_in_threadpool(engine.backend)
        request_ = query.to_request()
        if query.vector is not None:
            try:
                request_.vector = unit_vector(query.vector, backend.embedder.spec.dim)
            except ValueError as exc:
                raise _invalid(("body", "vector"), str(exc)) from None
        if query.asset_id:
            response = await _similar(request, engine, backend, query.asset_id, request_, query.box)
            return _result(response, request_, "asset", backend, started)
        kind = "vector" if query.vector else "text" if request_.text else "filters"
    else:
        raise HTTPException(
            status_code=415,
            detail="send multipart/form-data with an 'image' file, or an application/json query",
        )
    response = await _timed(engine, backend.searcher.search, request_)
    return _result(response, request_, kind, backend, started)


@api.get(
    "/assets/{asset_id}",
    tags=["assets"],
    summary="One indexed asset",
    response_model=Asset,
    responses=_NOT_FOUND,
)
async def get_asset(asset_id: AssetIdPath, engine: EngineDep) -> Asset:
    """The asset's stored document (labels, metadata, size...) without its embedding."""
    return Asset.from_document(await _document(engine, asset_id))


@api.get(
    "/assets/{asset_id}/similar",
    tags=["search"],
    summary="More like an indexed asset",
    response_model=SearchResult,
    responses=_NOT_FOUND,
)
async def similar(
    request: Request,
    asset_id: AssetIdPath,
    options: Annotated[FormFilters, Query()],
    engine: EngineDep,
) -> Response:
    """Assets similar to this one (itself left out), with the same filters as `POST /search`
    in query-string form: `labels_all=Cat:80`, `metadata=source=scikit-image`."""
    started = time.perf_counter()
    backend = await run_in_threadpool(engine.backend)
    request_ = options.to_request()
    response = await _similar(request, engine, backend, asset_id, request_, options.box)
    return _result(response, request_, "asset", backend, started)


@api.get(
    "/assets/{asset_id}/image",
    tags=["assets"],
    summary="The original image file",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        200: {
            "description": "The file as it was indexed.",
            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
async def get_image(asset_id: AssetIdPath, engine: EngineDep, settings: SettingsDep) -> Response:
    """Served only for indexed assets whose URI is a local file, never from a path the
    request names; only while the file lies inside LOOKALIKE_API_LIBRARY_ROOTS or still holds
    the content that was indexed."""
    doc = await _document(engine, asset_id)
    served = await run_in_threadpool(media.image_file, doc, settings)
    headers = _cache_headers(doc)
    if isinstance(served, bytes):
        return Response(served, media_type=media.media_type(doc), headers=headers)
    return FileResponse(served, media_type=media.media_type(doc), headers=headers)


@api.get(
    "/assets/{asset_id}/thumbnail",
    tags=["assets"],
    summary="A JPEG thumbnail",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        200: {
            "description": "JPEG, longest side LOOKALIKE_API_THUMBNAIL_SIZE pixels.",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
        304: {"description": "The client's cached copy (If-None-Match) is current."},
    },
)
async def get_thumbnail(
    asset_id: AssetIdPath,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    v: Annotated[  # declared so the document shows the form thumbnail_url takes
        str | None,
        Query(max_length=64, description="Cache buster (the content hash); ignored."),
    ] = None,
) -> Response:
    """Made on first request with the same safe decoding as ingestion, then cached on disk
    under LOOKALIKE_HOME; cacheable by browsers until the file changes."""
    doc = await _document(engine, asset_id)
    headers = _cache_headers(doc, settings.api_thumbnail_size)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    path = media.thumbnail_path(doc, settings)
    cached = path.is_file()
    if not cached:
        await anyio.to_thread.run_sync(
            media.make_thumbnail, doc, settings, path, limiter=request.app.state.image_limiter
        )
    engine.metrics.thumbnails.labels("hit" if cached else "miss").inc()
    return FileResponse(path, media_type="image/jpeg", headers=headers)


@api.get(
    "/labels",
    tags=["search"],
    summary="Label counts, for facets",
    response_model=LabelCounts,
)
async def labels(
    engine: EngineDep,
    min_confidence: Annotated[
        float, Query(ge=0, le=100, description="Count a label only at this confidence or more.")
    ] = 50.0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most frequent labels returned.")] = 100,
) -> LabelCounts:
    """How many assets carry each label, most frequent first (the web page's label chips)."""
    backend = await run_in_threadpool(engine.backend)
    counts = await run_in_threadpool(backend.searcher.index.label_counts, min_confidence, limit)
    return LabelCounts(
        min_confidence=min_confidence,
        labels=[LabelCount(name=name, count=count) for name, count in counts.items()],
    )


@api.get("/tags", tags=["tags"], summary="Custom tags", response_model=Tags)
async def list_tags(engine: EngineDep) -> Tags:
    """Every custom tag: trained ones with their newest version's AUC, threshold and recall at
    the tolerated false-positive rate and the assets passing it, and tags judged but not
    trained yet (`lookalike tags train NAME` learns from the judgements)."""
    await run_in_threadpool(engine.backend)
    infos = await run_in_threadpool(tags.overview, engine.library())
    return Tags(tags=[Tag.from_info(info) for info in infos])


@api.get(
    "/tags/{name}/roc.png",
    tags=["tags"],
    summary="A tag's ROC curve",
    response_class=FileResponse,
    responses={
        404: _error("No trained tag of this name."),
        200: {"description": "PNG.", "content": {"image/png": {}}},
    },
)
async def tag_roc(name: Annotated[TagName, Path()], settings: SettingsDep) -> Response:
    """The newest version's cross-validated ROC curves, marked at the chosen threshold."""
    found = await run_in_threadpool(tags.roc_path, name, settings)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no trained tag {name!r}")
    return FileResponse(found, media_type="image/png")


@api.post(
    "/assets/{asset_id}/judgements",
    tags=["tags"],
    summary="Judge whether a custom tag applies to an asset",
    status_code=201,
    response_model=JudgementOut,
    responses={**_NOT_FOUND, 400: _error("The body cannot be read as JSON.")},
)
async def add_judgement(
    asset_id: AssetIdPath, body: JudgementIn, engine: EngineDep
) -> JudgementOut:
    """Record a yes (1) or no (0); it replaces this asset's earlier judgement of the tag. The
    next `lookalike tags train TAG` learns from every judgement so far."""
    doc = await _document(engine, asset_id)
    library = engine.library()
    judgement = Judgement(
        tag=body.tag, asset_id=asset_id, uri=doc.uri, judge=body.judge, source="api"
    )
    await run_in_threadpool(library.judgements.add, [judgement])
    count = len(await run_in_threadpool(library.judgements.judgements, body.tag))
    return JudgementOut(judgement=judgement, count=count)


@api.get("/judgements", tags=["tags"], summary="Judgements so far", response_model=Judgements)
async def list_judgements(
    engine: EngineDep,
    tag: Annotated[TagName | None, Query(description="Only this tag's.")] = None,
    asset_id: Annotated[
        str | None,
        Query(max_length=MAX_ASSET_ID, pattern=ASSET_ID_PATTERN, description="Only this asset's."),
    ] = None,
) -> Judgements:
    """The judgements in the store (of one tag, of one asset), by tag and asset id: what the
    web page marks its thumbs with, and what `lookalike tags train` learns from."""
    await run_in_threadpool(engine.backend)
    found = await run_in_threadpool(engine.library().judgements.judgements, tag)
    return Judgements(judgements=[j for j in found if asset_id in (None, j.asset_id)])


@api.get(
    "/map",
    tags=["assets"],
    summary="The library map",
    response_model=maps.LibraryMap,
    responses={404: _error("No map was computed for the active model (`lookalike map`).")},
)
async def library_map(engine: EngineDep, settings: SettingsDep) -> maps.LibraryMap:
    """Every asset's position on a 2-D t-SNE map of the embeddings (0..1), with its top label
    and tags, as computed by `lookalike map` for the model searches use."""
    backend = await run_in_threadpool(engine.backend)
    found = await run_in_threadpool(maps.load_map, settings, backend.model_id)
    if found is None:
        raise HTTPException(
            status_code=404,
            detail=f"no map of {backend.model_id} yet: run `lookalike map` to compute it",
        )
    return found


@probes.get("/healthz", summary="Liveness", response_model=Health)
async def healthz() -> Health:
    """The process answers (no dependency is checked: restart only what is really stuck)."""
    return Health()


@probes.get(
    "/readyz",
    summary="Readiness: model loaded, store reachable",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `reason` says why."}},
)
async def readyz(engine: EngineDep, settings: SettingsDep) -> Readiness | JSONResponse:
    """Ready when the model is loaded and the active index answers a count."""

    def check() -> Readiness:
        backend = engine.backend()
        return Readiness(
            status="ready",
            model=backend.model_id,
            dimension=backend.embedder.spec.dim,
            store=settings.store,
            documents=backend.searcher.index.count(),
        )

    try:
        return await run_in_threadpool(check)
    except Exception as exc:  # any failure means "not ready", with a reason fit to publish
        log.warning("not ready: %s", exc)
        if isinstance(exc, EngineNotReady):
            reason = str(exc)
        elif isinstance(exc, StoreError):
            reason = store_unavailable(settings)
        else:
            reason = f"the readiness check failed ({type(exc).__name__}; see the server log)"
        readiness = Readiness(status="not ready", store=settings.store, reason=reason)
        return JSONResponse(readiness.model_dump(mode="json"), status_code=503)


@probes.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(engine: EngineDep) -> Response:
    """Request counts and latencies by route, query embedding and store search times,
    thumbnail cache hits, model reloads, process CPU and memory."""
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- helpers ---------------------------------------------------------------------------------


async def _read_image_form(request: Request, settings: Settings) -> tuple[FormFilters, bytes]:
    """The search options and the image bytes of a multipart search."""
    async with request.form(max_files=1, max_fields=_MAX_FORM_FIELDS) as form:
        fields: dict[str, Any] = {}
        image: UploadFile | None = None
        for key in form:
            values = form.getlist(key)
            if key == "image":
                image = next((v for v in values if isinstance(v, UploadFile)), None)
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise _invalid(("body", key), "expected a text field, got a file")
            fields[key] = values if key in _LIST_FIELDS else values[-1]
        if image is None:
            raise _invalid(("body", "image"), "an image file is required", "missing")
        options = _validated(FormFilters, fields)
        data = await image.read(settings.api_max_upload_bytes + 1)
    if len(data) > settings.api_max_upload_bytes:
        raise HTTPException(status_code=413, detail=upload_limit_message(settings))
    return options, data


def store_unavailable(settings: Settings) -> str:
    """What a client is told when the store fails: the reason stays in the server log (it may
    name folders, hosts or the store's own source files)."""
    return f"the {settings.store} store is not available right now; try again later"


def upload_limit_message(settings: Settings) -> str:
    mib = settings.api_max_upload_bytes / 2**20
    return f"the upload is larger than the limit of {mib:g} MiB (LOOKALIKE_API_MAX_UPLOAD_BYTES)"


def _validated(model: type[M], data: bytes | dict[str, Any]) -> M:
    """Validate a body by hand (POST /search takes two content types), reporting errors the
    way FastAPI reports them for declared bodies: 422, located under ``body``."""
    try:
        if isinstance(data, bytes):
            # Strict: JSON has types, so `false` is no confidence and `"5"` no count.
            return model.model_validate_json(data, strict=True)
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
        ) from None


def _invalid(loc: tuple[str, ...], msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


async def _document(engine: SearchEngine, asset_id: str) -> AssetDocument:
    backend = await run_in_threadpool(engine.backend)
    found = await run_in_threadpool(backend.searcher.index.get, [asset_id])
    doc = found.get(asset_id)
    if doc is None:
        raise HTTPException(status_code=404, detail=f"no indexed asset with id {asset_id!r}")
    return doc


async def _similar(
    request: Request,
    engine: SearchEngine,
    backend: Backend,
    asset_id: str,
    request_: SearchRequest,
    box: tuple[float, float, float, float] | None,
) -> SearchResponse:
    """More like an indexed asset, or like the ``box`` part of its image (read from its file,
    as ``GET /assets/{id}/image`` serves it), the asset itself left out."""
    if box is None:
        return await _timed(engine, backend.searcher.similar, asset_id, request_)
    doc = await _document(engine, asset_id)
    data = await run_in_threadpool(media.image_bytes, doc, engine.settings)
    image = await anyio.to_thread.run_sync(
        engine.embed,
        backend,
        data,
        box,
        ranks_query_regions(request_),
        limiter=request.app.state.image_limiter,
    )
    request_.exclude_ids.append(asset_id)
    return await _timed(engine, backend.searcher.search_image, request_, image)


async def _timed(engine: SearchEngine, func: Any, *args: Any) -> SearchResponse:
    """Run a store search in a worker thread and record how long the store took."""
    started = time.perf_counter()
    try:
        return await run_in_threadpool(func, *args)
    finally:
        engine.metrics.search_seconds.observe(time.perf_counter() - started)


def _result(
    response: SearchResponse,
    request: SearchRequest,
    kind: str,
    backend: Backend,
    started: float,
) -> Response:
    """The page as JSON, encoded once by pydantic: returned as a model, FastAPI would dump,
    validate and encode it again (0.6 ms of a 5 ms asset query; ``response_model`` still
    documents it)."""
    hits = [
        SearchHit(
            rank=request.offset + i,
            document=Asset.from_document(hit.document),
            **hit.model_dump(exclude={"document"}),
        )
        for i, hit in enumerate(response.hits, 1)
    ]
    result = SearchResult(
        hits=hits,
        total_candidates=response.total_candidates,
        k=request.k,
        offset=request.offset,
        next_offset=request.offset + request.k if response.more else None,
        query=kind,
        model=backend.model_id,
        took_ms=round((time.perf_counter() - started) * 1000, 2),
        note=response.note,
    )
    return Response(result.model_dump_json(), media_type="application/json")


def _cache_headers(doc: AssetDocument, size: int | None = None) -> dict[str, str]:
    """Validators from the content hash: the same file always gets the same ETag."""
    tag = doc.sha256[:32] if size is None else f"{doc.sha256[:32]}-{size}"
    return {"ETag": f'"{tag}"', "Cache-Control": "private, max-age=86400"}
