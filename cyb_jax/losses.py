"""Catch Your Breath losses: per-step statistics, the five training losses, evaluation.

Notation (DESIGN.md sections 3-5). A model makes ``S = K + 1`` attempts (steps
``k = 0..K``) at every output position. Step ``k`` emits ``V + 1`` logits ``z_k``:
the ``V`` vocabulary entries and ``<don't know>`` (DK) as the LAST entry. For a
position with target ``y``::

    log d_k  = z_k[V] - logsumexp(z_k[0..V])        DK ("pause") at step k
    log r_k  = logsumexp(z_k[0..V-1]) - logsumexp(z_k[0..V])   answer at step k
    log c_k  = z_k[y] - logsumexp(z_k[0..V-1])      y, given an answer at step k
    final step forced: log d_K = -inf, log r_K = 0
    log s_k  = sum_{j<k} log d_j                    reach step k
    log pi_k = log s_k + log r_k                    halting distribution
    nll_mix  = -logsumexp_k(log pi_k + log c_k)

Everything here is a pure function of arrays: jittable, differentiable, valid for
any leading batch shape ``...`` and any ``K >= 0``, computed in float32 whatever the
input dtype (float64 inputs under ``jax.enable_x64`` stay float64, which the
float64 finite-difference gradient checks use). Nothing materialises a softmax over ``[..., K+1, V+1]``; the chunked
path never materialises the logits at all.

Shape suffixes: ``S`` = K+1 steps, ``V`` = vocabulary (without DK), ``D`` = model
width, ``M`` = flattened positions times steps.

Hyper-parameters (``gamma``, ``omega``, ``prior``, ``budget``, ...) are checked when
their values are known at trace time (Python numbers, NumPy or concrete arrays)
and raise ``ValueError`` naming the bad value and the allowed range; traced values
are taken as given.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Metrics = dict[str, Array]

_F32 = jnp.float32
_NEG_INF = -jnp.inf


class StepLogProbs(NamedTuple):
  """Per-step log-probabilities of one prediction per position (DESIGN section 3).

  Attributes:
    log_dk: ``[..., S]`` float32, ``log d_k``; ``-inf`` at the final step.
    log_answer: ``[..., S]`` float32, ``log r_k = log(1 - d_k)``; ``0`` at the final step.
    log_target: ``[..., S]`` float32, ``log c_k``; NaN where the target id is outside
      ``[0, V)`` (see :func:`step_log_probs`).
    correct: ``[..., S]`` bool, ``argmax_{v<V} z_k[v] == y``.
  """

  log_dk: Array
  log_answer: Array
  log_target: Array
  correct: Array

  @property
  def num_steps(self) -> int:
    """``K + 1``."""
    return self.log_dk.shape[-1]


class HaltResult(NamedTuple):
  """Outcome of a halting policy per position (DESIGN section 5).

  Attributes:
    step: ``[...]`` int32, the step ``k*`` at which the model answers (= pauses taken).
    nll: ``[...]`` float32, ``-log c_{k*}``.
    correct: ``[...]`` bool, whether ``argmax c_{k*}`` is the target.
  """

  step: Array
  nll: Array
  correct: Array


# --------------------------------------------------------------------------------------
# Argument checks (trace time).
# --------------------------------------------------------------------------------------


def _concrete(value: Any) -> np.ndarray | None:
  """``value`` as a NumPy array if it is known at trace time, else ``None``."""
  try:
    return np.asarray(value, dtype=np.float64)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
          TypeError):
    return None


def _check_scalar(name: str, value: Any, *, low: float, high: float,
                  low_open: bool = False, high_open: bool = False) -> None:
  """Raises ``ValueError`` unless ``value`` lies in the given interval (if concrete)."""
  v = _concrete(value)
  if v is None:
    return
  if v.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {v.shape}.")
  ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok or np.isnan(v):
    interval = (("(" if low_open else "[") + f"{low:g}, {high:g}" +
                (")" if high_open else "]"))
    raise ValueError(f"{name}={float(v)!r} is outside the allowed range {interval}.")


def _compute_dtype(dtype) -> jnp.dtype:
  """float32 for 16/32-bit inputs; float64 inputs (under x64) stay float64."""
  return jnp.promote_types(dtype, _F32)


def _check_logits(logits: Array, targets: Array) -> None:
  if logits.ndim < 2:
    raise ValueError(
        f"logits must have shape [..., K+1, V+1] (at least 2 axes), got {logits.shape}.")
  if logits.shape[-1] < 2:
    raise ValueError(
        f"the last axis of logits is V+1 (vocabulary plus <don't know>) and must be >= 2,"
        f" got {logits.shape[-1]} (logits shape {logits.shape}).")
  if tuple(targets.shape) != tuple(logits.shape[:-2]):
    raise ValueError(
        f"targets shape {targets.shape} must equal logits.shape[:-2] = "
        f"{logits.shape[:-2]} (logits shape {logits.shape} is [..., K+1, V+1]).")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}.")


def _prepare(stats: StepLogProbs, weights: ArrayLike) -> tuple[StepLogProbs, Array]:
  """Checks ``weights`` against ``stats`` and selects masked positions away.

  Positions with weight 0 get neutral statistics (``log c_k = 0``) BEFORE any
  nonlinearity, so a NaN or inf there (an out-of-range target, garbage logits)
  reaches neither the loss nor the gradients.

  Returns:
    ``(stats, weights)`` with ``weights`` as float32 ``[...]``.
  """
  weights = jnp.asarray(weights)
  batch_shape = stats.log_dk.shape[:-1]
  if tuple(weights.shape) != tuple(batch_shape):
    raise ValueError(
        f"weights shape {weights.shape} must equal the positions' shape {batch_shape}"
        f" (the statistics have shape {stats.log_dk.shape} = [..., K+1]).")
  w = weights.astype(_F32)
  keep = (w != 0)[..., None]
  final_S = jnp.arange(stats.num_steps) == stats.num_steps - 1
  neutral_dk = jnp.where(final_S, _NEG_INF, jnp.log(0.5))
  stats = StepLogProbs(
      log_dk=jnp.where(keep, stats.log_dk, neutral_dk),
      log_answer=jnp.where(keep, stats.log_answer,
                           jnp.where(final_S, 0.0, jnp.log(0.5))),
      log_target=jnp.where(keep, stats.log_target, 0.0),
      correct=stats.correct)
  return stats, w


# --------------------------------------------------------------------------------------
# Per-step statistics.
# --------------------------------------------------------------------------------------


def _assemble(lse_voc_MS: Array, dk_MS: Array, target_logit_MS: Array,
              pred_MS: Array, targets_M: Array, vocab_size: int) -> StepLogProbs:
  """Builds StepLogProbs from per-step reductions over the vocabulary.

  Args:
    lse_voc_MS: ``logsumexp_{v<V} z_k[v]``.
    dk_MS: ``z_k[V]``.
    target_logit_MS: ``z_k[y]`` (any value where the target is out of range).
    pred_MS: ``argmax_{v<V} z_k[v]``.
    targets_M: target ids ``y``.
    vocab_size: ``V``.
  """
  num_steps = lse_voc_MS.shape[-1]
  lse_all_MS = jnp.logaddexp(lse_voc_MS, dk_MS)
  final_S = jnp.arange(num_steps) == num_steps - 1
  log_dk = jnp.where(final_S, _NEG_INF, dk_MS - lse_all_MS)
  log_answer = jnp.where(final_S, 0.0, lse_voc_MS - lse_all_MS)
  in_range_M = (targets_M >= 0) & (targets_M < vocab_size)
  log_target = jnp.where(in_range_M[..., None], target_logit_MS - lse_voc_MS, jnp.nan)
  correct = pred_MS == targets_M[..., None]
  return StepLogProbs(log_dk, log_answer, log_target, correct)


def step_log_probs(logits: ArrayLike, targets: ArrayLike) -> StepLogProbs:
  """Per-step statistics from full logits (DESIGN section 3).

  Args:
    logits: ``[..., K+1, V+1]`` in any float dtype; DK is the last entry.
    targets: ``[...]`` integer ids in ``[0, V)``.

  Returns:
    :class:`StepLogProbs` with ``[..., K+1]`` float32 fields, from logsumexps and a
    gather (no softmax over ``V+1``). The final step is forced to answer.

  Out-of-range target ids (``< 0`` or ``>= V``, including the DK id ``V``) are not
  clipped: their ``log_target`` is NaN, so a loss that reads them with a non-zero
  weight is NaN rather than silently wrong (the trainer stops on a NaN loss). At
  weight 0 they are selected away and change neither losses nor gradients. Use
  :func:`checked_step_log_probs` to raise instead.

  A model that computes the vocabulary and DK logits separately should call
  :func:`step_log_probs_from_parts` instead: slicing joined logits apart costs two
  extra ``[..., V+1]`` buffers in the backward pass.

  Raises:
    ValueError: at trace time for mismatched shapes, a last axis < 2, or float targets.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets)
  _check_logits(logits, targets)
  vocab_size = logits.shape[-1] - 1
  return step_log_probs_from_parts(logits[..., :vocab_size], logits[..., vocab_size], targets)


