"""Placement of a stage's actors: reserve its resources as one placement group, release them when it ends.

The exam reserves `exam.replicas` bundles ({CPU: cpus_per_replica, GPU: gpus_per_replica}) and Ray Train
reserves `train.num_workers` bundles; stages run one after another, and each stage gives its bundles back
(removing a placement group kills the actors placed in it) before the next one starts. So exam engines and
training workers never hold the same GPUs at once, on one machine or on a cluster.

    pg = reserve([{"CPU": 0.5, "GPU": 1}] * 2, "SPREAD", "exam")
    ...  # actors with PlacementGroupSchedulingStrategy(pg)
    release(pg, "exam")
"""

from __future__ import annotations

import logging
import time
import uuid

log = logging.getLogger(__name__)

# An autoscaling cluster may need minutes to start GPU nodes; past this a request is taken as infeasible.
RESERVE_TIMEOUT_S = 1800.0
RELEASE_TIMEOUT_S = 60.0


def bundle(cpus: float, gpus: float) -> dict[str, float]:
    """One replica's or worker's share; zero amounts are left out (Ray rejects empty bundles)."""
    return {name: amount for name, amount in (("CPU", cpus), ("GPU", gpus)) if amount > 0}


def reserve(bundles: list[dict[str, float]], strategy: str, what: str, timeout_s: float = RESERVE_TIMEOUT_S):
    """A ready placement group for `bundles`; logs what it waits for, so a pending cluster is not a silent hang."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    # Named for the dashboard, unique: concurrent Tune trials reserve at once, and a trial killed mid-stage
    # (Ctrl-C on a sweep) leaves its group behind until the driver exits; Ray rejects a second group of a name.
    pg = placement_group(bundles, strategy=strategy, name=f"rbyr-{what}-{uuid.uuid4().hex[:8]}")
    start = time.monotonic()
    while True:
        ready, _ = ray.wait([pg.ready()], timeout=30)
        if ready:
            return pg
        waited = time.monotonic() - start
        if waited >= timeout_s:
            remove_placement_group(pg)
            raise TimeoutError(f"{what}: {len(bundles)} x {bundles[0]} ({strategy}) not placeable after "
                               f"{waited:.0f} s; cluster has {ray.cluster_resources()}")
        log.info("%s: waiting for %d x %s (%s); available now: %s", what, len(bundles), bundles[0], strategy,
                 ray.available_resources())


def release(pg, what: str, timeout_s: float = RELEASE_TIMEOUT_S) -> None:
    """Remove the placement group (Ray kills any actor still in it), then wait until Ray's state shows every
    actor that was placed in it DEAD, so a GPU process is gone before the next stage asks for the GPU."""
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(pg)
    wait_actors_dead(pg.id.hex(), what, timeout_s)


def wait_actors_dead(placement_group_id: str, what: str, timeout_s: float = RELEASE_TIMEOUT_S) -> None:
    """Poll the state API until no actor of the placement group is alive.

    The state API is served by the dashboard; without one (`ray.include_dashboard: false` on a local Ray) this
    returns at once: the removed placement group has still given its resources back, as Ray returns a bundle
    only after killing the workers placed in it.
    """
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actors = list_actors(address=address, filters=[("placement_group_id", "=", placement_group_id)],
                                 limit=10_000, raise_on_missing_output=False, timeout=10)
        except Exception as exc:  # noqa: BLE001 - no state API here: fall back to Ray's bundle accounting
            log.debug("%s: state API unavailable (%s); not waiting for actor exits", what, exc)
            return
        alive = [a.actor_id for a in actors if a.state != "DEAD"]
        if not alive:
            return
        if time.monotonic() > deadline:
            log.warning("%s: %d actor(s) of placement group %s still alive after %.0f s: %s", what, len(alive),
                        placement_group_id, timeout_s, alive)
            return
        time.sleep(0.2)
