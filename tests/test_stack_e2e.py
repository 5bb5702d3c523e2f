"""End to end on the real stack: scripts/stack.sh brings up PostgreSQL, Redis, the OpenSearch
node, Airflow 3 with the CeleryExecutor and two Celery workers (worker-1, worker-2), and
``lookalike serve``. Everything goes through Airflow's REST API, the way a user's tooling
would: DAGs are unpaused and triggered, runs, task instances, XComs and task logs are read
back; the DAG files are never imported here. What landed is read from OpenSearch's own API.

The tests run in order on one stack and one library (each works from the state it finds):
the first ingest, an incremental run during which a worker is killed, a model rollout and
rollback through the scheduler while the search API is queried, a run on a missing folder,
and a run during which the OpenSearch node stops.

The stack is started here and torn down at the end, in ``LOOKALIKE_TEST_STACK_DIR`` if set
(.ci/run sets it, so that its own exit trap can tear down what a killed test run left). It
needs PostgreSQL and Redis from Debian (``apt-get install postgresql redis-server``) and what
scripts/opensearch.sh needs; where they are missing the tests skip with the reason, except
with ``LOOKALIKE_REQUIRE_STACK=1`` (CI): then they fail.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageOps
from support import Searcher

from benchmarks.airflow_stack import AirflowApi, Stack, StackError
from pipeline.discover import IMAGE_EXTENSIONS, path_to_uri
from pipeline.samples import build_samples

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("LOOKALIKE_REQUIRE_STACK") == "1"
INGEST, ROLLOUT = "lookalike_ingest", "lookalike_rollout"
BASE, GEM = "mobilenet_v2-imagenet@1", "mobilenet_v2-gem-imagenet@1"
WORKERS = {"worker-1", "worker-2"}
# What the services get on top of .env.example: short waits, so faults play out in seconds.
STACK_SETTINGS = {
    "LOOKALIKE_ENV_FILE": str(REPO / ".env.example"),
    "LOOKALIKE_STACK_AIRFLOW_PORT": "0",
    "LOOKALIKE_STACK_API_PORT": "0",
    "LOOKALIKE_STACK_WORKERS": "2",
    # Only triggered runs: unpausing a scheduled DAG would start a run of its own at once.
    "LOOKALIKE_INGEST_SCHEDULE": "none",
    # A killed worker's task is declared dead after 30 s instead of 5 min ...
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    # ... and retried after 5 s, 10 s, 20 s instead of 1, 2, 4 min.
    "LOOKALIKE_AIRFLOW_RETRY_DELAY_S": "5",
    "LOOKALIKE_ROLLOUT_SAMPLE_SIZE": "8",  # 32 self-check queries per model
}


# -- the stack -----------------------------------------------------------------------------------


def _missing() -> list[str]:
    postgres = glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")
    needed = {"PostgreSQL (initdb)": postgres, "Redis (redis-server)": shutil.which("redis-server")}
    return [name for name, found in needed.items() if not found]


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"LOOKALIKE_REQUIRE_STACK=1 but no stack: {reason}", pytrace=False)
    pytest.skip(f"no stack: {reason}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if missing := _missing():
        _unavailable(
            f"{', '.join(missing)} not installed (apt-get install postgresql redis-server)"
        )
    given = os.environ.get("LOOKALIKE_TEST_STACK_DIR")
    base = Path(given) if given else Path(tempfile.mkdtemp(prefix="lookalike-e2e-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # PostgreSQL runs as its own user (when root) and must reach its folder
    library = base / "library"
    build_samples(library)
    running = Stack(base / "stack", {**STACK_SETTINGS, "LOOKALIKE_LIBRARY": str(library)})
    try:
        running.up()
    except StackError as exc:
        running.down()
        _unavailable(str(exc))
    yield running
    running.down()
    if not given:
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def api(stack: Stack) -> AirflowApi:
    passwords = Path(stack.env()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    return AirflowApi(stack.airflow_url, json.loads(passwords.read_text())["admin"])


@pytest.fixture(scope="module")
def library(stack: Stack) -> Path:
    return Path(stack.environ["LOOKALIKE_LIBRARY"])


# -- what the index holds, from OpenSearch itself ------------------------------------------------


def documents(stack: Stack, index: str = "assets") -> dict[str, dict[str, Any]]:
    """URI -> document (without its vector) of every document the alias (or ``index``) holds;
    fails on a URI held twice."""
    http = httpx.Client(base_url=stack.opensearch_url, timeout=30)
    http.post(f"/{index}/_refresh").raise_for_status()
    found = http.post(
        f"/{index}/_search",
        json={"size": 10_000, "_source": {"excludes": ["embedding"]}, "query": {"match_all": {}}},
    ).json()["hits"]["hits"]
    uris = [hit["_source"]["uri"] for hit in found]
    assert len(uris) == len(set(uris)), "a URI is indexed twice"
    count = http.get(f"/{index}/_count").json()["count"]
    assert count == len(uris)
    return {hit["_source"]["uri"]: hit["_source"] for hit in found}


def alias_target(stack: Stack) -> str:
    aliases = httpx.get(f"{stack.opensearch_url}/_alias/assets", timeout=30).json()
    [index] = aliases
    return index


def image_files(library: Path) -> dict[str, str]:
    """URI -> SHA-256 of every decodable image of the library (broken/ holds the others)."""
    return {
        path_to_uri(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(library.rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and "broken" not in path.parts
    }


def batch_uris(api: AirflowApi, run_id: str) -> list[list[str]]:
    """Each mapped batch's URIs, as ``plan_batches`` cut them."""
    batches = api.xcom(INGEST, run_id, "plan_batches")
    return [[ref["asset"]["uri"] for ref in batch] for batch in batches]