def step_log_probs_from_parts(vocab_logits: ArrayLike, dk_logits: ArrayLike,
                              targets: ArrayLike) -> StepLogProbs:
  """:func:`step_log_probs` of ``concat(vocab_logits, dk_logits[..., None])``, without the concat.

  Args:
    vocab_logits: ``[..., K+1, V]`` vocabulary logits, any float dtype.
    dk_logits: ``[..., K+1]`` the ``<don't know>`` logit of each step.
    targets: ``[...]`` integer ids in ``[0, V)``.
  """
  vocab_logits = jnp.asarray(vocab_logits)
  dk_logits = jnp.asarray(dk_logits)
  targets = jnp.asarray(targets)
  if vocab_logits.ndim < 2 or vocab_logits.shape[-1] < 1:
    raise ValueError(f"vocab_logits must be [..., K+1, V] with V >= 1, got {vocab_logits.shape}.")
  if tuple(dk_logits.shape) != tuple(vocab_logits.shape[:-1]):
    raise ValueError(f"dk_logits shape {dk_logits.shape} must equal vocab_logits.shape[:-1] = "
                     f"{vocab_logits.shape[:-1]}.")
  joined_shape = vocab_logits.shape[:-1] + (vocab_logits.shape[-1] + 1,)
  _check_logits(jax.ShapeDtypeStruct(joined_shape, vocab_logits.dtype), targets)
  vocab_size = vocab_logits.shape[-1]
  dtype = _compute_dtype(jnp.result_type(vocab_logits, dk_logits))
  z_SxV = vocab_logits.astype(dtype)
  lse_voc = jax.nn.logsumexp(z_SxV, axis=-1)
  safe_targets = jnp.clip(targets, 0, vocab_size - 1)
  target_logit = jnp.take_along_axis(
      z_SxV, jnp.broadcast_to(safe_targets[..., None, None], z_SxV.shape[:-1] + (1,)),
      axis=-1)[..., 0]
  pred = jnp.argmax(z_SxV, axis=-1)
  return _assemble(lse_voc, dk_logits.astype(dtype), target_logit, pred, targets, vocab_size)


