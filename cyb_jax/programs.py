"""The sharded, jitted programs of a run: one builder shared by the trainer, tests and benchmarks.

:func:`make_programs` jits init, train and eval steps with explicit in/out shardings on a
mesh (parameters and optimiser state created sharded, the state donated);
:func:`model_flops_per_device` counts a step's model FLOPs for the MFU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from cyb_jax import components
from cyb_jax import evaluation
from cyb_jax import losses
from cyb_jax import mfu
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.steps import Batch
from cyb_jax.steps import TrainState
from cyb_jax.steps import init_state
from cyb_jax.steps import train_step


def state_shardings(model_cfg, tx, mesh: Mesh, rules) -> TrainState:
  """NamedShardings of the train state from the parameters' logical axis names."""
  param_specs = model_lib.param_logical_axes(model_cfg)
  abstract_params = jax.eval_shape(model_lib.init_params, model_cfg, jax.random.key(0))
  param_shardings = sharding.logical_shardings(param_specs, mesh, rules, abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(
    tx, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: sharding.replicated(mesh)
  )
  return TrainState(
    step=sharding.replicated(mesh),
    params=param_shardings,
    opt_state=opt_shardings,
    multiplier=sharding.replicated(mesh),
  )


@dataclasses.dataclass(frozen=True)
class Programs:
  """The sharded, jitted programs of one run (built by :func:`make_programs`).

  Attributes:
    tx: the optax optimiser.
    schedule: its learning-rate schedule (step -> rate), logged by the train step.
    shardings: a ``TrainState`` of NamedShardings, one per leaf.
    init: ``rng -> TrainState``, a fresh state placed by ``shardings``.
    train_step: ``(state, batch) -> (state, metrics)``; donates ``state``.
    eval_step: ``(params, batch) -> sums``, :func:`cyb_jax.evaluation.eval_sums` of that batch.
    loss: the run's :class:`cyb_jax.losses.Loss`.
  """

  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: TrainState
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]]
  eval_step: Callable[[Any, Batch], dict]
  loss: losses.Loss

  def abstract_state(self, rng: jax.Array) -> TrainState:
    """Shapes, dtypes and shardings of the state (the target of a checkpoint restore).

    Call it under ``sharding.mesh_context``: tracing meets the activation constraints.
    """
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), jax.eval_shape(self.init, rng), self.shardings
    )


def make_programs(
  config: ml_collections.ConfigDict,
  model_cfg: model_lib.ModelConfig,
  mesh: Mesh,
  rules,
  *,
  loss: losses.Loss | None = None,
) -> Programs:
  """Jits init, train and eval steps of ``config`` with explicit shardings on ``mesh``.

  Nothing is compiled until first called (or lowered); nothing runs on ``mesh``'s
  devices here, so ``mesh`` may be made of TPU topology devices (AOT compilation).
  ``loss`` is the run's loss if already built (else built from ``config.loss``).

  Raises:
    ValueError: a micro-batch (``data.batch_size / optimizer.grad_accum_steps`` rows) does
      not split evenly over the mesh's ``data * fsdp`` devices.
  """
  accum = config.optimizer.grad_accum_steps
  sharding.check_batch_divisible(
    config.data.batch_size // accum,
    mesh,
    name="data.batch_size" if accum == 1 else f"data.batch_size / grad_accum_steps {accum}",
  )
  loss = loss or components.make_loss(config)
  tx, schedule = components.make_optimizer(config)
  vocab_chunk = components.vocab_chunk(config)
  shardings = state_shardings(model_cfg, tx, mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh)
  init = jax.jit(
    functools.partial(init_state, model_cfg=model_cfg, tx=tx, loss_state=loss.init_state()), out_shardings=shardings
  )
  step = jax.jit(
    functools.partial(
      train_step,
      model_cfg=model_cfg,
      loss=loss,
      tx=tx,
      schedule=schedule,
      accum_steps=config.optimizer.grad_accum_steps,
      vocab_chunk=vocab_chunk,
    ),
    in_shardings=(shardings, batch_sharding),
    out_shardings=(shardings, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  evaluate = jax.jit(
    functools.partial(
      evaluation.eval_sums, model_cfg=model_cfg, protocol=components.protocol(config), vocab_chunk=vocab_chunk
    ),
    in_shardings=(shardings.params, batch_sharding),
    out_shardings=sharding.replicated(mesh),
  )
  return Programs(
    tx=tx, schedule=schedule, shardings=shardings, init=init, train_step=step, eval_step=evaluate, loss=loss
  )


@contextlib.contextmanager
def absl_logging_quiet():
  """Within it, absl logs only errors (for a second build of pieces that warned once)."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def model_flops_per_device(
  config,
  model_cfg,
  loss,
  batch: Batch,
  *,
  tx: optax.GradientTransformation | None = None,
  schedule: optax.Schedule | None = None,
) -> float:
  """Model FLOPs of one train step of ``batch``'s shapes, per device.

  XLA's HLO cost analysis (:func:`cyb_jax.mfu.lowered_flops`) of the unpartitioned step,
  lowered (not compiled) with every loop unrolled and nothing recomputed: the pause scan
  unrolled, layers not scanned, no remat, no vocabulary chunks, one micro-batch. XLA counts
  a loop body once, so the compiled program's own count would miss K - 1 pause steps;
  remat and chunking are hardware FLOPs, not model FLOPs. Divided by the device count.

  ``tx`` and ``schedule``: the run's optimiser and learning-rate schedule if already built
  (:class:`Programs` holds them), both or neither; without them, both are built from
  ``config.optimizer``.
  """
  twin = dataclasses.replace(model_cfg, unroll_pause_scan=True, scan_layers=False, remat_policy="none")
  if (tx is None) != (schedule is None):
    raise ValueError("give both tx and schedule (the run's optimiser and its schedule), or neither.")
  if tx is None:
    with absl_logging_quiet():  # the optimiser's own warnings were shown when the run built it
      tx, schedule = components.make_optimizer(config)
  state = jax.eval_shape(
    functools.partial(init_state, model_cfg=twin, tx=tx, loss_state=loss.init_state()), jax.random.key(0)
  )
  step = functools.partial(train_step, model_cfg=twin, loss=loss, tx=tx, schedule=schedule)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  return mfu.lowered_flops(jax.jit(step).lower(state, shapes)) / jax.device_count()
