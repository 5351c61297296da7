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

  With ``accum_steps > 1`` the batch is split into micro-batches whose gradients are
  combined with weights proportional to their token counts, which equals the
  full-batch gradient for every loss that is a weighted mean over positions (all but
  ``cyb_va`` with ``kl="batch"``, whose KL is then taken per micro-batch). The loss state
  (the CYB-DP multiplier) is updated once, from the full batch's metrics.

  If the loss or the gradient norm is not finite the returned state EQUALS ``state`` (the
  update is refused on device, no host sync) and ``metrics["finite"]`` is False.
  """

  def loss_and_metrics(params, micro):
    stats = evaluation.step_stats(model_cfg, params, micro, vocab_chunk=vocab_chunk)
    return loss.value_and_metrics(stats, micro["weights"], state.multiplier, state.step)

  grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
  if accum_steps == 1:
    (value, metrics), grads = grad_fn(state.params, batch)
  else:
    micro_batches = jax.tree.map(lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)

    def accumulate(carry, micro):
      (value, metrics), grads = grad_fn(state.params, micro)
      w = metrics["weight_sum"]
      scaled = jax.tree.map(lambda x: x * w, (value, metrics, grads))
      return jax.tree.map(jnp.add, carry, (scaled, w)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(
      lambda: (lambda r: ((r[0][0], r[0][1], r[1]), r[0][1]["weight_sum"]))(grad_fn(state.params, first))
    )
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    (sums, total), _ = jax.lax.scan(accumulate, zeros, micro_batches)
    total = jnp.maximum(total, 1e-9)
    value, metrics, grads = jax.tree.map(lambda x: x / total, sums)
    metrics["weight_sum"] = total
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


def init_state(rng: jax.Array, *, model_cfg, tx, loss_state: jax.Array) -> TrainState:
  """A fresh train state: initial parameters, optimiser state and ``loss_state``."""
  params = model_lib.init_params(model_cfg, rng)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    multiplier=jnp.asarray(loss_state, jnp.float32),
  )
