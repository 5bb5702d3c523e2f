"""
## Lookalike: incremental ingestion

Brings the search index in line with a media folder: new and changed images are read, embedded,
labelled and written; files that cannot be decoded are quarantined with the reason; documents of
deleted files are removed. An unchanged folder costs a directory walk and writes nothing.

**Tasks**: `discover` (scan, compare with the index) -> `plan_batches` -> `embed_batch` (one
mapped task per batch: read, embed, label, write) -> `all_landed` -> `remove_deleted` ->
`summary` (returned as XCom, logged, and recorded in the store, where Dashboards and
`lookalike runs` read it) -> `apply_tags` (custom tags: scores the assets that the newest
version of a tag has not scored yet, so a tag trained with `lookalike tags train` reaches the
whole library with the next run; new files are scored as they are written) -> `announce`
(updates the `lookalike_index` Asset when the index changed, so downstream DAGs can be
scheduled on it).

**Safe to re-run and to retry**: documents are upserted by id, so a retried batch or a re-run
interval duplicates nothing; each batch carries the index state it was planned against. A run
killed half-way is recorded as "running" and marked "interrupted" by the next one, which also
builds whatever indexes it left missing.

**Outcome**: the `summary` XCom's `outcome` is `indexed` (every file indexed) or `quarantined`
(some files are quarantined, by this run or an earlier one), the outcomes `lookalike ingest`
exits 0 and 3 for; the task logs a warning for the latter. Files that cannot be read (FIFOs,
devices, loops, permissions), decoded, or decoded within `LOOKALIKE_DECODE_TIMEOUT_S` are
quarantined, never fatal.

**Faults**: a missing or unreadable source folder fails `discover` at once with the reason
(nothing is planned: an unreadable folder would otherwise look empty and its documents be
deleted). An unreachable cluster makes the tasks retry with back-off, then fail. If a batch
failed for good, `all_landed` fails the run and its log lists which batches (map indexes of
`embed_batch`) landed and which did not; nothing is deleted or recorded, and the next run
embeds only what did not land.

**Params**: `source` (folder), `manifest` (CSV/Parquet with titles, keywords, metadata),
`batch_size` (images per mapped task) and `store` (`embedded`, `opensearch`, `elasticsearch`).
With a cluster store the URL and credentials come from the Airflow connection
`opensearch_default` (the OpenSearch provider's), or from the `LOOKALIKE_CLUSTER_*` settings.

**Settings** (`LOOKALIKE_*` variables of the Airflow processes): `INGEST_SOURCE`,
`INGEST_MANIFEST`, `INGEST_SCHEDULE` (default hourly), `AIRFLOW_MAX_ACTIVE_TASKS` and
`AIRFLOW_POOL` (each embedding task holds a TensorFlow model, ~0.8 GB).
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from lookalike_airflow import INDEX, SETTINGS, common_params, default_args, pulled, run_settings

# The pipeline's run modules are imported inside the tasks (deliberately lazy): parsing this
# file stays light (the scheduler re-parses it often) and TensorFlow loads only in a worker.

log = logging.getLogger(__name__)


@dag(
    dag_id="lookalike_ingest",
    schedule=SETTINGS.ingest_schedule,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two runs over one folder would plan the same work twice
    max_active_tasks=SETTINGS.airflow_max_active_tasks,
    default_args=default_args(retries=3),
    params={
        "source": Param(
            str(SETTINGS.ingest_source or SETTINGS.samples_dir),
            type="string",
            minLength=1,
            description="Folder of images, scanned recursively.",
        ),
        "manifest": Param(
            str(SETTINGS.ingest_manifest) if SETTINGS.ingest_manifest else None,
            type=["null", "string"],
            description="CSV/Parquet manifest: path, title, description, keywords, metadata.",
        ),
        **common_params(),
    },
    tags=["lookalike", "ingest"],
    doc_md=__doc__,
)
def lookalike_ingest() -> None:
    @task
    def discover(params: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Scan the folder and compare it with the index: what to embed, what to delete."""
        from pipeline import ingest
        from pipeline.discover import SourceError

        try:
            plan = ingest.plan_run(
                params["source"], params["manifest"], run_settings(params), run_id=run_id
            )
        except SourceError as exc:  # retrying would not change it: fail now, say why
            log.error("%s", exc)
            raise AirflowFailException(str(exc)) from None
        log.info(
            "%s: %d to embed, %d unchanged, %d to delete (index %s)",
            plan.source,
            len(plan.todo),
            plan.unchanged,
            len(plan.deleted),
            plan.model,
        )
        return plan.model_dump(mode="json")

    @task
    def plan_batches(plan: dict[str, Any], params: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """One batch per mapped task, never more batches than Airflow maps."""
        from pipeline import ingest

        limit = conf.getint("core", "max_map_length", fallback=1024)
        return ingest.plan_batches(plan["todo"], params["batch_size"], max_batches=limit)

    @task(pool=SETTINGS.airflow_pool)
    def embed_batch(
        batch: list[dict[str, Any]], plan: dict[str, Any], params: dict[str, Any], ti: Any
    ) -> dict[str, Any]:
        """Read, embed, label and write one batch (idempotent: upserts by id)."""
        from pipeline import ingest

        refs = [ingest.AssetRef.model_validate(ref) for ref in batch]
        result = ingest.run_batch(refs, plan["model"], run_settings(params))
        return {"batch": ti.map_index, **result.model_dump(mode="json")}

    # Once every batch is done, landed or not; skipped (and not needed) when none was mapped.
    @task(trigger_rule="all_done_min_one_success")
    def all_landed(batches: list[list[dict[str, Any]]], results: Any) -> None:
        """Fail the run (no retry) unless every batch landed; the log says which did."""
        from pipeline import ingest

        try:
            ingest.landed_results(
                [[ingest.AssetRef.model_validate(ref) for ref in batch] for batch in batches],
                {r["batch"]: ingest.BatchResult.model_validate(r) for r in pulled(results)},
            )
        except ingest.IncompleteRun as exc:
            log.error("%s", exc)
            raise AirflowFailException(str(exc).splitlines()[0]) from None

    @task(trigger_rule="none_failed")  # also when there was nothing to embed
    def remove_deleted(plan: dict[str, Any], params: dict[str, Any]) -> int:
        """Remove the documents of files that are gone."""
        from pipeline import ingest

        return ingest.remove_deleted(ingest.RunPlan.model_validate(plan), run_settings(params))

    @task(trigger_rule="none_failed")
    def summary(
        plan: dict[str, Any], results: Any, deleted: int, params: dict[str, Any]
    ) -> dict[str, Any]:
        """Close the run: compact the index, record the summary in the store, return it."""
        from pipeline import ingest

        run = ingest.finish_run(
            ingest.RunPlan.model_validate(plan),
            [ingest.BatchResult.model_validate(r) for r in pulled(results)],
            deleted,
            run_settings(params),
        )
        log.info(
            "%s: new %d, updated %d, unchanged %d, deleted %d, quarantined %d (+%d earlier) "
            "(%.1f s, %.1f images/s)",
            run.outcome,
            run.new,
            run.updated,
            run.unchanged,
            run.deleted,
            len(run.quarantined),
            run.quarantined_earlier,
            run.duration_s,
            run.images_per_s,
        )
        for item in run.quarantined:
            log.warning("quarantined %s: %s", item.uri, item.reason)
        if run.outcome == "quarantined":
            log.warning(
                "finished with quarantined files (`lookalike ingest` exits 3 for this outcome); "
                "`lookalike quarantine` lists them"
            )
        return run.model_dump(mode="json")

    @task(trigger_rule="none_failed")
    def apply_tags(summary: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Backfill custom tags (store reads and writes, no model): a no-op when every asset
        carries the newest version of every tag."""
        from pipeline import tags
        from pipeline.library import Library

        with Library.open(run_settings(params)) as library:
            applied = tags.apply(library)
        log.info("tags: scored %d assets; passing %s", applied.scored, applied.passing)
        return applied.model_dump(mode="json")

    @task(outlets=[INDEX])
    def announce(summary: dict[str, Any], outlet_events: Any) -> None:
        """Update the index Asset, but only when this run changed the index."""
        if not (summary["new"] or summary["updated"] or summary["deleted"]):
            raise AirflowSkipException("the index did not change")
        outlet_events[INDEX].extra = {
            key: summary[key] for key in ("run_id", "model", "new", "updated", "deleted")
        }

    plan = discover()
    batches = plan_batches(plan)
    written = embed_batch.partial(plan=plan).expand(batch=batches)
    deleted = remove_deleted(plan)
    all_landed(batches, written) >> deleted
    closed = summary(plan, written, deleted)
    apply_tags(closed) >> announce(closed)


lookalike_ingest()
