"""The sharded, jitted programs of a run: one builder shared by the trainer, tests and benchmarks.

:func:`make_programs` jits init, train and eval steps with explicit in/out shardings on a
mesh (parameters and optimiser state created sharded, the state donated);
:func:`model_flops_per_device` counts a step's model FLOPs for the MFU, analytically
(:func:`cyb_jax.model.flops.train_step_flops`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.analysis import evaluation
from cyb_jax.model import flops
from cyb_jax.training import components
from cyb_jax.training.steps import Batch
from cyb_jax.training.steps import TrainState
from cyb_jax.training.steps import init_state
from cyb_jax.training.steps import train_step


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
    eval_step: ``(params, batch) -> sums``, :func:`cyb_jax.analysis.evaluation.eval_sums` of that batch.
    loss: the run's :class:`cyb_jax.losses.Loss`.
  """

  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: TrainState
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]]
  eval_step: Callable[[Any, Batch], dict]
  loss: losses.Loss

  def evaluate(self, params: Any, batches) -> dict:
    """:func:`cyb_jax.analysis.evaluation.figures` of ``eval_step`` summed over the placed
    ``batches`` (at least one)."""
    sums = None
    for batch in batches:
      sums = evaluation.add_sums(sums, self.eval_step(params, batch))
    return evaluation.figures(sums)

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


def model_flops_per_device(model_cfg: model_lib.ModelConfig, batch: Batch, *, num_devices: int | None = None) -> float:
  """Model FLOPs of one train step of ``batch``'s shape, per device; nothing is lowered.

  :func:`cyb_jax.model.flops.train_step_flops` of ``model_cfg`` and the global batch ``[B, N]`` of
  ``batch["inputs"]`` (arrays or ``jax.ShapeDtypeStruct``s), divided by ``num_devices``:
  by default the devices ``batch["inputs"]`` is sharded over (the trainer's mesh), or 1 for
  a batch that carries no sharding. The count is analytic, so it is the same on every
  backend and costs no compile: the devices are never asked. It depends on neither the loss
  nor the optimiser (their work is elementwise), nor on ``grad_accum_steps`` (micro-batches
  split the same products), remat or vocabulary chunks (implementation work).

  Raises:
    ValueError: ``batch["inputs"]`` is not ``[B, N]``, or ``num_devices`` is not >= 1.
  """
  inputs = batch["inputs"]
  if len(inputs.shape) != 2:
    raise ValueError(f"batch['inputs'] must be [batch_size, seq_len] tokens, got shape {tuple(inputs.shape)}.")
  if num_devices is None:
    placed = getattr(inputs, "sharding", None)
    num_devices = 1 if placed is None else len(placed.device_set)
  if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
    raise ValueError(f"num_devices={num_devices!r} must be an int >= 1.")
  batch_size, seq_len = (int(x) for x in inputs.shape)
  return flops.train_step_flops(model_cfg, batch_size, seq_len) / num_devices