def checked_step_log_probs(logits: ArrayLike, targets: ArrayLike) -> StepLogProbs:
  """:func:`step_log_probs` that raises on target ids outside ``[0, V)``.

  Eagerly it raises ``JaxRuntimeError`` at once; under ``jax.jit`` wrap the caller with
  ``jax.experimental.checkify.checkify`` and call ``err.throw()`` on the result.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets)
  vocab_size = logits.shape[-1] - 1
  checkify.check(
      jnp.all((targets >= 0) & (targets < vocab_size)),
      f"target ids must lie in [0, V={vocab_size}); got min {{lo}} and max {{hi}}",
      lo=jnp.min(targets), hi=jnp.max(targets))
  return step_log_probs(logits, targets)


def chunked_step_log_probs(hidden: ArrayLike, output_kernel: ArrayLike,
                           dk_kernel: ArrayLike, targets: ArrayLike, *,
                           vocab_chunk: int, dk_bias: ArrayLike = 0.0) -> StepLogProbs:
  """Per-step statistics from hidden states, never materialising the logits.

  Computes exactly :func:`step_log_probs` of ``logits = concat(hidden @ output_kernel,
  hidden @ dk_kernel + dk_bias)`` by scanning over vocabulary chunks of width
  ``vocab_chunk`` with a running logsumexp, target logit and argmax. The scan body is
  rematerialised, so the backward pass also holds one ``[M, vocab_chunk]`` chunk at a
  time: peak memory is ``O(M * vocab_chunk)`` instead of ``O(M * V)``.

  Args:
    hidden: ``[..., K+1, D]`` final hidden states, any float dtype (products are
      accumulated in float32).
    output_kernel: ``[D, V]`` vocabulary projection.
    dk_kernel: ``[D]`` (or ``[D, 1]``) DK projection.
    targets: ``[...]`` integer ids in ``[0, V)`` (NaN ``log_target`` otherwise).
    vocab_chunk: chunk width, ``1 <= vocab_chunk``; V need not be a multiple.
    dk_bias: scalar bias of the DK logit.

  Returns:
    :class:`StepLogProbs`, equal (values and gradients) to the full path.
  """
  hidden = jnp.asarray(hidden)
  output_kernel = jnp.asarray(output_kernel)
  dk_kernel = jnp.asarray(dk_kernel)
  targets = jnp.asarray(targets)
  if hidden.ndim < 2:
    raise ValueError(f"hidden must be [..., K+1, D], got shape {hidden.shape}.")
  d_model = hidden.shape[-1]
  if output_kernel.ndim != 2 or output_kernel.shape[0] != d_model:
    raise ValueError(f"output_kernel must be [D={d_model}, V], got {output_kernel.shape}.")
  if dk_kernel.shape not in ((d_model,), (d_model, 1)):
    raise ValueError(f"dk_kernel must be [D={d_model}] or [D, 1], got {dk_kernel.shape}.")
  if tuple(targets.shape) != tuple(hidden.shape[:-2]):
    raise ValueError(f"targets shape {targets.shape} must equal hidden.shape[:-2] = "
                     f"{hidden.shape[:-2]} (hidden shape {hidden.shape} is [..., K+1, D]).")
  if not isinstance(vocab_chunk, int) or vocab_chunk < 1:
    raise ValueError(f"vocab_chunk={vocab_chunk!r} must be a positive int.")
  vocab_size = output_kernel.shape[1]
  if vocab_size < 1:
    raise ValueError("output_kernel has an empty vocabulary axis (V = 0).")

  batch_shape, num_steps = hidden.shape[:-2], hidden.shape[-2]
  h_MxD = hidden.reshape(-1, d_model)
  targets_MS = jnp.broadcast_to(targets[..., None], batch_shape + (num_steps,)).reshape(-1)
  acc = _compute_dtype(jnp.result_type(hidden, output_kernel))
  dk_M = (jnp.einsum("md,d->m", h_MxD, dk_kernel.reshape(d_model),
                     preferred_element_type=acc) + jnp.asarray(dk_bias, acc))

  chunk = min(vocab_chunk, vocab_size)
  num_chunks = -(-vocab_size // chunk)
  padded = num_chunks * chunk
  w_DxVp = jnp.pad(output_kernel, ((0, 0), (0, padded - vocab_size)))
  w_CxDxc = w_DxVp.reshape(d_model, num_chunks, chunk).transpose(1, 0, 2)
  offsets_C = jnp.arange(num_chunks) * chunk

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
  def body(carry, xs):
    lse_M, tgt_M, best_M, arg_M = carry
    w_DxC, offset = xs
    z_MxC = jnp.einsum("md,dc->mc", h_MxD, w_DxC, preferred_element_type=acc)
    ids_C = offset + jnp.arange(chunk)
    z_MxC = jnp.where(ids_C < vocab_size, z_MxC, _NEG_INF)
    lse_M = jnp.logaddexp(lse_M, jax.nn.logsumexp(z_MxC, axis=-1))
    tgt_M = tgt_M + jnp.sum(jnp.where(ids_C == targets_MS[:, None], z_MxC, 0.0), axis=-1)
    z_stop = jax.lax.stop_gradient(z_MxC)
    chunk_best_M = jnp.max(z_stop, axis=-1)
    better_M = chunk_best_M > best_M  # strict: the first maximum wins, as in argmax
    best_M = jnp.where(better_M, chunk_best_M, best_M)
    arg_M = jnp.where(better_M, offset + jnp.argmax(z_stop, axis=-1), arg_M)
    return (lse_M, tgt_M, best_M, arg_M), None

  num_rows = h_MxD.shape[0]
  init = (jnp.full((num_rows,), _NEG_INF, acc), jnp.zeros((num_rows,), acc),
          jnp.full((num_rows,), _NEG_INF, acc), jnp.zeros((num_rows,), jnp.int32))
  (lse_M, tgt_M, _, arg_M), _ = jax.lax.scan(body, init, (w_CxDxc, offsets_C))

  shape_S = batch_shape + (num_steps,)
  return _assemble(lse_M.reshape(shape_S), dk_M.reshape(shape_S), tgt_M.reshape(shape_S),
                   arg_M.reshape(shape_S), targets, vocab_size)


# --------------------------------------------------------------------------------------
# Derived quantities.
# --------------------------------------------------------------------------------------


def _exclusive_cumsum(x_S: Array) -> Array:
  """``out_k = sum_{j<k} x_j`` along the last axis, safe for ``-inf`` entries."""
  zero = jnp.zeros_like(x_S[..., :1])
  return jnp.concatenate([zero, jnp.cumsum(x_S[..., :-1], axis=-1)], axis=-1)


def log_reach(stats: StepLogProbs) -> Array:
  """``[..., K+1]`` ``log s_k = sum_{j<k} log d_j``: probability of reaching step k."""
  return _exclusive_cumsum(stats.log_dk)


def log_halting(stats: StepLogProbs) -> Array:
  """``[..., K+1]`` ``log pi_k = log s_k + log r_k``: the model's halting distribution."""
  return log_reach(stats) + stats.log_answer


