"""Contract tests: every request body the OpenSearch store sends, validated against the official
OpenSearch API specification (``../shared/opensearch-api-spec``, or ``$OPENSEARCH_API_SPEC``).

The real node (tests/test_store_contract.py) is the truth for what works; this checks the same
bodies against what OpenSearch documents, including the corners the node never sees (a knn
query's parameters the lucene engine ignores). The specification's OpenAPI files reference
each other (``$ref: '../schemas/_common.query_dsl.yaml#/components/schemas/KnnQuery'``); all of
them are loaded into one ``referencing`` registry so those references resolve, and each body
is validated against the schema of the operation it is sent to (``PUT
/_index_template/{name}``, ``POST /_bulk``, ``POST /{index}/_search``...).

Two levels: the specification as published, and a *strict* reading of it where an object may
only hold the properties the specification names (``unevaluatedProperties: false`` added to
every closed object schema), which catches misspelt keys the published schemas let through. A
deliberately wrong body (a ``knn`` query without its ``vector``; a misspelt ``ef_serch``) is
rejected, so the check can fail.

The tests skip, saying why, where the specification folder is absent (a user's clone).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from opensearchpy.helpers import expand_action
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from pipeline import filters
from pipeline.document import (
    QUARANTINE_FIELDS,
    RUN_FIELDS,
    AssetDocument,
    IngestSummary,
    Label,
    QuarantineRecord,
)
from pipeline.search import LabelFilter, SearchRequest
from pipeline.settings import Settings
from pipeline.store import opensearch as os_bodies
from pipeline.store.cluster import (
    FIELDS,
    alias_swap_body,
    bm25_body,
    count_body,
    create_body,
    delete_action,
    get_body,
    index_action,
    label_counts_body,
    log_templates,
    runs_body,
    scan_body,
    text_query,
    to_source,
)
from pipeline.store.opensearch import OpenSearchBackend

REPO = Path(__file__).resolve().parents[1]
SPEC_ROOT = Path(
    os.environ.get("OPENSEARCH_API_SPEC", REPO.parent / "shared" / "opensearch-api-spec")
)
SPEC_DIR = SPEC_ROOT / "spec"
BASE_URI = "https://opensearch-api-spec.invalid/"
DIM = 8

pytestmark = pytest.mark.skipif(
    not SPEC_DIR.is_dir(),
    reason=f"OpenSearch API specification not found at {SPEC_DIR} (set OPENSEARCH_API_SPEC to "
    "its folder): the contract tests validate request bodies against it",
)

# -- loading the specification -----------------------------------------------------------------


def _load_documents() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return {
        path.relative_to(SPEC_DIR).as_posix(): yaml.load(path.read_text(), Loader=loader)
        for path in sorted(SPEC_DIR.rglob("*.yaml"))
    }


def _ref_target(file: str, ref: str) -> tuple[str, str]:
    """``(file, json pointer)`` a ``$ref`` found in ``file`` points to."""
    target, _, pointer = ref.partition("#")
    path = posixpath.normpath(posixpath.join(posixpath.dirname(file), target)) if target else file
    return path, pointer


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_ALTERNATIVES = ("oneOf", "anyOf")
_SCHEMA_VALUES = (
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
)


def _close(schema: Any, *, allof_member: bool) -> None:
    """Add ``unevaluatedProperties: false`` to object schemas that list their properties and
    leave the rest undeclared. ``allOf`` members, and ``oneOf``/``anyOf`` alternatives (often
    partial schemas combined with their siblings), stay open: their parent, which sees what
    every member evaluated, is closed instead."""
    if not isinstance(schema, dict):
        return
    declares = "properties" in schema or "allOf" in schema
    open_ended = {"additionalProperties", "patternProperties", "unevaluatedProperties"} & set(
        schema
    )
    if declares and not open_ended and not allof_member:
        schema["unevaluatedProperties"] = False
    for key, value in list(schema.items()):
        if key == "allOf":
            for member in value:
                _close(member, allof_member=True)
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for member in value.values():
                _close(member, allof_member=False)
        elif key in _SCHEMA_ALTERNATIVES and isinstance(value, list):
            for member in value:  # alternatives may be partial (mixed with siblings): keep open
                _close(member, allof_member=True)
        elif key == "prefixItems" and isinstance(value, list):
            for member in value:
                _close(member, allof_member=False)
        elif key in _SCHEMA_VALUES:
            _close(value, allof_member=False)


def _strict(documents: dict[str, Any]) -> dict[str, Any]:
    """The strict reading: close every object schema except those used as ``allOf`` bases
    (combined with other members that add properties)."""
    shaping = {"properties", "allOf", "$ref", "oneOf", "anyOf", "additionalProperties"}
    bases = set()
    for file, document in documents.items():
        for node in _walk(document):
            members = node.get("allOf") if isinstance(node.get("allOf"), list) else []
            for i, member in enumerate(members):
                others = [m for j, m in enumerate(members) if j != i and isinstance(m, dict)]
                if "$ref" in member and any(shaping & set(m) for m in others):
                    bases.add(_ref_target(file, member["$ref"]))
    for file, document in documents.items():
        components = document.get("components", {})
        for name, schema in components.get("schemas", {}).items():
            _close(schema, allof_member=(file, f"/components/schemas/{name}") in bases)
        for body in components.get("requestBodies", {}).values():
            for content in body.get("content", {}).values():
                _close(content.get("schema"), allof_member=False)
    return documents


def _resolve(document: Any, pointer: str) -> Any:
    for part in filter(None, pointer.split("/")):
        document = document[part.replace("~1", "/").replace("~0", "~")]
    return document


def _discriminator_values(documents: dict[str, Any], file: str, schema: Any, name: str) -> set:
    """The values of property ``name`` a (possibly referenced, ``allOf``-composed) schema fixes."""
    if not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        target_file, pointer = _ref_target(file, schema["$ref"])
        target = _resolve(documents[target_file], pointer)
        return _discriminator_values(documents, target_file, target, name)
    spec = schema.get("properties", {}).get(name, {})
    values = set(spec.get("enum", [])) | ({spec["const"]} if "const" in spec else set())
    for member in schema.get("allOf", []):
        values |= _discriminator_values(documents, file, member, name)
    return values


def _required_keys(documents: dict[str, Any], file: str, schema: Any) -> set:
    """The property names a (possibly referenced, ``allOf``-composed) schema requires."""
    if not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        target_file, pointer = _ref_target(file, schema["$ref"])
        return _required_keys(documents, target_file, _resolve(documents[target_file], pointer))
    keys = set(schema.get("required", []))
    for member in schema.get("allOf", []):
        keys |= _required_keys(documents, file, member)
    return keys


def _keyed_dispatch(documents: dict[str, Any], file: str, node: dict[str, Any]) -> None:
    """A ``oneOf`` whose alternatives each require a key no other one requires (aggregation
    containers: ``terms``, ``nested``, ``filter``...) checks only the alternative whose key is
    present, and that exactly one such key is: the same bodies pass, in linear time."""
    required = [_required_keys(documents, file, member) for member in node["oneOf"]]
    keys = []
    for i, own in enumerate(required):
        others = set().union(*(r for j, r in enumerate(required) if j != i))
        unique = sorted(own - others)
        if not unique:
            return
        keys.append(unique[0])
    dispatch = [
        {"if": {"required": [key]}, "then": member}
        for key, member in zip(keys, node["oneOf"], strict=True)
    ]
    dispatch.append({"oneOf": [{"required": [key]} for key in keys]})
    del node["oneOf"]
    node["allOf"] = [*node.get("allOf", []), *dispatch]


def _use_discriminators(documents: dict[str, Any]) -> dict[str, Any]:
    """Evaluate large alternatives lists by their key (see ``_keyed_dispatch``) and honour
    OpenAPI ``discriminator``s: a mapping property whose ``type`` is ``keyword`` is
    checked against ``KeywordProperty`` only, instead of against all 48 property schemas (and
    recursively so for sub-fields and nested properties, which JSON Schema's ``oneOf`` alone
    makes exponentially slow). The accepted bodies are the same; an unknown ``type`` fails."""
    for file, document in documents.items():
        for node in list(_walk(document)):
            if not isinstance(node.get("oneOf"), list):
                continue
            name = node.get("discriminator", {}).get("propertyName")
            if not name:
                if len(node["oneOf"]) > 8:  # small alternatives lists cost nothing
                    _keyed_dispatch(documents, file, node)
                continue
            branches: dict[str, Any] = {}
            for member in node["oneOf"]:
                values = _discriminator_values(documents, file, member, name)
                if not values or values & branches.keys():
                    break
                branches.update(dict.fromkeys(values, member))
            else:
                default = node["discriminator"].get("x-default")
                dispatch = [
                    {"if": {"properties": {name: {"const": v}}, "required": [name]}, "then": m}
                    for v, m in branches.items()
                ]
                missing = {"not": {"required": [name]}}
                dispatch.append(
                    {"if": missing, "then": branches[default]}
                    if default in branches
                    else {"not": missing}
                )
                del node["oneOf"]
                node["allOf"] = [*node.get("allOf", []), *dispatch]
                node.setdefault("properties", {})[name] = {"enum": sorted(branches)}
    return documents


class Spec:
    """The specification as a registry, and validators for its operations' bodies."""

    def __init__(self, documents: dict[str, Any]) -> None:
        self.documents = documents
        self.registry = Registry().with_resources(
            (BASE_URI + path, Resource.from_contents(doc, default_specification=DRAFT202012))
            for path, doc in documents.items()
        )

    @staticmethod
    def _namespace(operation: str) -> str:
        group, dot, _ = operation.partition(".")
        return group if dot else "_core"

    def request_schema(self, operation: str, content: str = "application/json") -> dict:
        namespace = self._namespace(operation)
        body = self.documents[f"namespaces/{namespace}.yaml"]["components"]["requestBodies"]
        assert content in body[operation]["content"], f"{operation} takes no {content} body"
        pointer = f"/components/requestBodies/{operation}/content/{content.replace('/', '~1')}"
        return {"$ref": f"{BASE_URI}namespaces/{namespace}.yaml#{pointer}/schema"}

    def component(self, file: str, name: str) -> dict:
        return {"$ref": f"{BASE_URI}schemas/{file}#/components/schemas/{name}"}

    def errors(self, schema: dict, instance: Any) -> list[str]:
        validator = Draft202012Validator(schema, registry=self.registry)
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
            for e in validator.iter_errors(instance)
        ]

    def check(self, operation: str, body: Any, content: str = "application/json") -> None:
        problems = self.errors(self.request_schema(operation, content), body)
        assert not problems, f"{operation} body breaks the specification:\n" + "\n".join(problems)

    def parameters(self, operation: str) -> set[str]:
        """Names of the query parameters an operation group accepts."""
        namespace = self._namespace(operation)
        params = self.documents[f"namespaces/{namespace}.yaml"]["components"]["parameters"]
        return {p["name"] for key, p in params.items() if key.startswith(f"{operation}::query.")}


