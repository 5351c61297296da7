"""The losses by name: one call for every loss, read-out steps, dual ascent, the pause warm-up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import losses

K = 2
_DIRECT = {  # each loss called directly with the registry's default hyper-parameters
  "ce": lambda s, w, mu: losses.cross_entropy_loss(s, w),
  "pause_ce": lambda s, w, mu: losses.pause_cross_entropy_loss(s, w),
  "cyb_ap": lambda s, w, mu: losses.cyb_ap_loss(s, w, gamma=0.9, omega=0.0),
  "cyb_va": lambda s, w, mu: losses.cyb_va_loss(s, w, prior=losses.geometric_prior(K + 1, 0.5)),
  "cyb_dp": lambda s, w, mu: losses.cyb_dp_loss(s, w, budget=1.0, multiplier=mu),
}


def _batch(seed=0, num_steps=K + 1, vocab=7):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(3, 5, num_steps, vocab + 1)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, size=(3, 5)), jnp.int32)
  weights = jnp.asarray(rng.uniform(size=(3, 5)) > 0.2, jnp.float32)
  return logits, targets, weights


@pytest.mark.parametrize("name", list(losses.SPECS))
def test_make_loss_equals_the_loss_function_values_and_gradients(name):
  logits, targets, weights = _batch(num_steps=1 if name == "ce" else K + 1)
  loss = losses.make_loss(name)
  mu = jnp.asarray(0.3)

  def through_registry(z):
    value, metrics, _ = loss(losses.step_log_probs(z, targets), weights, mu)
    return value, metrics

  def direct(z):
    return _DIRECT[name](losses.step_log_probs(z, targets), weights, mu)

  (v1, m1), g1 = jax.value_and_grad(through_registry, has_aux=True)(logits)
  (v2, m2), g2 = jax.value_and_grad(direct, has_aux=True)(logits)
  assert v1 == v2
  np.testing.assert_array_equal(g1, g2)
  assert m1.keys() == m2.keys()
  assert losses.LOSSES[name] is losses.SPECS[name].function


def test_readout_steps_and_dual_ascent_are_properties_of_the_spec():
  assert {n: s.readout_step(K + 1) for n, s in losses.SPECS.items()} == {
    "ce": 0,
    "pause_ce": K,
    "cyb_ap": None,
    "cyb_va": None,
    "cyb_dp": None,
  }
  assert [n for n, s in losses.SPECS.items() if s.dual_ascent] == ["cyb_dp"]
  logits, targets, weights = _batch()
  stats = losses.step_log_probs(logits, targets)
  dp = losses.make_loss("cyb_dp", budget=0.25, multiplier_init=0.5, multiplier_rate=0.1)
  _, metrics, mu = dp(stats, weights, dp.init_state())
  np.testing.assert_allclose(mu, max(0.0, 0.5 + 0.1 * float(metrics["pause_excess"])), rtol=1e-6)
  ap = losses.make_loss("cyb_ap")
  assert float(ap.init_state()) == 0.0 and float(ap(stats, weights, 0.7)[2]) == pytest.approx(0.7)


@pytest.mark.parametrize("name", ["cyb_ap", "cyb_va", "cyb_dp"])
def test_pause_warmup_switches_at_the_configured_step(name):
  logits, targets, weights = _batch(seed=1)
  stats = losses.step_log_probs(logits, targets)
  plain = losses.make_loss(name)
  warm = losses.make_loss(name, pause_warmup_steps=3)
  step_loss = jax.jit(lambda s: warm(stats, weights, 0.2, s)[0])  # the step is traced
  all_steps = losses.all_steps_loss(stats, weights)[0]
  np.testing.assert_allclose(
    all_steps,
    np.mean(np.sum(np.asarray(weights)[..., None] * -np.asarray(stats.log_target), (0, 1)) / np.asarray(weights).sum()),
    rtol=1e-6,
  )
  for step in (0, 2):  # jitted against eager: float32 rounding of the fused program
    np.testing.assert_allclose(step_loss(step), all_steps, rtol=1e-6)
  for step in (3, 100):
    np.testing.assert_allclose(step_loss(step), plain(stats, weights, 0.2)[0], rtol=1e-6)
  # pause_ce as the warm-up loss instead.
  ce_warm = losses.make_loss(name, pause_warmup_steps=3, pause_warmup_loss="pause_ce")
  assert ce_warm(stats, weights, 0.2, 1)[0] == losses.pause_cross_entropy_loss(stats, weights)[0]


def test_pause_warmup_of_zero_steps_is_the_loss_exactly_and_needs_no_step():
  logits, targets, weights = _batch(seed=2)
  stats = losses.step_log_probs(logits, targets)
  for name in ("cyb_ap", "cyb_dp"):
    a = losses.make_loss(name, pause_warmup_steps=0)(stats, weights, 0.1)
    b = losses.make_loss(name)(stats, weights, 0.1, 123)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert "pause_warmup" not in a[1]


def test_pause_warmup_trains_no_dk_logit_and_freezes_the_multiplier():
  logits, targets, weights = _batch(seed=3)
  dp = losses.make_loss("cyb_dp", pause_warmup_steps=5, multiplier_init=0.4)

  def value(z, step):
    return dp(losses.step_log_probs(z, targets), weights, 0.4, step)[0]

  warm_grad = jax.grad(value)(logits, 4)
  assert not np.any(warm_grad[..., -1])  # the DK logit gets no gradient from the warm-up
  assert np.any(jax.grad(value)(logits, 5)[..., -1])  # and does from the CYB loss
  stats = losses.step_log_probs(logits, targets)
  assert float(dp(stats, weights, 0.4, 4)[2]) == pytest.approx(0.4)  # frozen in the warm-up
  assert float(dp(stats, weights, 0.4, 5)[2]) != pytest.approx(0.4)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: losses.make_loss("hinge"), r"loss.name='hinge' is unknown"),
    (lambda: losses.make_loss("cyb_ap", budget=1.0), r"takes no hyper-parameter \['budget'\]"),
    (lambda: losses.make_loss("cyb_ap", gamma=0.0), r"gamma=0.0"),
    (lambda: losses.make_loss("cyb_va", prior="zipf"), r"prior='zipf' is unknown"),
    (lambda: losses.make_loss("cyb_va", prior="explicit", prior_values=(0.5, 0.6)), r"prior must sum to 1"),
    (lambda: losses.make_loss("cyb_dp", multiplier_rate=-1.0), r"rate=-1.0"),
    (lambda: losses.make_loss("ce", pause_warmup_steps=10), r"trains no pauses"),
    (lambda: losses.make_loss("cyb_ap", pause_warmup_steps=-1), r"pause_warmup_steps=-1"),
    (lambda: losses.make_loss("cyb_ap", pause_warmup_loss="ce"), r"pause_warmup_loss='ce'"),
    (
      lambda: losses.make_loss("cyb_ap", pause_warmup_steps=2)(
        losses.step_log_probs(_batch()[0], _batch()[1]), _batch()[2], 0.0
      ),
      r"pass the optimiser step",
    ),
    (lambda: losses.make_loss("ce").check_num_steps(K + 1), r"set model.max_pauses=0"),
    (
      lambda: losses.make_loss("cyb_va", prior="explicit", prior_values=(0.5, 0.5)).check_num_steps(K + 1),
      r"prior_values has 2 entries; the explicit prior needs K\+1 = 3",
    ),
  ],
)
def test_bad_losses_are_refused_naming_the_value(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_chunked_statistics_with_a_final_soft_cap_equal_the_capped_full_logits():
  rng = np.random.default_rng(5)
  k, v, d, cap = 2, 11, 8, 1.5
  hidden = jnp.asarray(rng.normal(size=(2, 3, k + 1, d)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  dk_kernel = jnp.asarray(rng.normal(size=(d,)), jnp.float32) / 3
  targets = jnp.asarray(rng.integers(0, v, size=(2, 3)))
  weights = jnp.ones((2, 3))

  def full(h, w):
    vocab = cap * jnp.tanh((h @ w) / cap)
    return losses.step_log_probs(jnp.concatenate([vocab, (h @ dk_kernel)[..., None]], -1), targets)

  def chunked(h, w):
    return losses.chunked_step_log_probs(h, w, dk_kernel, targets, vocab_chunk=4, logit_softcap=cap)

  value = lambda stats_fn: lambda h, w: losses.cyb_ap_loss(stats_fn(h, w), weights, gamma=0.9)[0]
  np.testing.assert_allclose(value(chunked)(hidden, kernel), value(full)(hidden, kernel), rtol=1e-6)
  assert float(jnp.max(jnp.abs(hidden @ kernel))) > 2 * cap  # the cap binds somewhere
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6),
    jax.grad(value(chunked), argnums=(0, 1))(hidden, kernel),
    jax.grad(value(full), argnums=(0, 1))(hidden, kernel),
  )
  with pytest.raises(ValueError, match="logit_softcap=0"):
    losses.chunked_step_log_probs(hidden, kernel, dk_kernel, targets, vocab_chunk=4, logit_softcap=0)
