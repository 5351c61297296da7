"""Quantities derived from per-step statistics (docs/design.md section 3) and the weighted reductions.

One formula per function, in the notation of docs/design.md: ``log s_k`` (:func:`log_reach`), ``log pi_k``
(:func:`log_halting`), ``E[pauses]`` (:func:`expected_pauses`), ``nll_mix`` (:func:`nll_mix`).
Every batch figure is a weighted mean over positions, :func:`weighted_mean`, built on the one
masked sum :func:`weighted_sum`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax.losses._common import F32
from cyb_jax.losses._common import NEG_INF
from cyb_jax.losses._common import Array
from cyb_jax.losses._common import ArrayLike
from cyb_jax.losses._common import Metrics
from cyb_jax.losses._common import concrete
from cyb_jax.losses.stats import StepLogProbs


def prepare(stats: StepLogProbs, weights: ArrayLike) -> tuple[StepLogProbs, Array]:
  """Checks ``weights`` against ``stats`` and selects masked positions away.

  Positions with weight 0 get neutral statistics (``log c_k = 0``) BEFORE any
  nonlinearity, so a NaN or inf there (an out-of-range target, garbage logits)
  reaches neither the loss nor the gradients. Weights must be ``>= 0`` (a weighted mean
  over positions); negative ones raise ``ValueError`` where the weights are concrete, and
  are the caller's responsibility under ``jit``.

  Returns:
    ``(stats, weights)`` with ``weights`` as float32 ``[...]``.
  """
  weights = jnp.asarray(weights)
  batch_shape = stats.log_dk.shape[:-1]
  if tuple(weights.shape) != tuple(batch_shape):
    raise ValueError(
      f"weights shape {weights.shape} must equal the positions' shape {batch_shape}"
      f" (the statistics have shape {stats.log_dk.shape} = [..., K+1])."
    )
  known = concrete(weights)
  if known is not None and np.any(known < 0):
    raise ValueError(f"weights must be >= 0 (per-position weights of a mean); got min {known.min():g}.")
  w = weights.astype(F32)
  keep = (w != 0)[..., None]
  final_S = jnp.arange(stats.num_steps) == stats.num_steps - 1
  neutral_dk = jnp.where(final_S, NEG_INF, jnp.log(0.5))
  stats = StepLogProbs(
    log_dk=jnp.where(keep, stats.log_dk, neutral_dk),
    log_answer=jnp.where(keep, stats.log_answer, jnp.where(final_S, 0.0, jnp.log(0.5))),
    log_target=jnp.where(keep, stats.log_target, 0.0),
    correct=stats.correct,
  )
  return stats, w


def where_positive_times(p: Array, x: Array) -> Array:
  """``p * x`` where ``p > 0``; 0 where ``p == 0`` (an underflowed probability drops its term,
  even where ``x`` is infinite); NaN where ``p`` is NaN, so a NaN never hides in a dropped term."""
  return jnp.where(p > 0, p * x, jnp.where(jnp.isnan(p), jnp.nan, 0.0))


def exclusive_cumsum(x_S: Array) -> Array:
  """``out_k = sum_{j<k} x_j`` along the last axis, safe for ``-inf`` entries."""
  zero = jnp.zeros_like(x_S[..., :1])
  return jnp.concatenate([zero, jnp.cumsum(x_S[..., :-1], axis=-1)], axis=-1)


def log_reach(stats: StepLogProbs) -> Array:
  """``[..., K+1]`` ``log s_k = sum_{j<k} log d_j``: probability of reaching step k."""
  return exclusive_cumsum(stats.log_dk)


def log_halting(stats: StepLogProbs) -> Array:
  """``[..., K+1]`` ``log pi_k = log s_k + log r_k``: the model's halting distribution."""
  return log_reach(stats) + stats.log_answer


def expected_pauses(stats: StepLogProbs) -> Array:
  """``[...]`` ``E[pauses] = sum_{k=1..K} s_k``."""
  return jnp.sum(jnp.exp(log_reach(stats)[..., 1:]), axis=-1)


def nll_mix(stats: StepLogProbs) -> Array:
  """``[...]`` ``-logsumexp_k(log pi_k + log c_k)``: NLL under the model's own halting."""
  return -jax.nn.logsumexp(log_halting(stats) + stats.log_target, axis=-1)


def weighted_sum(x: Array, w: Array) -> Array:
  """``sum(w * x)`` over all positions: ``x`` is ``[...]`` or ``[..., S]`` (then ``[S]``).

  Entries at weight 0 are selected away with ``where``, so a non-finite value there
  stays out.
  """
  w_b = w.reshape(w.shape + (1,) * (x.ndim - w.ndim))
  return jnp.sum(jnp.where(w_b != 0, w_b * x, 0.0), axis=tuple(range(w.ndim)))


def safe_divide(total: Array, denom: Array) -> Array:
  """``total / denom``, and 0 where ``denom`` is 0 (no position carries weight)."""
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def weighted_mean(x: Array, w: Array) -> Array:
  """``sum(w * x) / sum(w)`` over all positions (0 when all weights are 0)."""
  return safe_divide(weighted_sum(x, w), jnp.sum(w))


def common_metrics(stats: StepLogProbs, w: Array, log_pi: Array) -> Metrics:
  pauses = expected_pauses(stats)
  mean_pauses = weighted_mean(pauses, w)
  return {
    "nll_mix": weighted_mean(nll_mix(stats), w),
    "expected_pauses": mean_pauses,
    "compute_per_token": 1.0 + mean_pauses,
    "halt_probs": weighted_mean(jnp.exp(log_pi), w),
    "accuracy_per_step": weighted_mean(stats.correct.astype(F32), w),
    "nll_per_step": weighted_mean(-stats.log_target, w),
    "weight_sum": jnp.sum(w),
  }