@cache
def load_spec(strict: bool) -> Spec:
    documents = _load_documents()
    return Spec(_use_discriminators(_strict(documents) if strict else documents))


@pytest.fixture(scope="module", params=[False, True], ids=["published", "strict"])
def spec(request: pytest.FixtureRequest) -> Spec:
    return load_spec(request.param)


# -- the bodies the store sends ------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    return Settings(home=Path("/nonexistent"), **overrides)


def sample_doc(i: int = 1) -> AssetDocument:
    return AssetDocument(
        id=f"id{i}",
        uri=f"file:///lib/{i}.jpg",
        sha256="ab" * 32,
        fingerprint="cd" * 32,
        size_bytes=1234,
        mtime_ns=1_700_000_000_000_000_000,
        width=640,
        height=480,
        format="JPEG",
        title="猫がソファの上に座っている",
        description="A tabby cat on a red sofa.",
        keywords=["cat", "sofa"],
        metadata={"photographer": "ann", "camera.model": "X100"},
        labels=[Label(name="Tabby Cat", confidence=81.5, parents=["Cat", "Animal"])],
        embedding=[1.0 / DIM**0.5] * DIM,
        model="test",
        model_version="1",
    )


def requests() -> list[SearchRequest]:
    """One request of every shape the store handles: vector, filtered vector (labels with and
    without confidence, any/none, metadata, excluded ids), text, hybrid RRF and linear,
    filters only."""
    vector = [0.5] * DIM
    filters = {
        "labels_all": [LabelFilter(name="Cat", min_confidence=80.5)],
        "labels_any": [LabelFilter(name="Dog"), LabelFilter(name="Sofa", min_confidence=60)],
        "labels_none": [LabelFilter(name="Person")],
        "metadata": {"photographer": ["ann", "bo"]},
        "exclude_ids": ["id9"],
    }
    return [
        SearchRequest(vector=vector, k=10),
        SearchRequest(vector=vector, k=10, offset=20, **filters),
        SearchRequest(text="ソファ sofa", k=5, **filters),
        SearchRequest(vector=vector, text="sofa", hybrid="rrf", rrf_k=20, **filters),
        SearchRequest(vector=vector, text="sofa", hybrid="linear", vector_weight=0.7),
        SearchRequest(labels_all=[LabelFilter(name="Cat")], k=3),
    ]