def expected_pauses(stats: StepLogProbs) -> Array:
  """``[...]`` ``E[pauses] = sum_{k=1..K} s_k``."""
  return jnp.sum(jnp.exp(log_reach(stats)[..., 1:]), axis=-1)


def nll_mix(stats: StepLogProbs) -> Array:
  """``[...]`` ``-logsumexp_k(log pi_k + log c_k)``: NLL under the model's own halting."""
  return -jax.nn.logsumexp(log_halting(stats) + stats.log_target, axis=-1)


def _weighted_mean(x: Array, w: Array) -> Array:
  """``sum(w * x) / sum(w)`` over all positions (0 when all weights are 0).

  ``x`` is ``[...]`` or ``[..., S]`` (then the result is ``[S]``). Masked entries
  are selected away with ``where``, so a non-finite value at weight 0 stays out.
  """
  w_b = w.reshape(w.shape + (1,) * (x.ndim - w.ndim))
  axes = tuple(range(w.ndim))
  total = jnp.sum(jnp.where(w_b != 0, w_b * x, 0.0), axis=axes)
  denom = jnp.sum(w)
  return jnp.where(denom > 0, total / jnp.where(denom > 0, denom, 1.0), 0.0)


def _common_metrics(stats: StepLogProbs, w: Array, log_pi: Array) -> Metrics:
  pauses = expected_pauses(stats)
  mean_pauses = _weighted_mean(pauses, w)
  return {
      "nll_mix": _weighted_mean(nll_mix(stats), w),
      "expected_pauses": mean_pauses,
      "compute_per_token": 1.0 + mean_pauses,
      "halt_probs": _weighted_mean(jnp.exp(log_pi), w),
      "accuracy_per_step": _weighted_mean(stats.correct.astype(_F32), w),
      "nll_per_step": _weighted_mean(-stats.log_target, w),
      "weight_sum": jnp.sum(w),
  }


