"""Where a stage's actors run, and knowing when they are gone.

Stages run one after another and never hold the same GPUs at once: training (Ray Train) reserves its workers as
one placement group and removes it when it ends; the exam's engines are a Ray Data actor pool that asks Ray for
`exam.gpus_per_replica` GPUs each (Ray Data spreads the replicas over the nodes itself). Ray gives a GPU to the
next stage only once the actor holding it is gone; `wait_actors_dead` also waits, through Ray's state API, until
the stage's actors show DEAD, so a GPU process has exited before the next stage starts its own.

    worker = stage_actor_class(ExamWorker, "exam")    # Ray Data names the pool's actors after this class
    ds.map_batches(worker, num_gpus=1, ...)
    wait_actors_dead("exam", class_name=worker.__name__)
"""

from __future__ import annotations

import logging
import time
import uuid

log = logging.getLogger(__name__)

RELEASE_TIMEOUT_S = 60.0


def stage_actor_class(cls: type, what: str) -> type:
    """A subclass of `cls` for one run of a stage. Ray Data names its actors after the callable's class, so this
    run's actors can be told apart in Ray's state from another stage's (a concurrent Tune trial's, say)."""
    return type(f"{cls.__name__}_{what}_{uuid.uuid4().hex[:8]}", (cls,), {})


def wait_actors_dead(what: str, *, placement_group_id: str | None = None, class_name: str | None = None,
                     timeout_s: float = RELEASE_TIMEOUT_S) -> None:
    """Poll the state API until no actor of this job in the placement group, or whose class name contains
    `class_name`, is alive.

    The state API is served by the dashboard; without one (`ray.include_dashboard: false` on a local Ray) this
    returns at once, and Ray's own accounting still holds: a GPU goes to the next stage only after the actor
    that held it is gone.
    """
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    filters = [("placement_group_id", "=", placement_group_id)] if placement_group_id else [
        ("job_id", "=", context.get_job_id())]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actors = list_actors(address=context.gcs_address, filters=filters, limit=10_000,
                                 raise_on_missing_output=False, timeout=10)
        except Exception as exc:  # noqa: BLE001 - no state API here: fall back to Ray's resource accounting
            log.debug("%s: state API unavailable (%s); not waiting for actor exits", what, exc)
            return
        alive = [a.actor_id for a in actors if a.state != "DEAD" and (class_name is None or class_name in a.class_name)]
        if not alive:
            return
        if time.monotonic() > deadline:
            log.warning("%s: %d actor(s) still alive after %.0f s: %s", what, len(alive), timeout_s, alive)
            return
        time.sleep(0.2)