def search_bodies() -> list[dict]:
    """What ``Searcher`` asks of the store for every request shape: counts, kNN, BM25 (also
    restricted to candidate ids, as hybrid fusion does), the listing, documents by id."""
    out = []
    for request in requests():
        where = request.filter()
        size = request.offset + request.k + 1
        out.append(count_body(where))
        if request.vector is not None:
            out.append(os_bodies.knn_body(request.vector, where, max(size, 100), 100))
        if request.text:
            out.append(bm25_body(text_query(request.text), where, max(size, 100)))
            only = filters.And((where, filters.Term("id", ("id1", "id2")))) if where else None
            out.append(bm25_body(text_query(request.text), only, 2))
        if request.vector is None and not request.text:
            out.append(scan_body(where, request.offset, request.k + 1))
    out.append(bm25_body(text_query('a "quoted phrase" and words'), None, 10))
    out.append(count_body(filters.Range("width", gte=100, lt=2000.5)))
    return out


def templates() -> list[dict]:
    logs = log_templates("assets", settings())
    return [
        OpenSearchBackend.asset_template(settings(), DIM),
        OpenSearchBackend.asset_template(settings(opensearch_engine="lucene"), DIM),
        logs["assets-quarantine"],
        logs["assets-runs"],
    ]


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", templates(), ids=["assets-faiss", "assets-lucene", "q", "r"])
def test_index_templates_and_create_bodies(spec: Spec, template: dict) -> None:
    spec.check("indices.put_index_template", template)
    spec.check("indices.create", create_body(template, model_id="test@1"))


