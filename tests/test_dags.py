"""The Airflow DAGs: integrity (as the Astronomer project template checks it) and real runs.

Runs go through ``dag.test()``: Airflow 3 in this process, on a throw-away SQLite metadata
database, with the real model and the real sample library, offline. Airflow reads its
configuration once, when it is first imported, so the ``airflow_env`` fixture sets
``AIRFLOW_HOME`` and the DAG folder before anything imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from support import Searcher

from pipeline import filters, tags
from pipeline.document import Judgement
from pipeline.library import Library
from pipeline.search import SearchRequest
from pipeline.settings import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
DAGS = REPO / "dags"
BASE, GEM = "mobilenet_v2-imagenet@1", "mobilenet_v2-gem-imagenet@1"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Airflow configured for this module, its metadata database created, the DAGs parsed."""
    home = tmp_path_factory.mktemp("airflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
        mp.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils import db

        db.resetdb()
        bag = DagBag(str(DAGS))
        yield {"bag": bag, "home": home}


@pytest.fixture(params=["embedded", "opensearch"])
def lookalike(
    request: pytest.FixtureRequest,
    embedder,
    tmp_path: Path,
    sample_manifest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """A fresh store for the DAG runs (they read ``LOOKALIKE_*`` from the environment, as on a
    worker) and a writable copy of the sample library. The model cache stays the session's:
    ``embedder`` loaded it, and the new home's ``models`` points at it.

    On the real OpenSearch node (tests/nodes.py) the tasks reach the cluster through the
    OpenSearch provider's Airflow connection ``opensearch_default``, as a deployment does."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(Settings().model_dir, target_is_directory=True)
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))
    monkeypatch.setenv("LOOKALIKE_ROLLOUT_SAMPLE_SIZE", "8")  # 32 self-check queries
    library = tmp_path / "library"
    shutil.copytree(sample_manifest.parent, library)
    if request.param == "opensearch":
        node = request.getfixturevalue("opensearch_node")
        for key, value in {**node.env(), "LOOKALIKE_TABLE": "dags"}.items():
            monkeypatch.setenv(key, value)
        url = httpx.URL(node.url)
        connection = {"conn_type": "opensearch", "host": url.host, "port": url.port}
        monkeypatch.setenv("AIRFLOW_CONN_OPENSEARCH_DEFAULT", json.dumps(connection))
        _drop_indices(node.url, "dags")
    yield {"library": library, "manifest": library / "manifest.csv", "store": request.param}
    if request.param == "opensearch":
        _drop_indices(node.url, "dags")


def _drop_indices(url: str, base: str) -> None:
    from opensearchpy import OpenSearch

    client = OpenSearch(url)
    if names := list(client.indices.get(index=f"{base}*")):
        client.indices.delete(index=",".join(names))
    client.close()


def writes(library: Library) -> int:
    """A counter that moves with every write to the active index: the LanceDB table version,
    or the cluster's count of indexing and delete operations."""
    index = library.index()
    if library.settings.store == "embedded":
        return index.table.version
    stats = library.backend.client.indices.stats(index=index.name, metric="indexing")
    indexing = stats["_all"]["primaries"]["indexing"]
    return indexing["index_total"] + indexing["delete_total"]


def run(dag: Any, **conf: Any) -> Any:
    """One ``dag.test()`` run with every param spelled out: in-process runs share the task
    objects, and Airflow 3.3 carries a previous run's conf over into params it leaves out."""
    return dag.test(run_conf={**{key: param.value for key, param in dag.params.items()}, **conf})


def states(dagrun: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ti in sorted(dagrun.get_task_instances(), key=lambda ti: (ti.task_id, ti.map_index)):
        found.setdefault(ti.task_id, []).append(str(ti.state))
    return found


def xcom(dagrun: Any, task_id: str) -> Any:
    return dagrun.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def asset_events(dagrun: Any) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_run_id == dagrun.run_id)
        ).all()
        return [dict(event.extra) for event in events]


# -- integrity ---------------------------------------------------------------------------------

_PARSE = """
import json, os, sys, time
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(sys.argv[1])
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "files": {os.path.basename(s.file): s.duration.total_seconds() for s in bag.dagbag_stats},
    "errors": {os.path.basename(k): v for k, v in bag.import_errors.items()},
    "tensorflow": "tensorflow" in sys.modules or "keras" in sys.modules,
    "schedule": str(bag.dags["lookalike_ingest"].schedule),
}))
"""


@pytest.mark.parametrize(
    ("setting", "schedule"), [("*/20 * * * *", "*/20 * * * *"), ("none", "None")]
)
def test_dag_files_parse_in_a_fraction_of_a_second_without_tensorflow(
    tmp_path: Path, setting: str, schedule: str
) -> None:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "LOOKALIKE_INGEST_SCHEDULE": setting,
    }
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, str(DAGS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    print(parsed)
    assert parsed["errors"] == {}
    assert set(parsed["files"]) == {"lookalike_ingest.py", "lookalike_rollout.py"}
    assert all(seconds < 1.0 for seconds in parsed["files"].values()), parsed["files"]
    assert not parsed["tensorflow"], "TensorFlow must be imported inside tasks only"
    assert parsed["schedule"] == schedule, "the schedule comes from the settings"


def test_every_dag_has_tags_docs_and_retries(airflow_env: dict[str, Any]) -> None:
    bag = airflow_env["bag"]
    assert not bag.import_errors
    assert set(bag.dags) == {"lookalike_ingest", "lookalike_rollout"}
    for dag_id, dag in bag.dags.items():
        assert dag.tags and "lookalike" in dag.tags, dag_id
        assert dag.doc_md and dag.doc_md.strip().startswith("## Lookalike"), dag_id
        assert dag.default_args.get("retries", 0) >= 2, dag_id
        assert all(task.retries >= 2 for task in dag.tasks), dag_id
        assert dag.max_active_tasks == Settings().airflow_max_active_tasks, dag_id
    ingest = bag.dags["lookalike_ingest"]
    assert str(ingest.schedule) == "@hourly"
    assert set(ingest.params) == {"source", "manifest", "batch_size", "store"}
    assert ingest.get_task("embed_batch").pool == Settings().airflow_pool
    outlets = {t.task_id: [a.name for a in t.outlets] for t in ingest.tasks if t.outlets}
    assert outlets == {"announce": ["lookalike_index"]}
    rollout = bag.dags["lookalike_rollout"]
    assert rollout.schedule is None and {"model", "rollback"} <= set(rollout.params)


def test_the_opensearch_connection_configures_a_cluster_store(
    airflow_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAGs read the OpenSearch provider's ``opensearch_default`` connection (here from an
    ``AIRFLOW_CONN_*`` variable, one of Airflow's secrets backends) into the cluster settings;
    without it, the ``LOOKALIKE_CLUSTER_*`` settings apply."""
    import lookalike_airflow as module  # Airflow configured by airflow_env first

    monkeypatch.setenv("LOOKALIKE_CLUSTER_URLS", "https://fallback.example:9200")
    fallback = module.run_settings({"store": "opensearch"})
    assert fallback.cluster_urls == ["https://fallback.example:9200"]
    connection = {
        "conn_type": "opensearch",
        "host": "search.example.org",
        "port": 9201,
        "login": "lookalike",
        "password": "s3cret",
        "extra": {"use_ssl": True, "verify_certs": False, "timeout": 12},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OPENSEARCH_DEFAULT", json.dumps(connection))
    settings = module.run_settings({"store": "opensearch"})
    assert settings.store == "opensearch"
    assert settings.cluster_urls == ["https://search.example.org:9201"]
    assert settings.cluster_user == "lookalike"
    assert settings.cluster_password.get_secret_value() == "s3cret"
    assert settings.cluster_verify_certs is False and settings.cluster_timeout_s == 12
    assert module.run_settings({"store": "embedded"}).cluster_urls == fallback.cluster_urls


# -- the ingest DAG ----------------------------------------------------------------------------


def test_ingest_dag_indexes_once_writes_nothing_again_and_removes_deleted_files(
    airflow_env: dict[str, Any], lookalike: dict[str, Path]
) -> None:
    from pipeline.discover import asset_id, path_to_uri

    dag = airflow_env["bag"].dags["lookalike_ingest"]
    library, manifest = lookalike["library"], lookalike["manifest"]
    conf = {
        "source": str(library),
        "manifest": str(manifest),
        "batch_size": 16,
        "store": lookalike["store"],
    }
    good = len(pd.read_csv(manifest)) + len(list((library / "formats").iterdir()))

    first = run(dag, **conf)
    assert first.state == "success", states(first)
    summary = xcom(first, "summary")
    assert summary["new"] == good and summary["updated"] == summary["deleted"] == 0
    assert {q["uri"].rsplit("/", 1)[-1] for q in summary["quarantined"]} == {
        "empty.jpg",
        "not_an_image.png",
        "truncated.jpg",
    }
    assert all(q["reason"] for q in summary["quarantined"])
    assert summary["outcome"] == "quarantined", "the outcome `lookalike ingest` exits 3 for"
    assert states(first)["embed_batch"] == ["success"] * -(-(good + 3) // 16)
    with Library.open(Settings()) as lib:
        assert lib.catalogue.active() == BASE and lib.index().count() == good
        runs = lib.runs.runs()
        assert runs[0].run_id == first.run_id, "recorded where Dashboards read it"
        version = writes(lib)
    [event] = asset_events(first)
    assert event["new"] == good and event["model"] == BASE

    second = run(dag, **conf)
    assert second.state == "success", states(second)
    again = xcom(second, "summary")
    assert (again["new"], again["updated"], again["deleted"], again["quarantined"]) == (0, 0, 0, [])
    assert again["unchanged"] == good + 3
    assert (again["outcome"], again["quarantined_earlier"]) == ("quarantined", 3)
    assert states(second)["embed_batch"] == ["skipped"], "nothing to map"
    assert states(second)["announce"] == ["skipped"] and asset_events(second) == []
    with Library.open(Settings()) as lib:
        assert writes(lib) == version, "an unchanged folder writes nothing"
        runs = lib.runs.runs()
        assert [r.run_id for r in runs] == [first.run_id], "an idle run records nothing"

    gone = library / "formats" / "rocket_cmyk.jpg"  # not in the manifest: a plain file
    gone_id = asset_id(path_to_uri(gone))
    with Library.open(Settings()) as lib:
        before = set(lib.states(lib.index()))
    assert gone_id in before
    gone.unlink()
    third = run(dag, **conf)
    assert third.state == "success", states(third)
    removed = xcom(third, "summary")
    assert (removed["new"], removed["updated"], removed["deleted"]) == (0, 0, 1)
    with Library.open(Settings()) as lib:
        assert lib.index().count() == good - 1
        assert set(lib.states(lib.index())) == before - {gone_id}, "exactly that asset"
    assert asset_events(third)[0]["deleted"] == 1

    # A tag trained between runs reaches the whole library with the next run, with no file
    # changed (apply_tags), and only once.
    with Library.open(Settings()) as lib:
        index = lib.index()
        docs = index.get(list(index.states()))
        judged = [
            Judgement(tag="kitty", asset_id=i, uri=d.uri, judge=int("chelsea" in d.uri))
            for i, d in sorted(docs.items())
        ]
        tags.train("kitty", judged, index, lib.settings)
    fourth = run(dag, **conf)
    assert fourth.state == "success", states(fourth)
    assert xcom(fourth, "apply_tags")["scored"] == good - 1
    with Library.open(Settings()) as lib:
        passing = lib.index().count(filters.Term("tag_names", ("kitty",)))
        assert passing == sum(j.judge for j in judged) > 0, "the cat photos, and only those"
    assert xcom(run(dag, **conf), "apply_tags")["scored"] == 0, "nothing stale the next time"


def test_a_retried_batch_duplicates_nothing(embedder, lookalike: dict[str, Path]) -> None:
    """What a mapped ``embed_batch`` retry does after a crash that happened after its write:
    the same batch again, counted from the plan's recorded states, upserted by id."""
    from pipeline.ingest import plan_batches, plan_run, run_batch

    settings = Settings(batch_size=4)
    plan = plan_run(lookalike["library"] / "copies", settings=settings)
    [batch] = plan_batches(plan.todo, 10)
    first = run_batch(batch, plan.model, settings)
    with Library.open(settings) as library:
        written = library.index(plan.model).states()
    retried = run_batch(batch, plan.model, settings)
    assert first.new == retried.new == 10 and retried.updated == 0
    with Library.open(settings) as library:
        index = library.index(plan.model)
        assert index.count() == 10 and index.states().keys() == written.keys()


# -- the rollout DAG ---------------------------------------------------------------------------


def similar_to_asset(asset_id: str) -> Callable[[], str]:
    """A query as the API makes it: the library's active version, 3 hits expected; returns
    the model version that answered."""

    def query() -> str:
        with Library.open(Settings()) as library:
            searcher = library.searcher()
            hits = searcher.similar(asset_id, SearchRequest(k=3)).hits
            if len(hits) != 3:
                raise AssertionError(f"{len(hits)} hits from {searcher.index.model_id}")
            return searcher.index.model_id

    return query


def test_rollout_dag_switches_versions_while_search_answers_and_rolls_back(
    airflow_env: dict[str, Any], lookalike: dict[str, Path], capfd: pytest.CaptureFixture
) -> None:
    from pipeline.ingest import ingest

    ingested = ingest(lookalike["library"], lookalike["manifest"], settings=Settings())
    dag = airflow_env["bag"].dags["lookalike_rollout"]
    store_kind = lookalike["store"]
    with Library.open(Settings()) as library:
        asset_id = next(iter(library.index().states()))
        assert library.catalogue.active() == BASE

    searcher = Searcher(similar_to_asset(asset_id))
    searcher.start()
    try:
        time.sleep(0.5)
        rolled = run(dag, model="mobilenet_v2-gem-imagenet", batch_size=16, store=store_kind)
        time.sleep(0.5)
    finally:
        searcher.stop.set()
        searcher.join()
    assert rolled.state == "success", states(rolled)
    assert searcher.errors == [] and len(searcher.models) > 20
    assert searcher.models[0] == BASE and searcher.models[-1] == GEM, "before and after"
    assert set(searcher.models) == {BASE, GEM}
    assert states(rolled)["rollback"] == ["skipped"]
    gate = xcom(rolled, "validate")["gate"]
    assert gate["passed"] and gate["method"] == "self-check" and gate["queries"] == 32
    assert xcom(rolled, "activate") == {"previous": BASE, "active": GEM}
    [event] = asset_events(rolled)
    assert event["active"] == GEM
    with Library.open(Settings()) as library:
        assert library.catalogue.active() == GEM
        counts = {info.model_id: info.count for info in library.catalogue.indexes()}
        assert counts == {BASE: ingested.new, GEM: ingested.new}, "the previous index is kept"

    back = run(dag, rollback=True, store=store_kind)
    assert back.state == "success", states(back)
    assert states(back)["plan_backfill"] == ["skipped"] and states(back)["validate"] == ["skipped"]
    assert xcom(back, "rollback") == {"previous": GEM, "active": BASE}
    with Library.open(Settings()) as library:
        assert library.catalogue.active() == BASE

    capfd.readouterr()
    failed = run(dag, model="mobilenet_v2-gem-imagenet", tolerance=-1.0, store=store_kind)
    assert failed.state == "failed"
    assert states(failed)["validate"] == ["failed"] and states(failed)["activate"] == [
        "upstream_failed"
    ]
    assert states(failed)["backfill_batch"] == ["skipped"], "resumed: nothing left to embed"
    logged = "".join(capfd.readouterr())
    assert "quality gate failed: self-check rank-1 rate of mobilenet_v2-gem-imagenet@1" in logged
    assert f"the alias still points to {BASE}" in logged
    with Library.open(Settings()) as library:
        assert library.catalogue.active() == BASE, "a failed gate leaves the alias unchanged"