# --------------------------------------------------------------------------------------
# Losses. Each returns (scalar loss, metrics) and is the weighted mean over positions.
# --------------------------------------------------------------------------------------


def cross_entropy_loss(stats: StepLogProbs, weights: ArrayLike) -> tuple[Array, Metrics]:
  """No pauses: ``loss = mean_w(-log c_0)`` (DESIGN section 4, ``ce``).

  Args:
    stats: :class:`StepLogProbs` with fields ``[..., K+1]`` (only step 0 is read).
    weights: ``[...]`` per-position weights (0/1 masks or real weights).
  """
  stats, w = _prepare(stats, weights)
  loss = _weighted_mean(-stats.log_target[..., 0], w)
  return loss, _common_metrics(stats, w, log_halting(stats))


def pause_cross_entropy_loss(stats: StepLogProbs,
                             weights: ArrayLike) -> tuple[Array, Metrics]:
  """Always take all K pauses and read out the last step: ``mean_w(-log c_K)``.

  The baseline of Goyal et al. (2023). Args as :func:`cross_entropy_loss`.
  """
  stats, w = _prepare(stats, weights)
  loss = _weighted_mean(-stats.log_target[..., -1], w)
  return loss, _common_metrics(stats, w, log_halting(stats))


def ap_log_stop(stats: StepLogProbs, omega: ArrayLike = 0.0) -> Array:
  """``[..., K+1]`` log of the CYB-AP stopping distribution ``P_k``.

  The world demands an answer at each step with hazard ``omega``; the model answers
  of its own accord with ``r_k``::

      log P_k = sum_{j<k} [log d_j + log(1-omega)] + logaddexp(log r_k, log d_k + log omega)

  With the forced final step (``log d_K = -inf``, ``log r_K = 0``) the same formula
  gives ``log P_K = sum_{j<K} [log d_j + log(1-omega)]``, and ``sum_k P_k = 1``.
  """
  omega = jnp.asarray(omega, _F32)
  log_keep = jnp.log1p(-omega)
  # where(omega > 0, ...) keeps log(0) = -inf out of the gradient's arithmetic.
  log_omega = jnp.log(jnp.where(omega > 0, omega, 1.0))
  interrupted_S = jnp.where(omega > 0, stats.log_dk + log_omega, _NEG_INF)
  log_prefix = _exclusive_cumsum(stats.log_dk + log_keep)
  return log_prefix + jnp.logaddexp(stats.log_answer, interrupted_S)