def test_every_search_body(spec: Spec) -> None:
    bodies = search_bodies()
    bodies += [
        get_body(["id1", "id2"], True),
        get_body(["id1"], {"excludes": ["embedding"]}),
        label_counts_body(50.0, 100),
        {"query": {"match_all": {}}, "_source": ["id", "uri"]},  # states() scroll
    ]
    runs = runs_body("ingest", 20)
    if spec is load_spec(True):
        bodies.append(runs)
    else:
        # As published, `SortCombinations` is an ambiguous oneOf: {"field": {"order": "desc"}}
        # matches both `FieldWithOrder` and the open `SortOptions`. The strict reading closes
        # SortOptions and accepts the body, and so does the real node (the run-log test of
        # tests/test_store_contract.py sorts the runs this way).
        bodies.append({key: value for key, value in runs.items() if key != "sort"})
    for body in bodies:
        if "size" in body or "aggs" in body or "_source" in body:
            spec.check("search", body)
        else:
            spec.check("count", body)


def test_alias_swap(spec: Spec) -> None:
    spec.check("indices.update_aliases", alias_swap_body("assets", "assets__m_2", ["assets__m_1"]))


def test_bulk_action_and_source_lines(spec: Spec) -> None:
    """The exact lines ``helpers.streaming_bulk`` sends for the store's actions."""
    record = QuarantineRecord(id="q1", uri="file:///x", sha256="", fingerprint="f", reason="bad")
    actions = [
        index_action("assets__test_1", "id1", to_source(sample_doc(), FIELDS)),
        index_action("assets-quarantine", "q1", to_source(record, QUARANTINE_FIELDS)),
        index_action("assets-runs", "r1", to_source(IngestSummary(run_id="r1"), RUN_FIELDS)),
        delete_action("assets__test_1", "id2"),
    ]
    lines = []
    for action in actions:
        meta, source = expand_action(action)
        assert not spec.errors(spec.component("_core.bulk.yaml", "OperationContainer"), meta)
        lines += [meta] if source is None else [meta, source]
    spec.check("bulk", lines, content="application/x-ndjson")