def task_states(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ti in sorted(api.tasks(dag_id, run_id), key=lambda t: (t["task_id"], t["map_index"])):
        found.setdefault(ti["task_id"], []).append(ti["state"])
    return found


def why_failed(api: AirflowApi, dag_id: str, run_id: str) -> str:
    """The task states and the end of the first failed task's log: what CI shows when a run
    that should succeed fails (the stack's own logs go with it)."""
    tasks = api.tasks(dag_id, run_id)
    report = json.dumps(task_states(api, dag_id, run_id))
    failed = next((t for t in tasks if t["state"] == "failed"), None)
    if failed is not None:
        log = api.log(dag_id, run_id, failed["task_id"], 1, failed["map_index"])
        report += f"\nfirst failed task {failed['task_id']}[{failed['map_index']}]:\n{log[-4000:]}"
    return report


def edit(path: Path) -> None:
    """Change the picture in place (mirrored, re-encoded): new content, same file."""
    with Image.open(path) as image:
        changed = ImageOps.mirror(image.convert("RGB"))
    changed.save(path, format=Image.registered_extensions()[path.suffix.lower()])


def ingest(api: AirflowApi, library: Path, batch_size: int, **conf: Any) -> str:
    return api.trigger(
        INGEST,
        {
            "source": str(library),
            "manifest": str(library / "manifest.csv"),
            "batch_size": batch_size,
            "store": "opensearch",
            **conf,
        },
    )


# -- the tests -----------------------------------------------------------------------------------


def test_ingest_indexes_every_image_once_with_labels_on_both_workers(
    stack: Stack, api: AirflowApi, library: Path
) -> None:
    api.unpause(INGEST)
    run_id = ingest(api, library, batch_size=6)
    assert api.wait(INGEST, run_id) == "success", why_failed(api, INGEST, run_id)

    files = image_files(library)
    docs = documents(stack)
    assert set(docs) == set(files), "every image once"
    assert {uri: doc["sha256"] for uri, doc in docs.items()} == files
    for uri, doc in docs.items():
        assert doc["labels"] and all(label["name"] for label in doc["labels"]), uri
    assert docs[path_to_uri(library / "originals" / "chelsea.jpg")]["title"] == "Chelsea the cat"
    assert alias_target(stack) == "assets__mobilenet_v2_imagenet_1", "the first index is active"

    summary = api.xcom(INGEST, run_id, "summary")
    assert (summary["new"], summary["updated"], summary["deleted"]) == (len(files), 0, 0)
    reasons = {q["uri"].rsplit("/", 1)[-1]: q["reason"] for q in summary["quarantined"]}
    assert set(reasons) == {"empty.jpg", "not_an_image.png", "truncated.jpg"}
    assert all(reasons.values())
    quarantine = httpx.post(
        f"{stack.opensearch_url}/assets-quarantine/_search", json={"size": 100}, timeout=30
    ).json()["hits"]["hits"]
    assert {h["_source"]["uri"].rsplit("/", 1)[-1]: h["_source"]["reason"] for h in quarantine} == (
        reasons
    )

    batches = [t for t in api.tasks(INGEST, run_id) if t["task_id"] == "embed_batch"]
    assert len(batches) == -(-(len(files) + 3) // 6), "one mapped task per batch of 6"
    assert {t["hostname"] for t in batches} == WORKERS, "the batches ran on both workers"
    print(
        f"first ingest: {len(files)} images in {summary['duration_s']} s on {len(WORKERS)} workers"
    )


def test_changes_land_exactly_although_a_worker_is_killed_mid_batch(
    stack: Stack, api: AirflowApi, library: Path
) -> None:
    before = documents(stack)
    originals = sorted((library / "originals").glob("*.jpg"))
    added = library / "added"
    added.mkdir()
    for source in originals[:5]:  # 5 new images: rotated versions of originals
        with Image.open(source) as image:
            image.rotate(90, expand=True).save(added / f"{source.stem}_rotated.jpg", quality=90)
    changed = originals[5:8]
    for path in changed:
        edit(path)
    deleted = [library / "formats" / "rocket_cmyk.jpg", library / "formats" / "logo_rgba.png"]
    for path in deleted:
        path.unlink()

    run_id = ingest(api, library, batch_size=2)  # 8 images: 4 batches, 2 at a time
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline:
        for ti in api.tasks(INGEST, run_id):
            if ti["task_id"] == "embed_batch" and ti["state"] == "running" and ti["hostname"]:
                stack.kill(ti["hostname"])  # the whole worker, mid-batch, with kill -9
                killed = (ti["map_index"], ti["hostname"])
                break
        time.sleep(0.2)
    assert killed is not None, "no batch was seen running"
    killed_at = time.monotonic()
    assert api.wait(INGEST, run_id) == "success", why_failed(api, INGEST, run_id)
    done_after = time.monotonic() - killed_at
    print(f"killed {killed[1]} in batch {killed[0]}: the run succeeded {done_after:.0f} s later")

    map_index, worker = killed
    tries = api.tries(INGEST, run_id, "embed_batch", map_index)
    assert tries[0]["hostname"] == worker and tries[0]["state"] != "success"
    assert tries[-1]["state"] == "success" and tries[-1]["hostname"] in WORKERS - {worker}
    assert len(tries) >= 2, "Airflow retried the killed batch"

    summary = api.xcom(INGEST, run_id, "summary")
    assert (summary["new"], summary["updated"], summary["deleted"]) == (5, 3, 2)
    files = image_files(library)
    docs = documents(stack)  # no URI twice, the count agrees
    assert set(docs) == set(files), "no document missing, none left over"
    new = {path_to_uri(p) for p in added.iterdir()}
    assert set(docs) == (set(before) - {path_to_uri(p) for p in deleted}) | new
    for uri, doc in docs.items():
        assert doc["sha256"] == files[uri], uri
        if uri in before and uri not in {path_to_uri(p) for p in changed}:
            assert doc == before[uri], f"{uri} was rewritten although it did not change"

    stack.up()  # idempotent: starts only the killed worker again
    assert "stopped" not in stack.run("status")


def similar_to_asset(api_url: str, asset_id: str) -> Callable[[], str]:
    """A query to the search API for the 3 assets most like one; returns the model version
    that answered."""
    http = httpx.Client(base_url=api_url, timeout=30)

    def query() -> str:
        response = http.post("/search", json={"asset_id": asset_id, "k": 3})
        if response.status_code != 200:
            raise AssertionError(f"HTTP {response.status_code}: {response.text[:200]}")
        if len(hits := response.json()["hits"]) != 3:
            raise AssertionError(f"{len(hits)} hits")
        return response.json()["model"]

    return query


def test_rollout_through_the_scheduler_switches_while_search_answers_then_rolls_back(
    stack: Stack, api: AirflowApi
) -> None:
    docs = documents(stack)
    searcher = Searcher(similar_to_asset(stack.api_url, next(iter(docs.values()))["id"]), 0.05)
    searcher.start()
    try:
        searcher.wait_for(BASE)
        api.unpause(ROLLOUT)
        run_id = api.trigger(ROLLOUT, {"model": "mobilenet_v2-gem-imagenet", "batch_size": 20})
        assert api.wait(ROLLOUT, run_id, timeout_s=800) == "success", why_failed(
            api, ROLLOUT, run_id
        )
        searcher.wait_for(GEM)
        switched = len(searcher.models)
        back = api.trigger(ROLLOUT, {"rollback": True})
        assert api.wait(ROLLOUT, back) == "success", why_failed(api, ROLLOUT, back)
        searcher.wait_for(BASE)
    finally:
        searcher.stop.set()
        searcher.join()

    assert searcher.errors == [], searcher.errors[:5]
    models = searcher.models
    assert models[0] == BASE and GEM in models[:switched] and models[-1] == BASE
    assert set(models) == {BASE, GEM}
    print(f"{len(models)} searches during the rollout and the rollback, 0 errors")
    states = task_states(api, ROLLOUT, run_id)
    assert states["backfill_batch"] == ["success", "success"] and states["rollback"] == ["skipped"]
    hosts = {t["hostname"] for t in api.tasks(ROLLOUT, run_id) if t["task_id"] == "backfill_batch"}
    assert hosts <= WORKERS
    gate = api.xcom(ROLLOUT, run_id, "validate")["gate"]
    assert gate["passed"] and gate["method"] == "self-check" and gate["queries"] == 32
    assert api.xcom(ROLLOUT, run_id, "activate") == {"previous": BASE, "active": GEM}
    assert api.xcom(ROLLOUT, back, "rollback") == {"previous": GEM, "active": BASE}
    assert alias_target(stack) == "assets__mobilenet_v2_imagenet_1"
    gem = documents(stack, "assets__mobilenet_v2_gem_imagenet_1")
    assert set(gem) == set(docs), "the new index was backfilled with every document"
    assert {doc["model"] for doc in gem.values()} == {"mobilenet_v2-gem-imagenet"}


def test_a_missing_source_folder_fails_at_once_with_the_reason(
    stack: Stack, api: AirflowApi, library: Path
) -> None:
    before = documents(stack)
    nowhere = library.parent / "no-such-folder"
    run_id = ingest(api, library, batch_size=6, source=str(nowhere), manifest=None)
    assert api.wait(INGEST, run_id) == "failed"
    states = task_states(api, INGEST, run_id)
    assert states["discover"] == ["failed"]
    assert all(s == ["upstream_failed"] for task, s in states.items() if task != "discover")
    assert len(api.tries(INGEST, run_id, "discover")) == 1, "not retried: it would not help"
    log = api.log(INGEST, run_id, "discover", 1)
    assert f"source folder not found: {nowhere}" in log
    assert documents(stack) == before


def test_a_stopped_node_fails_the_run_after_retries_and_the_log_says_which_batches_landed(
    stack: Stack, api: AirflowApi, library: Path
) -> None:
    before = documents(stack)
    for path in sorted((library / "originals").iterdir())[:8]:
        edit(path)
    files = image_files(library)

    # 8 images: 4 batches, 2 at a time. The node stops once the first one landed, so that one
    # has landed and the last one starts after the node is gone.
    run_id = ingest(api, library, batch_size=2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = task_states(api, INGEST, run_id).get("embed_batch", [])
        if "success" in states:
            break
        time.sleep(0.2)
    stack.stop_node()
    assert api.wait(INGEST, run_id) == "failed"

    batches = [t for t in api.tasks(INGEST, run_id) if t["task_id"] == "embed_batch"]
    assert len(batches) == 4
    landed = sorted(t["map_index"] for t in batches if t["state"] == "success")
    lost = sorted(t["map_index"] for t in batches if t["state"] != "success")
    assert landed and lost, {t["map_index"]: t["state"] for t in batches}
    for ti in batches:
        if ti["map_index"] in lost:
            assert ti["state"] == "failed" and ti["try_number"] == 4, "retried 3 times"
    states = task_states(api, INGEST, run_id)
    assert states["all_landed"] == ["failed"]
    assert states["remove_deleted"] == states["summary"] == ["upstream_failed"]
    log = api.log(INGEST, run_id, "all_landed", 1)
    assert f"{len(lost)} of 4 batches did not land:" in log, log
    for i in landed:
        assert f"  batch {i}: 2 images (0 new, 2 updated, 0 quarantined)" in log, log
    assert "Nothing was deleted and the run was not recorded" in log

    stack.up()  # the node again, on its port, with its data
    uris = batch_uris(api, run_id)
    docs = documents(stack)
    assert set(docs) == set(before)
    for i, batch in enumerate(uris):
        for uri in batch:
            if i in landed:
                assert docs[uri]["sha256"] == files[uri], "landed"
            else:  # each document whole: the old one or, had its write begun, the new one
                assert docs[uri]["sha256"] in (before[uri]["sha256"], files[uri])
            assert docs[uri]["labels"]

    again = ingest(api, library, batch_size=2)
    assert api.wait(INGEST, again) == "success", why_failed(api, INGEST, again)
    summary = api.xcom(INGEST, again, "summary")
    assert summary["new"] == 0 and 2 * len(lost) >= summary["updated"] >= 1
    assert {uri: doc["sha256"] for uri, doc in documents(stack).items()} == files