def cyb_ap_loss(stats: StepLogProbs, weights: ArrayLike, *, gamma: ArrayLike,
                omega: ArrayLike = 0.0) -> tuple[Array, Metrics]:
  """CYB-AP, anytime prediction (DESIGN section 4)::

      loss = mean_w( -logsumexp_k( log P_k + k * log gamma + log c_k ) )

  with ``P_k`` from :func:`ap_log_stop`. ``K = 0`` gives cross-entropy; ``omega = 0``
  and ``gamma = 1`` give ``nll_mix``.

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    weights: ``[...]`` per-position weights.
    gamma: discount per pause, ``0 < gamma <= 1``.
    omega: hazard of a forced answer per step, ``0 <= omega < 1``.

  Returns:
    ``(loss, metrics)``; metrics add ``ap_stop_probs`` ``[K+1]`` (mean ``P_k``).
  """
  _check_scalar("gamma", gamma, low=0.0, high=1.0, low_open=True)
  _check_scalar("omega", omega, low=0.0, high=1.0, high_open=True)
  stats, w = _prepare(stats, weights)
  log_stop = ap_log_stop(stats, omega)
  steps_S = jnp.arange(stats.num_steps, dtype=_F32)
  log_gamma = jnp.log(jnp.asarray(gamma, _F32))
  per_position = -jax.nn.logsumexp(log_stop + steps_S * log_gamma + stats.log_target,
                                   axis=-1)
  metrics = _common_metrics(stats, w, log_halting(stats))
  metrics["ap_stop_probs"] = _weighted_mean(jnp.exp(log_stop), w)
  return _weighted_mean(per_position, w), metrics


def _kl_from_log(log_p: Array, log_q: Array) -> Array:
  """``sum_k where(p > 0, p (log p - log q), 0)`` with NaN-free gradients."""
  p = jnp.exp(log_p)
  safe_log_p = jnp.where(p > 0, log_p, 0.0)
  return jnp.sum(jnp.where(p > 0, p * (safe_log_p - log_q), 0.0), axis=-1)


def _check_prior(prior: ArrayLike, num_steps: int) -> Array:
  prior = jnp.asarray(prior)
  if prior.shape != (num_steps,):
    raise ValueError(
        f"prior must have shape [K+1] = [{num_steps}] (one entry per stopping step), "
        f"got shape {prior.shape}.")
  p = _concrete(prior)
  if p is not None:
    if not np.all(p > 0):
      raise ValueError(f"prior entries must all be > 0, got {p.tolist()}.")
    if abs(p.sum() - 1.0) > 1e-4:
      raise ValueError(f"prior must sum to 1, got sum {p.sum():.6g} for {p.tolist()}.")
  return prior.astype(_F32)


