"""
## Lookalike: model rollout and rollback

Re-embeds the whole library with another model version (from the model registry) without
search going down: the new version gets its own index, filled while searches keep using the
current one, and the alias that searches follow moves to it in one atomic step only after the
new index passed validation. The previous index is kept, so a rollback is one more move.

**Tasks**: `choose` -> either `rollback` (param `rollback`: point the alias back at the version
the last switch replaced) or `plan_backfill` (create the new index, list what it lacks; a
re-run resumes) -> `plan_batches` -> `backfill_batch` (one mapped task per batch: re-read the
files by URI, embed, label, copy metadata, upsert) -> `validate` -> `activate`.

**Validation**: both indexes must hold the same documents, then the quality gate: with a
labelled evaluation set (`LOOKALIKE_ROLLOUT_EVAL_MANIFEST`) the new version's mAP may not be
worse than the current one's by more than `tolerance`; without one, a self-check needs no
labels: cropped, mirrored, colour-graded and re-compressed copies of sampled assets must find
their originals at rank 1 (at least `min_match_rate`, and within `tolerance` of the current
version). A failed gate fails the run with the measurements and leaves the alias unchanged;
it is not retried (the verdict would not change).

`activate` and `rollback` update the `lookalike_index` Asset; both are recorded as runs in the
store, next to the ingest runs.

Pause `lookalike_ingest` during a rollout: documents it adds meanwhile make the document check
fail (re-running the rollout then resumes and catches up).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.configuration import conf
from airflow.sdk.exceptions import AirflowFailException

from lookalike_airflow import INDEX, SETTINGS, common_params, default_args, pulled, run_settings

# The pipeline's run modules are imported inside the tasks (deliberately lazy): parsing this
# file stays light (the scheduler re-parses it often) and TensorFlow loads only in a worker.
from pipeline.backbones import REGISTRY
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def _settings(params: Mapping[str, Any]) -> Settings:
    return run_settings(
        params,
        rollout_min_match_rate=params["min_match_rate"],
        rollout_tolerance=params["tolerance"],
    )


@dag(
    dag_id="lookalike_rollout",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=SETTINGS.airflow_max_active_tasks,
    default_args=default_args(retries=2),
    params={
        "model": Param(
            None,
            type=["null", "string"],
            examples=sorted(REGISTRY),
            description="The model version to roll out: a built-in backbone, or a version "
            "trained by `lookalike train` (name or name@N; `lookalike models` lists them).",
        ),
        "rollback": Param(
            False,
            type="boolean",
            description="Instead of rolling out: switch back to the previous version.",
        ),
        **common_params(),
        "min_match_rate": Param(
            SETTINGS.rollout_min_match_rate,
            type="number",
            minimum=0,
            maximum=1,
            description="Self-check: least share of copies that find their original first.",
        ),
        "tolerance": Param(
            SETTINGS.rollout_tolerance,
            type="number",
            minimum=-1,
            maximum=1,
            description="How much worse than the current version the new one may score "
            "(negative: how much better it must score).",
        ),
    },
    tags=["lookalike", "rollout"],
    doc_md=__doc__,
)
def lookalike_rollout() -> None:
    @task.branch
    def choose(params: dict[str, Any]) -> str:
        """Roll back, or roll out the chosen model."""
        if params["rollback"]:
            return "rollback"
        if not params["model"]:
            raise AirflowFailException("choose a model to roll out (param 'model')")
        return "plan_backfill"

    @task(outlets=[INDEX])
    def rollback(params: dict[str, Any], outlet_events: Any) -> dict[str, Any]:
        """Point the alias back at the version the last switch replaced."""
        from pipeline import rollout

        try:
            switch = rollout.rollback(_settings(params))
        except rollout.RolloutError as exc:
            raise AirflowFailException(str(exc)) from exc
        log.info("alias: %s -> %s", switch.previous, switch.active)
        outlet_events[INDEX].extra = switch.model_dump()
        return switch.model_dump()

    @task
    def plan_backfill(params: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Create the new index and list the assets it lacks (a re-run resumes)."""
        from pipeline import rollout

        try:
            plan = rollout.plan_backfill(params["model"], _settings(params), run_id=run_id)
        except rollout.RolloutError as exc:
            raise AirflowFailException(str(exc)) from exc
        log.info(
            "%s -> %s: %d to embed, %d already there, %d stale removed",
            plan.source_model,
            plan.target_model,
            len(plan.todo),
            plan.resumed,
            plan.removed,
        )
        return plan.model_dump(mode="json")

    @task
    def plan_batches(plan: dict[str, Any], params: dict[str, Any]) -> list[list[str]]:
        """One batch of asset ids per mapped task, never more batches than Airflow maps."""
        from pipeline import ingest

        limit = conf.getint("core", "max_map_length", fallback=1024)
        return ingest.plan_batches(plan["todo"], params["batch_size"], max_batches=limit)

    @task(pool=SETTINGS.airflow_pool)
    def backfill_batch(
        batch: list[str], plan: dict[str, Any], params: dict[str, Any]
    ) -> dict[str, Any]:
        """Re-read, embed, label and write one batch into the new index (idempotent)."""
        from pipeline import rollout

        plan_ = rollout.RolloutPlan.model_validate(plan)
        result = rollout.backfill_batch(plan_, batch, _settings(params))
        return result.model_dump(mode="json")

    # Runs after zero backfill batches too (nothing left to embed), but not after a rollback.
    @task(trigger_rule="none_failed_min_one_success", pool=SETTINGS.airflow_pool)
    def validate(
        plan: dict[str, Any], results: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        """Same documents in both indexes, then the quality gate; failing either fails the
        run (no retry) and leaves the alias where it is."""
        from pipeline import rollout

        try:
            validation = rollout.validate(
                rollout.RolloutPlan.model_validate(plan),
                [rollout.BackfillResult.model_validate(r) for r in pulled(results)],
                _settings(params),
            )
        except rollout.RolloutError as exc:
            raise AirflowFailException(str(exc)) from exc
        log.info("%d documents; %s", validation.documents, validation.gate.describe())
        return validation.model_dump(mode="json")

    @task(outlets=[INDEX], trigger_rule="none_failed_min_one_success")
    def activate(
        plan: dict[str, Any],
        results: list[dict[str, Any]],
        validation: dict[str, Any],
        params: dict[str, Any],
        outlet_events: Any,
    ) -> dict[str, Any]:
        """Move the alias to the new index in one atomic step."""
        from pipeline import rollout

        try:
            switch = rollout.activate(
                rollout.RolloutPlan.model_validate(plan),
                [rollout.BackfillResult.model_validate(r) for r in pulled(results)],
                _settings(params),
            )
        except rollout.RolloutError as exc:
            raise AirflowFailException(str(exc)) from exc
        log.info("alias: %s -> %s", switch.previous, switch.active)
        outlet_events[INDEX].extra = {**switch.model_dump(), "gate": validation["gate"]}
        return switch.model_dump()

    plan = plan_backfill()
    results = backfill_batch.partial(plan=plan).expand(batch=plan_batches(plan))
    validation = validate(plan, results)
    choose() >> [rollback(), plan]
    activate(plan, results, validation)


lookalike_rollout()
