"""The five training losses of docs/design.md section 4, their priors and the CYB-DP dual ascent.

Each loss is a pure function ``(stats, weights, **hyper-parameters) -> (loss, metrics)``:
the weighted mean over positions of a per-position loss, with metrics holding at least
``nll_mix``, ``expected_pauses``, ``compute_per_token``, ``halt_probs`` ``[K+1]``,
``accuracy_per_step`` ``[K+1]``, ``nll_per_step`` ``[K+1]`` and ``weight_sum``.
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
from cyb_jax.losses._common import check_scalar
from cyb_jax.losses._common import concrete
from cyb_jax.losses.quantities import common_metrics
from cyb_jax.losses.quantities import exclusive_cumsum
from cyb_jax.losses.quantities import log_halting
from cyb_jax.losses.quantities import prepare
from cyb_jax.losses.quantities import weighted_mean
from cyb_jax.losses.quantities import where_positive_times
from cyb_jax.losses.stats import StepLogProbs

KL_MODES = ("token", "batch")
PRIOR_KINDS = ("geometric", "uniform", "explicit")


def check_ap_hparams(gamma: ArrayLike, omega: ArrayLike) -> None:
  """CYB-AP: ``0 < gamma <= 1`` and ``0 <= omega < 1`` (when known at trace time)."""
  check_scalar("gamma", gamma, low=0.0, high=1.0, low_open=True)
  check_scalar("omega", omega, low=0.0, high=1.0, high_open=True)


def check_va_hparams(beta: ArrayLike, kl: str) -> None:
  """CYB-VA: ``beta >= 0`` and ``kl`` one of :data:`KL_MODES`."""
  if kl not in KL_MODES:
    raise ValueError(f"kl={kl!r} is unknown; allowed: 'token', 'batch'.")
  check_scalar("beta", beta, low=0.0, high=np.inf)


def cross_entropy_loss(stats: StepLogProbs, weights: ArrayLike) -> tuple[Array, Metrics]:
  """No pauses: ``loss = mean_w(-log c_0)`` (docs/design.md section 4, ``ce``).

  Args:
    stats: :class:`StepLogProbs` with fields ``[..., K+1]`` (only step 0 is read).
    weights: ``[...]`` per-position weights (0/1 masks or real weights).
  """
  stats, w = prepare(stats, weights)
  loss = weighted_mean(-stats.log_target[..., 0], w)
  return loss, common_metrics(stats, w, log_halting(stats))


def pause_cross_entropy_loss(stats: StepLogProbs, weights: ArrayLike) -> tuple[Array, Metrics]:
  """Always take all K pauses and read out the last step: ``mean_w(-log c_K)``.

  The baseline of Goyal et al. (2023). Args as :func:`cross_entropy_loss`.
  """
  stats, w = prepare(stats, weights)
  loss = weighted_mean(-stats.log_target[..., -1], w)
  return loss, common_metrics(stats, w, log_halting(stats))


def all_steps_loss(stats: StepLogProbs, weights: ArrayLike) -> tuple[Array, Metrics]:
  """Every step trained as an answer: ``mean_w( (1 / (K+1)) sum_k -log c_k )``.

  The pause warm-up of docs/design.md section 11: it trains every pause slot to predict,
  whatever the halting, and never the DK head (``c_k`` is the answer given an answer at
  step k, independent of the DK logit). Args as :func:`cross_entropy_loss`.
  """
  stats, w = prepare(stats, weights)
  loss = weighted_mean(jnp.mean(-stats.log_target, axis=-1), w)
  return loss, common_metrics(stats, w, log_halting(stats))


def ap_log_stop(stats: StepLogProbs, omega: ArrayLike = 0.0) -> Array:
  """``[..., K+1]`` log of the CYB-AP stopping distribution ``P_k``.

  The world demands an answer at each step with hazard ``omega``; the model answers
  of its own accord with ``r_k``::

      log P_k = sum_{j<k} [log d_j + log(1-omega)] + logaddexp(log r_k, log d_k + log omega)

  With the forced final step (``log d_K = -inf``, ``log r_K = 0``) the same formula
  gives ``log P_K = sum_{j<K} [log d_j + log(1-omega)]``, and ``sum_k P_k = 1``.
  """
  omega = jnp.asarray(omega, F32)
  log_keep = jnp.log1p(-omega)
  # where(omega > 0, ...) keeps log(0) = -inf out of the gradient's arithmetic.
  log_omega = jnp.log(jnp.where(omega > 0, omega, 1.0))
  interrupted_S = jnp.where(omega > 0, stats.log_dk + log_omega, NEG_INF)
  log_prefix = exclusive_cumsum(stats.log_dk + log_keep)
  return log_prefix + jnp.logaddexp(stats.log_answer, interrupted_S)


def cyb_ap_loss(
  stats: StepLogProbs, weights: ArrayLike, *, gamma: ArrayLike, omega: ArrayLike = 0.0
) -> tuple[Array, Metrics]:
  """CYB-AP, anytime prediction (docs/design.md section 4)::

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
  check_ap_hparams(gamma, omega)
  stats, w = prepare(stats, weights)
  log_stop = ap_log_stop(stats, omega)
  steps_S = jnp.arange(stats.num_steps, dtype=F32)
  log_gamma = jnp.log(jnp.asarray(gamma, F32))
  per_position = -jax.nn.logsumexp(log_stop + steps_S * log_gamma + stats.log_target, axis=-1)
  metrics = common_metrics(stats, w, log_halting(stats))
  metrics["ap_stop_probs"] = weighted_mean(jnp.exp(log_stop), w)
  return weighted_mean(per_position, w), metrics