def cyb_va_loss(stats: StepLogProbs, weights: ArrayLike, *, prior: ArrayLike,
                beta: ArrayLike = 1.0, kl: str = "token") -> tuple[Array, Metrics]:
  """CYB-VA, variational halting with a prior ``rho`` over stopping steps::

      loss = mean_w( sum_k pi_k (-log c_k) ) + beta * KL

  ``kl="token"``: ``KL = mean_w KL(pi || rho)`` per position (with ``beta = 1`` the
  loss is the negative ELBO of ``log sum_k rho_k c_k``, so it is ``>=`` that NLL).
  ``kl="batch"``: ``KL = KL(mean_w pi || rho)`` once for the batch-mean halting
  distribution, so single tokens may depart from the prior while the batch matches it.

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    weights: ``[...]`` per-position weights.
    prior: ``[K+1]`` probabilities, all ``> 0``, summing to 1 (see
      :func:`geometric_prior`, :func:`uniform_prior`).
    beta: KL weight, ``>= 0``.
    kl: ``"token"`` or ``"batch"``.

  Returns:
    ``(loss, metrics)``; metrics add ``kl`` and ``expected_nll`` (the first term).
  """
  if kl not in ("token", "batch"):
    raise ValueError(f"kl={kl!r} is unknown; allowed: 'token', 'batch'.")
  _check_scalar("beta", beta, low=0.0, high=np.inf)
  log_rho_S = jnp.log(_check_prior(prior, stats.num_steps))
  stats, w = _prepare(stats, weights)
  log_pi = log_halting(stats)
  pi = jnp.exp(log_pi)
  # pi_k * (-log c_k), with the term dropped where pi_k underflows to 0.
  expected_nll = jnp.sum(jnp.where(pi > 0, pi * -stats.log_target, 0.0), axis=-1)
  expected_nll = _weighted_mean(expected_nll, w)
  if kl == "token":
    kl_value = _weighted_mean(_kl_from_log(log_pi, log_rho_S), w)
  else:
    pi_bar_S = _weighted_mean(pi, w)
    safe_pi_bar = jnp.where(pi_bar_S > 0, pi_bar_S, 1.0)
    kl_value = _kl_from_log(jnp.where(pi_bar_S > 0, jnp.log(safe_pi_bar), _NEG_INF),
                            log_rho_S)
  metrics = _common_metrics(stats, w, log_pi)
  metrics["kl"] = kl_value
  metrics["expected_nll"] = expected_nll
  return expected_nll + jnp.asarray(beta, _F32) * kl_value, metrics


def cyb_dp_loss(stats: StepLogProbs, weights: ArrayLike, *, budget: ArrayLike,
                multiplier: ArrayLike) -> tuple[Array, Metrics]:
  """CYB-DP, a compute budget enforced by a Lagrange multiplier::

      loss = mean_w(nll_mix) + mu * (mean_w(E[pauses]) - budget),  mu = stop_gradient(multiplier)

  The trainer updates ``mu`` by dual ascent with :func:`update_multiplier` from
  ``metrics["pause_excess"]``; a fixed ``mu`` with ``budget = 0`` is an ACT-like ponder
  cost. The gradient with respect to ``multiplier`` is exactly zero.

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    weights: ``[...]`` per-position weights.
    budget: allowed mean pauses per token, ``>= 0``.
    multiplier: ``mu >= 0``.

  Returns:
    ``(loss, metrics)``; metrics add ``pause_excess`` and ``multiplier``.
  """
  _check_scalar("budget", budget, low=0.0, high=np.inf)
  _check_scalar("multiplier", multiplier, low=0.0, high=np.inf)
  stats, w = _prepare(stats, weights)
  mu = jax.lax.stop_gradient(jnp.asarray(multiplier, _F32))
  metrics = _common_metrics(stats, w, log_halting(stats))
  excess = metrics["expected_pauses"] - jnp.asarray(budget, _F32)
  metrics["pause_excess"] = excess
  metrics["multiplier"] = mu
  return metrics["nll_mix"] + mu * excess, metrics


def update_multiplier(multiplier: ArrayLike, pause_excess: ArrayLike, *,
                      rate: ArrayLike) -> Array:
  """Dual ascent on the CYB-DP multiplier: ``max(0, mu + rate * pause_excess)``.

  ``rate = 0`` keeps ``mu`` fixed. ``pause_excess`` is treated as data (no gradient).
  """
  _check_scalar("rate", rate, low=0.0, high=np.inf)
  _check_scalar("multiplier", multiplier, low=0.0, high=np.inf)
  excess = jax.lax.stop_gradient(jnp.asarray(pause_excess, _F32))
  return jnp.maximum(0.0, jnp.asarray(multiplier, _F32) + jnp.asarray(rate, _F32) * excess)


# --------------------------------------------------------------------------------------
# Priors.
# --------------------------------------------------------------------------------------


