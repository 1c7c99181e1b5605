"""Joining or starting the Ray cluster from the `ray` config section; shared by every stage."""

from __future__ import annotations

import logging
import os

from . import stops
from .config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Connect to `ray.address` / $RAY_ADDRESS (a cluster, or a `ray job submit` driver), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    # ray.init replaces SIGTERM's handler (Ray's sys.exit, then its core worker's native dump and abort):
    # the run's clean-stop handlers go back in once it returns.
    ours = stops.installed()
    cfg = cfg or RayConfig()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters: silence the token-auth warning
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        if ours:
            stops.install()
        return
    resources = dict(cfg.resources)
    ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=resources or None,
             include_dashboard=cfg.include_dashboard, log_to_driver=True)
    if ours:
        stops.install()
    log.info("started a local Ray cluster: %s", ray.cluster_resources())
