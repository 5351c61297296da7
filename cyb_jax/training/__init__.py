"""Training: the run's components, its sharded programs, the train step and loop.

The package `cyb_jax.training` holds `components` (run config -> model config, data, loss,
optimiser, a loaded run), `steps` (the train state and the pure train step), `programs` (the
one builder of the sharded jitted programs), `train` (the loop, `train_and_evaluate`),
`checkpoint`, `init_from` (the parameters a fine-tuning run starts from), `hosts`
(preemption and data positions across processes), `prefetch` and `mfu` (device peaks, MFU,
program memory, the profiler window). It imports `model`, `pretrained`, `analysis`, `losses`,
`data` and the foundations, never `experiment` or `cli`.
"""

import cyb_jax

# Submodules reached as attributes (``cyb_jax.training.x``) without importing them first (PEP 562).
__getattr__ = cyb_jax.lazy_submodules(
  globals(), ("components", "steps", "programs", "train", "checkpoint", "init_from", "hosts", "prefetch", "mfu")
)