def geometric_prior(num_steps: int, continuation: float) -> Array:
  """Truncated geometric prior over ``num_steps = K+1`` stopping steps.

  ``rho_k = q^k / sum_{j<num_steps} q^j`` for ``k = 0..K``, ``q = continuation > 0``
  (``q < 1`` favours early answers, ``q = 1`` is uniform). Returns ``[num_steps]`` f32.
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps={num_steps!r} must be an int >= 1 (K + 1).")
  _check_scalar("continuation", continuation, low=0.0, high=np.inf, low_open=True)
  log_w = np.arange(num_steps) * np.log(float(continuation))
  return jnp.asarray(np.exp(log_w - np.logaddexp.reduce(log_w)), _F32)


def uniform_prior(num_steps: int) -> Array:
  """Uniform prior ``rho_k = 1 / num_steps`` over ``num_steps = K+1`` steps."""
  return geometric_prior(num_steps, 1.0)


# --------------------------------------------------------------------------------------
# Evaluation protocols (DESIGN section 5).
# --------------------------------------------------------------------------------------


def threshold_halting(stats: StepLogProbs, tau: ArrayLike) -> HaltResult:
  """Stop at the first step with ``d_k <= tau`` (the final step if none).

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    tau: threshold on the DK probability, ``0 <= tau <= 1``.

  Returns:
    :class:`HaltResult` with ``[...]`` fields: ``k*``, ``-log c_{k*}``, correctness.
  """
  _check_scalar("tau", tau, low=0.0, high=1.0)
  stop_S = stats.log_dk <= jnp.log(jnp.asarray(tau, _F32))
  stop_S = stop_S.at[..., -1].set(True)
  step = jnp.argmax(stop_S, axis=-1).astype(jnp.int32)
  take = lambda x: jnp.take_along_axis(x, step[..., None], axis=-1)[..., 0]
  return HaltResult(step=step, nll=-take(stats.log_target), correct=take(stats.correct))


def fixed_halting(stats: StepLogProbs, step: int) -> HaltResult:
  """Always answer at ``step`` (0 for ``ce``, K for ``pause_ce``)."""
  num_steps = stats.num_steps
  if not -num_steps <= step < num_steps:
    raise ValueError(f"step={step} is outside [0, K={num_steps - 1}].")
  step = step % num_steps
  shape = stats.log_dk.shape[:-1]
  return HaltResult(step=jnp.full(shape, step, jnp.int32),
                    nll=-stats.log_target[..., step], correct=stats.correct[..., step])


def evaluate(stats: StepLogProbs, weights: ArrayLike, tau: ArrayLike = 0.5, *,
             fixed_step: int | None = None) -> Metrics:
  """The evaluation protocols of DESIGN section 5, identical for every model.

  ``mix``: ``nll_mix`` and ``expected_pauses`` under the model's own halting.
  ``threshold(tau)``: answer at the first ``k`` with ``d_k <= tau``.
  A model whose halting is fixed by construction (``ce`` reads step 0, ``pause_ce``
  step K with K pauses) passes ``fixed_step``; both protocols then read that step.

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    weights: ``[...]`` per-position weights.
    tau: threshold for the ``threshold`` protocol, in ``[0, 1]``.
    fixed_step: ``None`` (the model halts itself) or the step the model always reads.

  Returns:
    Scalars ``nll_mix``, ``expected_pauses``, ``compute_mix`` (= 1 + pauses),
    ``threshold_nll``, ``threshold_accuracy``, ``threshold_pauses``,
    ``compute_threshold``, and ``[K+1]`` vectors ``halt_probs``,
    ``accuracy_per_step``, ``nll_per_step``, ``threshold_step_probs``.
  """
  stats, w = _prepare(stats, weights)
  metrics = _common_metrics(stats, w, log_halting(stats))
  del metrics["compute_per_token"]  # replaced by compute_mix / compute_threshold
  if fixed_step is None:
    halt = threshold_halting(stats, tau)
  else:
    halt = fixed_halting(stats, fixed_step)
    step = fixed_step % stats.num_steps
    metrics["nll_mix"] = _weighted_mean(halt.nll, w)
    metrics["expected_pauses"] = jnp.asarray(step, _F32)
    metrics["halt_probs"] = jax.nn.one_hot(step, stats.num_steps, dtype=_F32)
  threshold_pauses = _weighted_mean(halt.step.astype(_F32), w)
  metrics.update(
      compute_mix=1.0 + metrics["expected_pauses"],
      threshold_nll=_weighted_mean(halt.nll, w),
      threshold_accuracy=_weighted_mean(halt.correct.astype(_F32), w),
      threshold_pauses=threshold_pauses,
      compute_threshold=1.0 + threshold_pauses,
      threshold_step_probs=_weighted_mean(
          jax.nn.one_hot(halt.step, stats.num_steps, dtype=_F32), w),
  )
  return metrics


LOSSES = {
    "ce": cross_entropy_loss,
    "pause_ce": pause_cross_entropy_loss,
    "cyb_ap": cyb_ap_loss,
    "cyb_va": cyb_va_loss,
    "cyb_dp": cyb_dp_loss,
}
"""Loss functions by their config name (``loss.name``)."""
