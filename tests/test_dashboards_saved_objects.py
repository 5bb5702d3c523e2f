"""The OpenSearch Dashboards saved objects in ``mappings/dashboards-saved-objects.ndjson``:
they parse, every reference resolves to an object of the file, the index patterns name the
indices the store writes, and every field a visualisation or the saved search uses exists in
those indices' mappings with a type Dashboards can aggregate or sort on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Settings
from pipeline.store.cluster import log_templates, quarantine_index, runs_index
from pipeline.store.opensearch import OpenSearchBackend

REPO = Path(__file__).resolve().parents[1]
NDJSON = REPO / "mappings" / "dashboards-saved-objects.ndjson"
AGGREGATABLE = {"keyword", "date", "long", "integer", "float", "double", "boolean"}


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    lines = [line for line in NDJSON.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    by_id = {o["id"]: o for o in parsed}
    assert len(by_id) == len(parsed), "ids are unique"
    return by_id


def mappings_by_title() -> dict[str, dict[str, Any]]:
    """Index pattern title -> the flattened field types of the indices it covers."""
    settings = Settings(home=Path("/nonexistent"))
    base = settings.table
    logs = log_templates(base, settings)
    templates = {
        base: OpenSearchBackend.asset_template(settings, 1280),
        quarantine_index(base): logs[f"{base}-quarantine"],
        runs_index(base): logs[f"{base}-runs"],
    }
    return {
        title: _flatten(t["template"]["mappings"]["properties"]) for title, t in templates.items()
    }


def _flatten(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    fields = {}
    for name, spec in properties.items():
        fields[prefix + name] = spec.get("type", "object")
        fields |= _flatten(spec.get("properties", {}), f"{prefix}{name}.")
        fields |= {f"{prefix}{name}.{sub}": s["type"] for sub, s in spec.get("fields", {}).items()}
    return fields


def test_the_objects_the_issue_asks_for(objects) -> None:
    types = sorted(o["type"] for o in objects.values())
    assert types.count("index-pattern") == 3 and types.count("dashboard") == 1
    assert types.count("search") == 1 and types.count("visualization") == 3
    titles = {o["attributes"]["title"] for o in objects.values()}
    assert {"Lookalike - top labels", "Lookalike - assets ingested over time"} <= titles
    assert "Lookalike - quarantined files" in titles


def test_every_reference_resolves(objects) -> None:
    for obj in objects.values():
        for ref in obj["references"]:
            assert ref["id"] in objects, (obj["id"], ref)
            assert objects[ref["id"]]["type"] == ref["type"], (obj["id"], ref)
        attributes = obj["attributes"]
        source = attributes.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        if source and "indexRefName" in json.loads(source):
            names = {r["name"] for r in obj["references"]}
            assert json.loads(source)["indexRefName"] in names, obj["id"]
        if obj["type"] == "dashboard":
            panels = json.loads(attributes["panelsJSON"])
            assert {p["panelRefName"] for p in panels} == {r["name"] for r in obj["references"]}
            assert len(panels) == 4


def test_index_patterns_name_the_store_indices(objects) -> None:
    mappings = mappings_by_title()
    for obj in objects.values():
        if obj["type"] == "index-pattern":
            title = obj["attributes"]["title"]
            assert title in mappings, title
            if time_field := obj["attributes"].get("timeFieldName"):
                assert mappings[title][time_field] == "date", (title, time_field)


def test_fields_used_exist_with_usable_types(objects) -> None:
    mappings = mappings_by_title()

    def pattern_of(obj: dict[str, Any]) -> dict[str, str]:
        ref = next(r for r in obj["references"] if r["type"] == "index-pattern")
        return mappings[objects[ref["id"]]["attributes"]["title"]]

    for obj in objects.values():
        if obj["type"] == "visualization":
            state = json.loads(obj["attributes"]["visState"])
            assert state["title"] == obj["attributes"]["title"]
            fields = pattern_of(obj)
            for agg in state["aggs"]:
                if field := agg["params"].get("field"):
                    assert fields.get(field) in AGGREGATABLE, (obj["id"], field)
        if obj["type"] == "search":
            fields = pattern_of(obj)
            assert set(obj["attributes"]["columns"]) <= set(fields)
            for field, _direction in obj["attributes"]["sort"]:
                assert fields[field] in AGGREGATABLE
