"""Tests of cyb_jax.losses against the maths of docs/design.md sections 3-5."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.experimental import checkify
from jax.test_util import check_grads
from scipy.special import logsumexp

from cyb_jax import losses as L

SETTINGS = hypothesis.settings(max_examples=10, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _random_logits(seed, batch=(2, 3), k=3, v=5, scale=2.0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=batch + (k + 1, v + 1))).astype(dtype)
  targets = rng.integers(0, v, size=batch).astype(np.int32)
  return logits, targets


# Every loss with every option, as functions (stats, weights) -> (loss, metrics).
def _all_losses(num_steps):
  prior = L.geometric_prior(num_steps, 0.6)
  return {
    "ce": L.cross_entropy_loss,
    "pause_ce": L.pause_cross_entropy_loss,
    "ap": functools.partial(L.cyb_ap_loss, gamma=0.9),
    "ap_omega": functools.partial(L.cyb_ap_loss, gamma=0.8, omega=0.3),
    "va_token": functools.partial(L.cyb_va_loss, prior=prior, beta=1.0),
    "va_batch": functools.partial(L.cyb_va_loss, prior=prior, beta=0.5, kl="batch"),
    "va_uniform": functools.partial(L.cyb_va_loss, prior=L.uniform_prior(num_steps)),
    "dp": functools.partial(L.cyb_dp_loss, budget=0.5, multiplier=0.7),
    "dp_act": functools.partial(L.cyb_dp_loss, budget=0.0, multiplier=0.01),
  }


def _loss_of_logits(loss_fn):
  """The scalar loss of (logits, targets, weights)."""

  def f(logits, targets, weights):
    return loss_fn(L.step_log_probs(logits, targets), weights)[0]

  return f


@functools.cache
def _jitted_loss(name, num_steps):
  return jax.jit(_loss_of_logits(_all_losses(num_steps)[name]))


@jax.jit
def _all_values_and_grads(logits, targets, weights):
  """{loss name: (value, d value / d logits)} for every loss, in one compilation."""
  return {
    name: jax.value_and_grad(_loss_of_logits(fn))(logits, targets, weights)
    for name, fn in _all_losses(logits.shape[-2]).items()
  }


# ------------------------------------------------------------------------ reference


def _numpy_reference(logits, targets):
  """Float64 NumPy transcription of docs/design.md section 3, by probabilities."""
  z = np.asarray(logits, np.float64)
  v = z.shape[-1] - 1
  lse_all = logsumexp(z, axis=-1)
  d = np.exp(z[..., v] - lse_all)
  d[..., -1] = 0.0
  idx = np.broadcast_to(targets[..., None, None], z.shape[:-1] + (1,))
  c = np.exp(np.take_along_axis(z[..., :v], idx, -1)[..., 0] - logsumexp(z[..., :v], -1))
  s = np.concatenate([np.ones_like(d[..., :1]), np.cumprod(d[..., :-1], -1)], -1)
  return d, c, s, s * (1 - d)


@SETTINGS
@hypothesis.given(
  seed=st.integers(0, 2**31), k=st.integers(0, 4), v=st.integers(1, 6), scale=st.sampled_from([0.1, 1.0, 4.0])
)
def test_statistics_match_probability_reference(seed, k, v, scale):
  logits, targets = _random_logits(seed, k=k, v=v, scale=scale)
  stats = L.step_log_probs(logits, targets)
  d, c, s, pi = _numpy_reference(logits, targets)
  np.testing.assert_allclose(np.exp(stats.log_dk), d, atol=1e-6)
  np.testing.assert_allclose(np.exp(stats.log_target), c, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.exp(L.log_halting(stats)), pi, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(L.expected_pauses(stats), s[..., 1:].sum(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(L.nll_mix(stats), -np.log((pi * c).sum(-1)), rtol=1e-5, atol=1e-6)
  pred = np.argmax(np.asarray(logits)[..., :v], -1)
  np.testing.assert_array_equal(stats.correct, pred == targets[..., None])


def test_ap_matches_reference_with_hazard():
  logits, targets = _random_logits(0, k=3)
  d, c, _, _ = _numpy_reference(logits, targets)
  gamma, omega = 0.8, 0.3
  keep = np.concatenate([np.ones_like(d[..., :1]), np.cumprod(d[..., :-1] * (1 - omega), -1)], -1)
  stop = keep * (1 - d + d * omega)
  stop[..., -1] = keep[..., -1]
  expected = -np.log((stop * gamma ** np.arange(4) * c).sum(-1)).mean()
  loss, metrics = L.cyb_ap_loss(L.step_log_probs(logits, targets), np.ones(targets.shape), gamma=gamma, omega=omega)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["ap_stop_probs"], stop.reshape(-1, 4).mean(0), rtol=1e-5)


# --------------------------------------------------------------------------- limits


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31), v=st.sampled_from([1, 5]))
def test_k0_reduces_every_loss_to_cross_entropy(seed, v):
  logits, targets = _random_logits(seed, k=0, v=v)
  weights = np.random.default_rng(seed).uniform(size=targets.shape).astype(np.float32)
  # Plain cross-entropy over the vocabulary, DK ignored.
  ce_ref = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[..., 0, :v])), targets[..., None], -1)[..., 0]
  ce_ref = (weights * ce_ref).sum() / weights.sum()
  results = _all_values_and_grads(logits, targets, weights)
  ce_grad = results["ce"][1]
  for name, (value, grad) in results.items():
    # CYB-DP adds mu * (E[pauses] - budget) = -mu * budget, a constant, when K = 0.
    offset = 0.7 * 0.5 if name == "dp" else 0.01 * 0.0 if name == "dp_act" else 0.0
    np.testing.assert_allclose(value + offset, ce_ref, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(grad, ce_grad, atol=1e-6, err_msg=name)


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31), k=st.integers(0, 4))
def test_ap_without_discount_or_hazard_is_nll_mix(seed, k):
  logits, targets = _random_logits(seed, k=k)
  stats = L.step_log_probs(logits, targets)
  weights = np.ones(targets.shape)
  loss, metrics = L.cyb_ap_loss(stats, weights, gamma=1.0, omega=0.0)
  np.testing.assert_allclose(loss, metrics["nll_mix"], rtol=1e-6)
  np.testing.assert_allclose(loss, L.nll_mix(stats).mean(), rtol=1e-6)


@SETTINGS
@hypothesis.given(
  seed=st.integers(0, 2**31), k=st.integers(0, 5), omega=st.floats(0.0, 0.99), scale=st.sampled_from([0.5, 5.0, 50.0])
)
def test_halting_and_ap_stopping_distributions_sum_to_one(seed, k, omega, scale):
  logits, targets = _random_logits(seed, k=k, scale=scale)
  stats = L.step_log_probs(logits, targets)
  np.testing.assert_allclose(jnp.exp(L.log_halting(stats)).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(L.ap_log_stop(stats, omega)).sum(-1), 1.0, rtol=1e-5)


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2**31), k=st.integers(0, 4), q=st.floats(0.05, 3.0))
def test_va_token_is_an_upper_bound_of_the_prior_mixture_nll(seed, k, q):
  logits, targets = _random_logits(seed, k=k)
  stats = L.step_log_probs(logits, targets)
  prior = L.geometric_prior(k + 1, q)
  _, c, _, _ = _numpy_reference(logits, targets)
  # Per position: the ELBO bound holds for each token, so test it unweighted per token.
  for i in range(targets.shape[0]):
    for j in range(targets.shape[1]):
      one = jax.tree.map(lambda x, i=i, j=j: x[i : i + 1, j : j + 1], stats)
      loss, _ = L.cyb_va_loss(one, np.ones((1, 1)), prior=prior, beta=1.0)
      bound = -np.log((np.asarray(prior) * c[i, j]).sum())
      assert float(loss) >= bound - 1e-5


def test_geometric_prior_values():
  np.testing.assert_allclose(L.geometric_prior(3, 0.5), np.array([4, 2, 1]) / 7, rtol=1e-6)
  np.testing.assert_allclose(L.uniform_prior(4), np.full(4, 0.25))
  np.testing.assert_allclose(L.geometric_prior(1, 0.3), [1.0])


# -------------------------------------------------------------------- equivalences


def test_masked_positions_change_neither_loss_nor_gradients():
  logits, targets = _random_logits(1, batch=(3, 4), k=3)
  weights = np.ones(targets.shape, np.float32)
  weights[:, -1] = 0.0
  weights[1, 1] = 0.0
  garbage = logits.copy()
  garbage[weights == 0] = 1e4 * np.sign(np.random.default_rng(2).normal(size=garbage[weights == 0].shape))
  bad_targets = targets.copy()
  bad_targets[weights == 0] = 10**6  # out of range: NaN log_target, masked away
  clean = _all_values_and_grads(logits, targets, weights)
  dirty = _all_values_and_grads(garbage, bad_targets, weights)
  for name in clean:
    np.testing.assert_allclose(dirty[name][0], clean[name][0], rtol=1e-6, err_msg=name)
    assert np.all(np.asarray(dirty[name][1])[weights == 0] == 0), name
    np.testing.assert_allclose(dirty[name][1], clean[name][1], atol=1e-7, err_msg=name)


def test_jit_equals_eager():
  logits, targets = _random_logits(3, k=3)
  weights = np.random.default_rng(3).uniform(size=targets.shape).astype(np.float32)

  def everything(logits, targets, weights):
    stats = L.step_log_probs(logits, targets)
    return ({name: fn(stats, weights) for name, fn in _all_losses(4).items()}, L.evaluate(stats, weights, 0.4))

  eager = everything(logits, targets, weights)
  jitted = jax.jit(everything)(logits, targets, weights)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7), eager, jitted)


@pytest.mark.parametrize("vocab_chunk", [4, 16])
def test_chunked_equals_full_values_and_gradients(vocab_chunk):
  rng = np.random.default_rng(4)
  k, v, d = 2, 11, 8
  hidden = rng.normal(size=(2, 3, k + 1, d)).astype(np.float32)
  kernel = rng.normal(size=(d, v)).astype(np.float32) / 3
  dk_kernel = rng.normal(size=(d,)).astype(np.float32) / 3
  targets = rng.integers(0, v, size=(2, 3))
  weights = np.ones((2, 3), np.float32)
  loss_fn = functools.partial(L.cyb_ap_loss, gamma=0.9, omega=0.1)

  def full(h, w, wd, b):
    logits = jnp.concatenate([h @ w, (h @ wd + b)[..., None]], -1)
    return L.step_log_probs(logits, targets)

  def chunked(h, w, wd, b):
    return L.chunked_step_log_probs(h, w, wd, targets, vocab_chunk=vocab_chunk, dk_bias=b)

  args = (hidden, kernel, dk_kernel, np.float32(0.4))
  s_full, s_chunk = full(*args), chunked(*args)
  for field in ("log_answer", "log_target"):
    np.testing.assert_allclose(getattr(s_chunk, field), getattr(s_full, field), atol=2e-6)
  np.testing.assert_allclose(s_chunk.log_dk[..., :-1], s_full.log_dk[..., :-1], atol=2e-6)
  np.testing.assert_array_equal(s_chunk.correct, s_full.correct)
  grads = [jax.grad(lambda *a, s=s: loss_fn(s(*a), weights)[0], argnums=(0, 1, 2, 3))(*args) for s in (full, chunked)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), *grads)


def test_chunked_argmax_takes_the_first_maximum_like_jnp_argmax():
  hidden = np.ones((1, 1, 4), np.float32)
  kernel = np.zeros((4, 6), np.float32)  # all logits tie
  stats = L.chunked_step_log_probs(hidden, kernel, np.zeros(4), np.array([0]), vocab_chunk=4)
  assert bool(stats.correct[0, 0])


def test_losses_are_shape_polymorphic():
  def f(logits, targets, weights):
    return L.cyb_va_loss(L.step_log_probs(logits, targets), weights, prior=L.uniform_prior(4), kl="batch")[0]

  b, n = export.symbolic_shape("b, n")
  exp = export.export(jax.jit(f))(
    jax.ShapeDtypeStruct((b, n, 4, 9), jnp.float32),
    jax.ShapeDtypeStruct((b, n), jnp.int32),
    jax.ShapeDtypeStruct((b, n), jnp.float32),
  )
  for shape in [(1, 1), (3, 5)]:
    logits, targets = _random_logits(5, batch=shape, k=3, v=8)
    weights = np.ones(shape, np.float32)
    np.testing.assert_allclose(exp.call(logits, targets, weights), f(logits, targets, weights), rtol=1e-6)


def test_any_leading_batch_shape():
  for shape in [(), (5,), (2, 3, 2)]:
    logits, targets = _random_logits(6, batch=shape, k=2)
    loss, metrics = L.cyb_ap_loss(L.step_log_probs(logits, targets), np.ones(shape), gamma=0.9)
    assert loss.shape == () and metrics["halt_probs"].shape == (3,)


# ---------------------------------------------------------------------- robustness


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_finite_values_and_gradients_for_extreme_and_low_precision_logits(dtype, scale):
  logits, targets = _random_logits(7, k=3)
  logits = np.sign(logits) * scale if scale > 1 else logits
  logits = jnp.asarray(logits, dtype)
  weights = np.ones(targets.shape, np.float32)
  for name, (value, grad) in _all_values_and_grads(logits, targets, weights).items():
    assert np.isfinite(value), name
    assert grad.dtype == logits.dtype
    assert np.all(np.isfinite(np.asarray(grad, np.float32))), name
  assert L.step_log_probs(logits, targets).log_target.dtype == jnp.float32


@pytest.mark.parametrize("name", list(_all_losses(3)))
def test_gradients_match_float64_finite_differences(name):
  logits, targets = _random_logits(8, batch=(2, 2), k=2, v=4, scale=1.5)
  weights = np.array([[1.0, 0.5], [0.0, 2.0]])
  with jax.enable_x64(True):
    loss = _jitted_loss(name, 3)
    f = lambda x: loss(x, targets, weights)
    check_grads(f, (np.asarray(logits, np.float64),), order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-5)


def test_dp_multiplier_has_zero_gradient_and_dual_ascent():
  logits, targets = _random_logits(9, k=3)
  stats = L.step_log_probs(logits, targets)
  weights = np.ones(targets.shape)
  g = jax.grad(lambda m: L.cyb_dp_loss(stats, weights, budget=0.2, multiplier=m)[0])(0.5)
  assert g == 0.0
  _, metrics = L.cyb_dp_loss(stats, weights, budget=0.2, multiplier=0.5)
  excess = metrics["pause_excess"]
  np.testing.assert_allclose(excess, L.expected_pauses(stats).mean() - 0.2, rtol=1e-6)
  np.testing.assert_allclose(L.update_multiplier(0.5, excess, rate=0.1), max(0, 0.5 + 0.1 * excess), rtol=1e-6)
  assert L.update_multiplier(0.0, -1.0, rate=1.0) == 0.0
  assert L.update_multiplier(0.3, 5.0, rate=0.0) == pytest.approx(0.3)


def test_threshold_halting_and_evaluate():
  # One position, K = 2; d = (0.8, 0.3, 0) by construction of the DK logit.
  v = 3
  logits = np.zeros((1, 3, v + 1), np.float32)
  logits[0, 1, 2] = 2.0  # step 1 prefers token 2
  for k, d in enumerate([0.8, 0.3]):  # DK logit = logit(d) + logsumexp(vocabulary)
    logits[0, k, v] = np.log(d / (1 - d)) + logsumexp(logits[0, k, :v])
  stats = L.step_log_probs(logits, np.array([2]))
  np.testing.assert_allclose(np.exp(stats.log_dk[0, :2]), [0.8, 0.3], rtol=1e-5)
  halt = L.threshold_halting(stats, 0.5)
  assert int(halt.step[0]) == 1 and bool(halt.correct[0])
  assert int(L.threshold_halting(stats, 0.9).step[0]) == 0
  assert int(L.threshold_halting(stats, 0.0).step[0]) == 2
  m = L.evaluate(stats, np.ones(1), 0.5)
  assert float(m["threshold_pauses"]) == 1.0 and float(m["compute_threshold"]) == 2.0
  np.testing.assert_allclose(m["threshold_nll"], -stats.log_target[0, 1], rtol=1e-6)
  np.testing.assert_allclose(m["expected_pauses"], 0.8 + 0.8 * 0.3, rtol=1e-5)
  fixed = L.evaluate(stats, np.ones(1), 0.5, fixed_step=-1)
  assert float(fixed["expected_pauses"]) == 2.0 and float(fixed["compute_mix"]) == 3.0
  np.testing.assert_allclose(fixed["nll_mix"], -stats.log_target[0, 2], rtol=1e-6)


def test_out_of_range_targets_are_nan_and_the_checked_variant_raises():
  logits, targets = _random_logits(10, k=1, v=4)
  bad = targets.copy()
  bad[0, 0] = 4  # the DK id is never a target
  stats = L.step_log_probs(logits, bad)
  assert np.isnan(stats.log_target[0, 0]).all() and np.isfinite(stats.log_target[1]).all()
  with pytest.raises(Exception, match="target ids must lie in"):
    L.checked_step_log_probs(logits, bad)
  err, _ = jax.jit(checkify.checkify(L.checked_step_log_probs))(logits, bad)
  with pytest.raises(Exception, match=r"\[0, V=4\)"):
    err.throw()


# ------------------------------------------------------------------------- errors


def _stats():
  logits, targets = _random_logits(11, k=2)
  return L.step_log_probs(logits, targets), np.ones(targets.shape)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: L.step_log_probs(np.zeros((2, 3, 4)), np.zeros((2, 4), np.int32)), r"targets shape \(2, 4\) must equal"),
    (lambda: L.step_log_probs(np.zeros((2, 3, 1)), np.zeros((2,), np.int32)), ">= 2"),
    (lambda: L.step_log_probs(np.zeros((4,)), np.zeros((), np.int32)), "at least 2 axes"),
    (lambda: L.step_log_probs(np.zeros((2, 3, 4)), np.zeros((2,))), "integer"),
    (lambda: L.cyb_ap_loss(*_stats(), gamma=0.0), r"gamma=0.0 .* \(0, 1\]"),
    (lambda: L.cyb_ap_loss(*_stats(), gamma=1.5), r"gamma=1.5"),
    (lambda: L.cyb_ap_loss(*_stats(), gamma=0.9, omega=1.0), r"omega=1.0 .* \[0, 1\)"),
    (lambda: L.cyb_ap_loss(*_stats(), gamma=0.9, omega=-0.1), r"omega=-0.1"),
    (lambda: L.cyb_va_loss(*_stats(), prior=L.uniform_prior(4)), r"shape \[K\+1\] = \[3\]"),
    (lambda: L.cyb_va_loss(*_stats(), prior=np.array([0.5, 0.5, 0.0])), "> 0"),
    (lambda: L.cyb_va_loss(*_stats(), prior=np.array([0.5, 0.5, 0.5])), "sum to 1"),
    (
      lambda: L.cyb_va_loss(*_stats(), prior=L.uniform_prior(3), kl="sequence"),
      r"kl='sequence' is unknown; allowed: 'token', 'batch'",
    ),
    (lambda: L.cyb_va_loss(*_stats(), prior=L.uniform_prior(3), beta=-1.0), "beta=-1.0"),
    (lambda: L.cyb_dp_loss(*_stats(), budget=-0.5, multiplier=1.0), "budget=-0.5"),
    (lambda: L.cyb_dp_loss(*_stats(), budget=0.5, multiplier=-1.0), "multiplier=-1.0"),
    (lambda: L.update_multiplier(1.0, 0.1, rate=-0.1), "rate=-0.1"),
    (lambda: L.cross_entropy_loss(_stats()[0], np.ones((3, 3))), r"weights shape \(3, 3\)"),
    (lambda: L.threshold_halting(_stats()[0], 1.5), r"tau=1.5"),
    (lambda: L.geometric_prior(0, 0.5), "num_steps=0"),
    (lambda: L.geometric_prior(3, 0.0), "continuation=0.0"),
    (
      lambda: L.chunked_step_log_probs(
        np.zeros((2, 3, 4)), np.zeros((5, 7)), np.zeros(4), np.zeros(2, np.int32), vocab_chunk=4
      ),
      r"\[D=4, V\]",
    ),
    (
      lambda: L.chunked_step_log_probs(
        np.zeros((2, 3, 4)), np.zeros((4, 7)), np.zeros(4), np.zeros(2, np.int32), vocab_chunk=0
      ),
      "vocab_chunk=0",
    ),
  ],
)
def test_bad_input_raises_a_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_errors_are_raised_at_trace_time_under_jit():
  logits, targets = _random_logits(12, k=2)
  with pytest.raises(ValueError, match="gamma"):
    jax.jit(lambda x: L.cyb_ap_loss(L.step_log_probs(x, targets), np.ones((2, 3)), gamma=2.0))(logits)
  # Traced hyper-parameters are accepted (and not checked).
  loss = jax.jit(lambda g: L.cyb_ap_loss(L.step_log_probs(logits, targets), np.ones((2, 3)), gamma=g)[0])(0.9)
  assert np.isfinite(loss)


def test_from_parts_equals_joined_logits_values_and_gradients():
  logits, targets = _random_logits(13, k=2, v=6)
  weights = np.ones(targets.shape, np.float32)

  def joined(z):
    return L.cyb_ap_loss(L.step_log_probs(z, targets), weights, gamma=0.8)[0]

  def parts(z):
    return L.cyb_ap_loss(L.step_log_probs_from_parts(z[..., :-1], z[..., -1], targets), weights, gamma=0.8)[0]

  np.testing.assert_allclose(parts(logits), joined(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(parts)(logits), jax.grad(joined)(logits), atol=1e-7)
  with pytest.raises(ValueError, match=r"dk_logits shape \(2, 3\) must equal"):
    L.step_log_probs_from_parts(logits[..., :-1], logits[..., 0, -1], targets)
