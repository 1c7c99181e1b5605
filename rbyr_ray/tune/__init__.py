"""Ray Tune sweeps over an experiment's parameters (see sweep.py and docs/tune.md).

    import rbyr_ray
    rbyr_ray.tune("tune_configs/demo_sweep.yaml", ["search.num_samples=2"])

`rbyr_ray.tune` is a function in the package namespace, but importing any `rbyr_ray.tune.*` submodule makes
Python rebind that name to this package. The package is therefore callable too, with the same signature, so
`rbyr_ray.tune(...)` works whichever import came first.
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, tune_config, overrides=(), resume=None) -> dict:
        from .sweep import tune

        return tune(tune_config, overrides=overrides, resume=resume)


sys.modules[__name__].__class__ = _CallablePackage
