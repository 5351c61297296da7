"""The evaluation protocols of docs/design.md section 5: per-position outcomes and their one reduction.

``mix``: ``nll_mix`` and ``E[pauses]`` under the model's own halting. ``threshold(tau)``:
answer at the first ``k`` with ``d_k <= tau`` (``K`` if none), ``k*`` pauses. A model whose
halting is fixed by construction (``ce`` reads step 0, ``pause_ce`` step K) is evaluated at
that step by both protocols (its loss's read-out step, ``LossSpec.readout_step``).

Every evaluation figure of the project is computed by the same two functions:
:func:`position_outcomes` (what the protocols did at each position) and
:func:`protocol_sums` (their weighted sums over positions, which add across batches),
divided once by :func:`protocol_figures`. :func:`evaluate` is their composition on one
batch.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax.losses._common import F32
from cyb_jax.losses._common import Array
from cyb_jax.losses._common import ArrayLike
from cyb_jax.losses._common import Metrics
from cyb_jax.losses._common import check_scalar
from cyb_jax.losses.quantities import expected_pauses
from cyb_jax.losses.quantities import log_halting
from cyb_jax.losses.quantities import nll_mix
from cyb_jax.losses.quantities import prepare
from cyb_jax.losses.quantities import safe_divide
from cyb_jax.losses.quantities import weighted_sum
from cyb_jax.losses.stats import StepLogProbs


class HaltResult(NamedTuple):
  """Outcome of a halting policy per position (docs/design.md section 5).

  Attributes:
    step: ``[...]`` int32, the step ``k*`` at which the model answers (= pauses taken).
    nll: ``[...]`` float32, ``-log c_{k*}``.
    correct: ``[...]`` bool, whether ``argmax c_{k*}`` is the target.
  """

  step: Array
  nll: Array
  correct: Array


def threshold_halting(stats: StepLogProbs, tau: ArrayLike) -> HaltResult:
  """Stop at the first step with ``d_k <= tau`` (the final step if none).

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    tau: threshold on the DK probability, ``0 <= tau <= 1``.

  Returns:
    :class:`HaltResult` with ``[...]`` fields: ``k*``, ``-log c_{k*}``, correctness.
  """
  check_scalar("tau", tau, low=0.0, high=1.0)
  stop_S = stats.log_dk <= jnp.log(jnp.asarray(tau, F32))
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
  return HaltResult(
    step=jnp.full(shape, step, jnp.int32), nll=-stats.log_target[..., step], correct=stats.correct[..., step]
  )


class PositionStats(NamedTuple):
  """What the evaluation protocols did at each position; leading shape ``[...]`` (``[B, N]``).

  Positions with weight 0 hold zeros (``False``), never NaN.

  Attributes:
    pauses: int32, ``k*``: pauses taken by threshold(tau) halting (or the fixed step).
    expected_pauses: float32, ``E[pauses] = sum_{k>=1} s_k`` (the fixed step for fixed models).
    nll: float32, ``-log c_{k*}``.
    correct: bool, ``argmax c_{k*} == y``.
    nll_step0: float32, ``-log c_0``.
    correct_step0: bool, ``argmax c_0 == y``.
    nll_mix: float32, ``-logsumexp_k(log pi_k + log c_k)`` (``-log c_{k*}`` for fixed models).
    halt_probs: float32 ``[..., S]``, ``pi_k`` (one-hot at the fixed step for fixed models).
    nll_per_step: float32 ``[..., S]``, ``-log c_k``.
    correct_per_step: bool ``[..., S]``, ``argmax c_k == y``.
    weights: float32, the batch weights.
  """

  pauses: Any
  expected_pauses: Any
  nll: Any
  correct: Any
  nll_step0: Any
  correct_step0: Any
  nll_mix: Any
  halt_probs: Any
  nll_per_step: Any
  correct_per_step: Any
  weights: Any

  @property
  def num_steps(self) -> int:
    """``K + 1``."""
    return self.halt_probs.shape[-1]


def check_protocol(tau: ArrayLike, fixed_step: int | None, num_steps: int) -> None:
  """Raises ``ValueError`` for a concrete ``tau`` outside ``[0, 1]``, or a ``fixed_step`` that
  is neither None nor an int step in ``[-(K+1), K]`` (``num_steps = K + 1``)."""
  check_scalar("tau", tau, low=0.0, high=1.0)
  if fixed_step is None:
    return
  if (
    isinstance(fixed_step, bool)
    or not isinstance(fixed_step, (int, np.integer))
    or not (-num_steps <= fixed_step < num_steps)
  ):
    raise ValueError(
      f"fixed_step={fixed_step!r} must be None (the model halts itself) or an int step in "
      f"[-{num_steps}, {num_steps - 1}] (K = {num_steps - 1}; 0 for ce, -1 for pause_ce)."
    )


def position_outcomes(
  stats: StepLogProbs, weights: ArrayLike, tau: ArrayLike = 0.5, fixed_step: int | None = None
) -> PositionStats:
  """Per-position outcomes of both protocols (pure, jittable).

  Args:
    stats: :class:`StepLogProbs` with fields ``[..., K+1]``.
    weights: ``[...]`` position weights; where 0 every output is 0 / ``False``.
    tau: threshold on ``d_k`` in ``[0, 1]`` (read only when ``fixed_step`` is None).
    fixed_step: None for a model that halts itself, else the step it always reads
      (``LossSpec.readout_step``).

  Returns:
    :class:`PositionStats` with ``[...]`` fields (``[..., K+1]`` for the per-step ones).
  """
  num_steps = stats.num_steps
  check_protocol(tau, fixed_step, num_steps)
  stats, w = prepare(stats, weights)
  keep = w != 0
  if fixed_step is None:
    halt = threshold_halting(stats, tau)
    expected = expected_pauses(stats)
    halt_probs_S = jnp.exp(log_halting(stats))
    mix = nll_mix(stats)
  else:
    halt = fixed_halting(stats, fixed_step)
    expected = jnp.full(w.shape, fixed_step % num_steps, F32)
    halt_probs_S = jax.nn.one_hot(halt.step, num_steps, dtype=F32)
    mix = halt.nll

  def masked(x):
    k = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
    return jnp.where(k, x, jnp.zeros((), x.dtype))

  return PositionStats(
    pauses=masked(halt.step),
    expected_pauses=masked(expected),
    nll=masked(halt.nll),
    correct=masked(halt.correct),
    nll_step0=masked(-stats.log_target[..., 0]),
    correct_step0=masked(stats.correct[..., 0]),
    nll_mix=masked(mix),
    halt_probs=masked(halt_probs_S),
    nll_per_step=masked(-stats.log_target),
    correct_per_step=masked(stats.correct),
    weights=w,
  )


def protocol_sums(outcomes: PositionStats) -> Metrics:
  """Weighted sums over all positions of :func:`position_outcomes`; they add across batches.

  Returns:
    float32 sums of ``nll_mix``, ``expected_pauses``, ``threshold_nll``,
    ``threshold_accuracy``, ``threshold_pauses``, ``step0_nll``, ``step0_accuracy`` and of
    the ``[K+1]`` vectors ``halt_probs``, ``threshold_step_probs`` (share answering at k),
    ``accuracy_per_step``, ``nll_per_step``; ``weight_sum`` and ``num_positions``
    (positions with weight > 0).
  """
  o = outcomes
  w = jnp.asarray(o.weights, F32)
  total = lambda x: weighted_sum(jnp.asarray(x, F32), w)
  return {
    "nll_mix": total(o.nll_mix),
    "expected_pauses": total(o.expected_pauses),
    "threshold_nll": total(o.nll),
    "threshold_accuracy": total(o.correct),
    "threshold_pauses": total(o.pauses),
    "step0_nll": total(o.nll_step0),
    "step0_accuracy": total(o.correct_step0),
    "halt_probs": total(o.halt_probs),
    "threshold_step_probs": total(jax.nn.one_hot(o.pauses, o.num_steps, dtype=F32)),
    "accuracy_per_step": total(o.correct_per_step),
    "nll_per_step": total(o.nll_per_step),
    "weight_sum": jnp.sum(w),
    "num_positions": jnp.sum(w > 0).astype(jnp.int32),
  }


def protocol_figures(sums: Metrics) -> Metrics:
  """Weighted means from :func:`protocol_sums` (summed over any number of batches).

  Returns:
    Every sum divided by ``weight_sum`` (0 when no position carries weight), plus
    ``compute_mix = 1 + expected_pauses``, ``compute_threshold = 1 + threshold_pauses`` and
    ``accuracy_gain = threshold_accuracy - step0_accuracy``; ``weight_sum`` and
    ``num_positions`` as given.
  """
  denom = jnp.asarray(sums["weight_sum"], F32)
  out = {
    k: safe_divide(jnp.asarray(v, F32), denom) for k, v in sums.items() if k not in ("weight_sum", "num_positions")
  }
  out["compute_mix"] = 1.0 + out["expected_pauses"]
  out["compute_threshold"] = 1.0 + out["threshold_pauses"]
  out["accuracy_gain"] = out["threshold_accuracy"] - out["step0_accuracy"]
  out["weight_sum"] = sums["weight_sum"]
  out["num_positions"] = sums["num_positions"]
  return out


def evaluate(
  stats: StepLogProbs, weights: ArrayLike, tau: ArrayLike = 0.5, *, fixed_step: int | None = None
) -> Metrics:
  """The evaluation protocols of docs/design.md section 5 on one batch, identical for every model.

  ``protocol_figures(protocol_sums(position_outcomes(stats, weights, tau, fixed_step)))``.

  Args:
    stats: :class:`StepLogProbs`, fields ``[..., K+1]``.
    weights: ``[...]`` per-position weights.
    tau: threshold for the ``threshold`` protocol, in ``[0, 1]``.
    fixed_step: ``None`` (the model halts itself) or the step the model always reads.

  Returns:
    Scalars ``nll_mix``, ``expected_pauses``, ``compute_mix`` (= 1 + pauses),
    ``threshold_nll``, ``threshold_accuracy``, ``threshold_pauses``,
    ``compute_threshold``, ``step0_nll``, ``step0_accuracy``, ``accuracy_gain``,
    ``weight_sum``, ``num_positions``, and ``[K+1]`` vectors ``halt_probs``,
    ``accuracy_per_step``, ``nll_per_step``, ``threshold_step_probs``.
  """
  return protocol_figures(protocol_sums(position_outcomes(stats, weights, tau, fixed_step)))