def test_document_sources_fit_the_strict_mappings() -> None:
    """``dynamic: strict`` rejects unknown fields on the cluster; check here that every field a
    source line carries is mapped (the specification cannot know our mapping)."""
    record = QuarantineRecord(id="q1", uri="file:///x", sha256="", fingerprint="f", reason="bad")
    assets, quarantine, runs = templates()[0], *templates()[2:]
    pairs = [
        (to_source(sample_doc(), FIELDS), assets),
        (to_source(record, QUARANTINE_FIELDS), quarantine),
        (to_source(IngestSummary(), RUN_FIELDS), runs),
    ]
    for source, template in pairs:
        mapped = template["template"]["mappings"]["properties"]
        assert set(source) <= set(mapped), set(source) - set(mapped)
    labels = assets["template"]["mappings"]["properties"]["labels"]["properties"]
    assert set(to_source(sample_doc(), FIELDS)["labels"][0]) == set(labels)


def test_knn_filter_sits_inside_the_knn_clause() -> None:
    request = requests()[1]
    knn = os_bodies.knn_body(request.vector, request.filter(), 30, 100)["query"]["knn"]
    knn = knn["embedding"]
    assert knn["filter"]["bool"]["filter"] and knn["k"] == 30
    assert knn["method_parameters"] == {"ef_search": 100}
    assert abs(sum(x * x for x in knn["vector"]) - 1) < 1e-9, "query vectors are normalised"


def _broken(path: list[str], value: Any, remove: str | None = None) -> dict:
    """The faiss asset template with one value replaced (or one key removed) at ``path``."""
    template = OpenSearchBackend.asset_template(settings(), DIM)
    node = template
    for key in path[:-1]:
        node = node[key]
    if remove is not None:
        del node[path[-1]][remove]
    else:
        node[path[-1]] = value
    return template


def _misspelt_knn() -> dict:
    body = os_bodies.knn_body([0.5] * DIM, None, 10, 100)
    body["query"]["knn"]["embedding"]["ef_serch"] = 10
    return body


EMBEDDING = ["template", "mappings", "properties", "embedding"]
WRONG = [
    # (operation, body, rejected by the published specification too, or only the strict one)
    ("search", {"size": 3, "query": {"knn": {"embedding": {"k": 3}}}}, "published"),
    ("indices.put_index_template", _broken([*EMBEDDING, "type"], "knn_vectr"), "published"),
    ("indices.put_index_template", _broken(EMBEDDING, None, remove="dimension"), "published"),
    ("search", _misspelt_knn(), "strict"),
    ("search", {"query": {"mulit_match": {"query": "cat", "fields": ["title"]}}}, "strict"),
    ("search", {"size": 0, "aggs": {"a": {"terms": {"feild": "label_names"}}}}, "strict"),
    ("indices.put_index_template", _broken([*EMBEDDING, "method", "spacetype"], "l2"), "strict"),
    ("indices.put_index_template", _broken(["priorty"], 3), "strict"),
]


@pytest.mark.parametrize(("operation", "body", "level"), WRONG)
def test_wrong_bodies_are_rejected(spec: Spec, operation: str, body: dict, level: str) -> None:
    """The check can fail: a knn query without its vector, an unknown field type or a vector
    without dimension break the published schemas; misspelt keys break the strict reading."""
    rejected = bool(spec.errors(spec.request_schema(operation), body))
    strict = spec is load_spec(True)
    assert rejected == (strict or level == "published")
