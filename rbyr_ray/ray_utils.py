"""Joining or starting the Ray cluster from the `ray` config section; shared by every stage."""

from __future__ import annotations

import atexit
import logging
import os

from . import ray_logs, stops
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
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Ray-internal lines that read like failures are dropped in every worker, counted, summed up at exit.
    runtime_env = ray_logs.runtime_env_for_workers()
    atexit.register(ray_logs.log_summary_at_exit, runtime_env["env_vars"][ray_logs.FILE_ENV], log)
    ray_logs.quiet_data_progress_in_logs()
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        if ours:
            stops.install()
        return
    # A local cluster of this process only: no token (a cluster joined above keeps its own mode and token).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    resources = dict(cfg.resources)
    ray.init(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=resources or None,
             include_dashboard=cfg.include_dashboard, log_to_driver=True, runtime_env=runtime_env)
    if ours:
        stops.install()
    log.info("started a local Ray cluster: %s", ray.cluster_resources())
