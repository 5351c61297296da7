"""Training: the run's components, its sharded programs, the train step and loop.

The package `cyb_jax.training` holds `components` (run config -> model config, data, loss,
optimiser, a loaded run), `steps` (the train state and the pure train step), `programs` (the
one builder of the sharded jitted programs), `train` (the loop, `train_and_evaluate`),
`checkpoint`, `init_from` (the parameters a fine-tuning run starts from), `hosts`
(preemption and data positions across processes), `prefetch` and `mfu` (device peaks, MFU,
program memory, the profiler window). It imports `model`, `pretrained`, `analysis`, `losses`,
`data` and the foundations, never `experiment` or `cli`.
"""

import importlib

# Submodules reached as attributes (``cyb_jax.training.components``) without importing them first (PEP 562).
_SUBMODULES = ("components", "steps", "programs", "train", "checkpoint", "init_from", "hosts", "prefetch", "mfu")


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