def _kl_from_log(log_p: Array, log_q: Array) -> Array:
  """``sum_k where(p > 0, p (log p - log q), 0)`` with NaN-free gradients (a NaN p stays NaN)."""
  p = jnp.exp(log_p)
  safe_log_p = jnp.where(p > 0, log_p, 0.0)
  return jnp.sum(where_positive_times(p, safe_log_p - log_q), axis=-1)


def _check_prior(prior: ArrayLike, num_steps: int) -> Array:
  prior = jnp.asarray(prior)
  if prior.shape != (num_steps,):
    raise ValueError(
      f"prior must have shape [K+1] = [{num_steps}] (one entry per stopping step), got shape {prior.shape}."
    )
  p = concrete(prior)
  if p is not None:
    if not np.all(p > 0):
      raise ValueError(f"prior entries must all be > 0, got {p.tolist()}.")
    if abs(p.sum() - 1.0) > 1e-4:
      raise ValueError(f"prior must sum to 1, got sum {p.sum():.6g} for {p.tolist()}.")
  return prior.astype(F32)


def batch_kl(pi_bar_S: Array, log_rho_S: Array) -> Array:
  """``KL(pi_bar || rho)`` of a batch-mean halting distribution ``pi_bar`` ``[K+1]``."""
  safe_pi_bar = jnp.where(pi_bar_S > 0, pi_bar_S, 1.0)
  log_pi_bar_S = jnp.where(pi_bar_S > 0, jnp.log(safe_pi_bar), jnp.where(jnp.isnan(pi_bar_S), jnp.nan, NEG_INF))
  return _kl_from_log(log_pi_bar_S, log_rho_S)


def cyb_va_loss(
  stats: StepLogProbs, weights: ArrayLike, *, prior: ArrayLike, beta: ArrayLike = 1.0, kl: str = "token"
) -> tuple[Array, Metrics]:
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
  check_va_hparams(beta, kl)
  log_rho_S = jnp.log(_check_prior(prior, stats.num_steps))
  stats, w = prepare(stats, weights)
  log_pi = log_halting(stats)
  pi = jnp.exp(log_pi)
  # pi_k * (-log c_k), with the term dropped where pi_k underflows to 0.
  expected_nll = jnp.sum(where_positive_times(pi, -stats.log_target), axis=-1)
  expected_nll = weighted_mean(expected_nll, w)
  if kl == "token":
    kl_value = weighted_mean(_kl_from_log(log_pi, log_rho_S), w)
  else:
    kl_value = batch_kl(weighted_mean(pi, w), log_rho_S)
  metrics = common_metrics(stats, w, log_pi)
  metrics["kl"] = kl_value
  metrics["expected_nll"] = expected_nll
  return expected_nll + jnp.asarray(beta, F32) * kl_value, metrics


