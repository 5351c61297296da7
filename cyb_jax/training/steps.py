"""The train state and the pure step functions of a run (jitted by :mod:`cyb_jax.training.programs`).

:func:`train_step` is one optimiser step on a global batch: the loss of
:class:`cyb_jax.losses.Loss` at the state's optimiser step (so a pause warm-up switches at
the same step in a resumed run), gradient accumulation, AdamW, the loss state's update
(CYB-DP dual ascent), and the on-device refusal of a non-finite update.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.analysis import evaluation

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes; saved whole in checkpoints.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: the model's parameter pytree.
    opt_state: the optax optimiser state.
    multiplier: float32 scalar, the loss state of :class:`cyb_jax.losses.Loss`: the CYB-DP
      Lagrange multiplier mu (a loss without dual ascent keeps it unchanged).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  multiplier: jax.Array


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  model_cfg: model_lib.ModelConfig,
  loss: losses.Loss,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  accum_steps: int = 1,
  vocab_chunk: int | None = None,
) -> tuple[TrainState, dict]:
  """One optimiser step on a global batch ``[B, N]``.

  With ``accum_steps > 1`` the batch is split into micro-batches, and the loss and its
  gradient are those of the whole batch, exactly, whatever each micro-batch's number of real
  tokens: by the accumulation rule of :meth:`cyb_jax.losses.Loss.sums`, each micro-batch's
  gradient is that of ``<c, sums_i>`` with the constant cotangent ``c`` of the loss w.r.t. the
  batch's :class:`~cyb_jax.losses.LossSums` (known from the batch's weights alone, but for
  CYB-VA's batch KL, which first sums the micro-batches in a forward pass), and the loss is
  ``value_from_sums`` of their sum. Metrics are averaged with the micro-batches' weights. The
  loss state (the CYB-DP multiplier) is updated once, from the full batch's metrics.

  If the loss or the gradient norm is not finite the returned state EQUALS ``state`` (the
  update is refused on device, no host sync) and ``metrics["finite"]`` is False.
  """

  def loss_and_metrics(params, micro):
    stats = evaluation.step_stats(model_cfg, params, micro, vocab_chunk=vocab_chunk)
    return loss.value_and_metrics(stats, micro["weights"], state.multiplier, state.step)

  def sums_and_metrics(params, micro):
    stats = evaluation.step_stats(model_cfg, params, micro, vocab_chunk=vocab_chunk)
    return loss.sums(stats, micro["weights"], state.multiplier, state.step)

  if accum_steps == 1:
    (value, metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(state.params, batch)
  else:
    value, metrics, grads = _accumulated(state, batch, loss, sums_and_metrics, accum_steps)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
  metrics = dict(metrics, loss=value, grad_norm=grad_norm, learning_rate=schedule(state.step), finite=finite)
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    multiplier=loss.update_state(state.multiplier, metrics, state.step),
  )
  # A non-finite loss or gradient refuses the update on device: the state comes back as it
  # went in, and the host stops at its next sync point (``metrics["finite"]`` False).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return new_state, metrics


def _accumulated(state: TrainState, batch: Batch, loss: losses.Loss, sums_and_metrics, accum_steps: int):
  """``(value, metrics, grads)`` of the whole batch from ``accum_steps`` micro-batches (see
  :func:`train_step`); ``sums_and_metrics(params, micro) -> (LossSums, metrics)``."""
  micro_batches = jax.tree.map(lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  shapes = jax.eval_shape(sums_and_metrics, state.params, first)
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  total_weight = jnp.sum(batch["weights"].astype(jnp.float32))
  if loss.sums_are_linear:  # the cotangent depends on the total weight alone
    totals = zeros[0]._replace(weight=total_weight)
  else:  # a forward pass over the micro-batches first

    def add_sums(carry, micro):
      return jax.tree.map(jnp.add, carry, sums_and_metrics(state.params, micro)[0]), None

    totals, _ = jax.lax.scan(add_sums, zeros[0], micro_batches)
  cotangent = jax.grad(lambda sums: loss.value_from_sums(sums, state.multiplier, state.step))(totals)

  def accumulate(carry, micro):
    def projected(params):
      sums, metrics = sums_and_metrics(params, micro)
      # Elementwise products: no matmul FLOPs beside the model's (tests/test_mfu.py counts them).
      projection = sum(jnp.sum(c * x) for c, x in zip(jax.tree.leaves(cotangent), jax.tree.leaves(sums)))
      return projection, (sums, metrics)

    (_, (sums, metrics)), grads = jax.value_and_grad(projected, has_aux=True)(state.params)
    weighted_metrics = jax.tree.map(lambda x: x * metrics["weight_sum"], metrics)
    return jax.tree.map(jnp.add, carry, (sums, weighted_metrics, grads)), None

  grad_zeros = jax.tree.map(jnp.zeros_like, state.params)
  (sums, metric_sums, grads), _ = jax.lax.scan(accumulate, (zeros[0], zeros[1], grad_zeros), micro_batches)
  value = loss.value_from_sums(sums, state.multiplier, state.step)
  metrics = jax.tree.map(lambda x: losses.quantities.safe_divide(x, sums.weight), metric_sums)
  metrics["weight_sum"] = sums.weight
  return value, metrics, grads


def init_state(rng: jax.Array, *, model_cfg, tx, loss_state: jax.Array) -> TrainState:
  """A fresh train state: initial parameters, optimiser state and ``loss_state``."""
  params = model_lib.init_params(model_cfg, rng)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    multiplier=jnp.asarray(loss_state, jnp.float32),
  )