def cyb_dp_loss(
  stats: StepLogProbs, weights: ArrayLike, *, budget: ArrayLike, multiplier: ArrayLike
) -> tuple[Array, Metrics]:
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
  check_scalar("budget", budget, low=0.0, high=np.inf)
  check_scalar("multiplier", multiplier, low=0.0, high=np.inf)
  stats, w = prepare(stats, weights)
  mu = jax.lax.stop_gradient(jnp.asarray(multiplier, F32))
  metrics = common_metrics(stats, w, log_halting(stats))
  metrics["pause_excess"] = pause_excess(metrics["expected_pauses"], metrics["weight_sum"], budget=budget)
  metrics["multiplier"] = mu
  penalty = budget_term(metrics["expected_pauses"], metrics["weight_sum"], budget=budget, multiplier=mu)
  return metrics["nll_mix"] + penalty, metrics


def pause_excess(mean_pauses: ArrayLike, weight_sum: ArrayLike, *, budget: ArrayLike) -> Array:
  """``mean_w(E[pauses]) - budget``, and 0 where no position carries weight (a padding batch
  neither moves the CYB-DP multiplier nor adds ``-mu * budget`` to the loss)."""
  mean_pauses = jnp.asarray(mean_pauses)  # float64 stays float64 (under x64)
  return jnp.where(jnp.asarray(weight_sum) > 0, mean_pauses - jnp.asarray(budget, mean_pauses.dtype), 0.0)


def budget_term(mean_pauses: ArrayLike, weight_sum: ArrayLike, *, budget: ArrayLike, multiplier: ArrayLike) -> Array:
  """CYB-DP's ``mu * pause_excess`` with ``mu = stop_gradient(multiplier)``."""
  excess = pause_excess(mean_pauses, weight_sum, budget=budget)
  return jax.lax.stop_gradient(jnp.asarray(multiplier, excess.dtype)) * excess


def update_multiplier(multiplier: ArrayLike, pause_excess: ArrayLike, *, rate: ArrayLike) -> Array:
  """Dual ascent on the CYB-DP multiplier: ``max(0, mu + rate * pause_excess)``.

  ``rate = 0`` keeps ``mu`` fixed. ``pause_excess`` is treated as data (no gradient).
  """
  check_scalar("rate", rate, low=0.0, high=np.inf)
  check_scalar("multiplier", multiplier, low=0.0, high=np.inf)
  excess = jax.lax.stop_gradient(jnp.asarray(pause_excess, F32))
  return jnp.maximum(0.0, jnp.asarray(multiplier, F32) + jnp.asarray(rate, F32) * excess)


def geometric_prior(num_steps: int, continuation: float) -> Array:
  """Truncated geometric prior over ``num_steps = K+1`` stopping steps.

  ``rho_k = q^k / sum_{j<num_steps} q^j`` for ``k = 0..K``, ``q = continuation > 0``
  (``q < 1`` favours early answers, ``q = 1`` is uniform). Returns ``[num_steps]`` f32.
  """
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps={num_steps!r} must be an int >= 1 (K + 1).")
  check_scalar("continuation", continuation, low=0.0, high=np.inf, low_open=True)
  log_w = np.arange(num_steps) * np.log(float(continuation))
  return jnp.asarray(np.exp(log_w - np.logaddexp.reduce(log_w)), F32)


def uniform_prior(num_steps: int) -> Array:
  """Uniform prior ``rho_k = 1 / num_steps`` over ``num_steps = K+1`` steps."""
  return geometric_prior(num_steps, 1.0)


def make_prior(kind: str, num_steps: int, *, continuation: float = 0.5, values: tuple[float, ...] = ()) -> Array:
  """The CYB-VA prior ``rho`` ``[num_steps]`` of a kind in :data:`PRIOR_KINDS`.

  ``geometric``: :func:`geometric_prior` with ``continuation``; ``uniform``:
  :func:`uniform_prior`; ``explicit``: ``values``, K+1 positive numbers summing to 1.
  """
  if kind == "geometric":
    return geometric_prior(num_steps, continuation)
  if kind == "uniform":
    return uniform_prior(num_steps)
  if kind == "explicit":
    values = np.asarray(values, np.float32)
    if values.shape != (num_steps,):
      raise ValueError(f"prior_values has {values.size} entries; the explicit prior needs K+1 = {num_steps}.")
    return _check_prior(values, num_steps)
  raise ValueError(f"prior={kind!r} is unknown; allowed: {', '.join(map(repr, PRIOR_KINDS))}.")
