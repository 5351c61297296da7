"""The losses as a library (issue 27): exact edge cases, and sums that accumulate exactly.

* A NaN or inf logit at a weighted position shows in every loss's value (none hides it in a
  dropped term); an all-padding batch gives loss 0, zero gradients, and leaves the CYB-DP
  multiplier where it was.
* `Loss` is hashable (a static argument of `jax.jit`); a missing `<don't know>` column is refused
  with `vocab_size`; negative weights raise where concrete.
* `Loss.sums` / `Loss.value_from_sums`: the sums of any split of a batch (micro-batches, shards)
  give the full batch's loss and, by the accumulation rule, its gradient (float32, 1e-6); the
  trainer's gradient accumulation is that rule, with micro-batches of very different token counts.
"""

import functools
import math
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.training import components
from cyb_jax.training import train
from tests.tiny import tiny_config

K, V = 2, 7
LOSSES = [
  ("ce", {}),
  ("pause_ce", {}),
  ("cyb_ap", {}),
  ("cyb_va", {}),
  ("cyb_va", {"kl": "batch"}),
  ("cyb_dp", {"multiplier_init": 0.7}),
  ("cyb_dp", {"multiplier_init": 0.7, "pause_warmup_steps": 3}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in LOSSES]


def _logits(name, shape=(4, 6)):
  steps = 1 if name == "ce" else K + 1
  return jax.random.normal(jax.random.key(0), (*shape, steps, V + 1))


TARGETS = jax.random.randint(jax.random.key(1), (4, 6), 0, V)
# Rows with 6, 2, 0 and 4 real tokens.
WEIGHTS = jnp.array([[1] * 6, [1, 1, 0, 0, 0, 0], [0] * 6, [1, 0, 1, 0, 1, 1]], jnp.float32)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name, kwargs", LOSSES, ids=IDS)
def test_a_non_finite_logit_at_a_weighted_position_shows_in_the_loss(name, kwargs, bad):
  logits = _logits(name)
  step = 0 if name == "ce" else -1 if name == "pause_ce" else 1  # a step the loss reads
  logits = logits.at[3, 2, step, 4].set(bad)  # position (3, 2) has weight 1
  loss = losses.make_loss(name, **kwargs)
  value, _, _ = loss(losses.step_log_probs(logits, TARGETS), WEIGHTS, step=5)
  assert not np.isfinite(float(value))


@pytest.mark.parametrize("name, kwargs", LOSSES, ids=IDS)
def test_an_all_padding_batch_has_loss_zero_zero_gradients_and_keeps_the_multiplier(name, kwargs):
  loss = losses.make_loss(name, **(kwargs | ({"multiplier_rate": 0.01} if name == "cyb_dp" else {})))
  state = loss.init_state()

  def value(logits):
    value, metrics, new_state = loss(losses.step_log_probs(logits, TARGETS), jnp.zeros_like(WEIGHTS), state, step=5)
    return value, new_state

  (v, new_state), grads = jax.value_and_grad(value, has_aux=True)(_logits(name))
  assert float(v) == 0.0
  np.testing.assert_array_equal(grads, 0.0)
  assert float(new_state) == float(state)


def test_loss_is_hashable_and_a_static_argument_of_jit():
  a = losses.make_loss("cyb_va", prior="explicit", prior_values=[0.5, 0.25, 0.25])
  b = losses.make_loss("cyb_va", prior="explicit", prior_values=(0.5, 0.25, 0.25))
  assert hash(a) == hash(b) and a == b and {a, b} == {a}

  @functools.partial(jax.jit, static_argnums=0)
  def value(loss, logits):
    return loss(losses.step_log_probs(logits, TARGETS), WEIGHTS)[0]

  assert np.isfinite(float(value(a, _logits("cyb_va"))))


def test_a_missing_dont_know_column_is_refused_with_vocab_size():
  logits = _logits("cyb_dp")
  losses.step_log_probs(logits, TARGETS, vocab_size=V)
  with pytest.raises(ValueError, match=r"last axis is 7, but vocab_size=7 needs V\+1 = 8.*no <don't know> column"):
    losses.step_log_probs(logits[..., :V], TARGETS, vocab_size=V)


def test_negative_weights_raise_where_concrete():
  stats = losses.step_log_probs(_logits("cyb_ap"), TARGETS)
  with pytest.raises(ValueError, match="weights must be >= 0.*min -1"):
    losses.make_loss("cyb_ap")(stats, WEIGHTS.at[0, 0].set(-1.0))


@pytest.mark.parametrize("step", [0, 5], ids=["warm-up step", "after"])
@pytest.mark.parametrize("name, kwargs", LOSSES, ids=IDS)
def test_sums_of_any_split_give_the_full_batch_loss_and_gradient(name, kwargs, step):
  """Parts of 1, 2 and 1 rows (6, 2 + 0 and 4 real tokens): value_from_sums of the summed sums
  is the full loss, and sum_i d<c, sums_i>/d logits_i (c: the loss's gradient w.r.t. the sums
  at the total) is the full gradient."""
  loss = losses.make_loss(name, **kwargs)
  state = loss.init_state()
  logits = _logits(name)
  parts = [slice(0, 1), slice(1, 3), slice(3, 4)]

  def part_sums(logits_part, part):
    return loss.sums(losses.step_log_probs(logits_part, TARGETS[part]), WEIGHTS[part], state, step)[0]

  full_value, full_grad = jax.value_and_grad(
    lambda x: loss.value_and_metrics(losses.step_log_probs(x, TARGETS), WEIGHTS, state, step)[0]
  )(logits)
  total = jax.tree.map(lambda *xs: sum(xs), *[part_sums(logits[p], p) for p in parts])
  np.testing.assert_allclose(loss.value_from_sums(total, state, step), full_value, rtol=1e-6)
  c = jax.grad(lambda sums: loss.value_from_sums(sums, state, step))(total)

  def projected(x, part):
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(c), jax.tree.leaves(part_sums(x, part))))

  grad = jnp.concatenate([jax.grad(projected)(logits[p], p) for p in parts])
  np.testing.assert_allclose(grad, full_grad, rtol=0, atol=1e-6 * float(jnp.abs(full_grad).max()))


def test_sums_under_shard_map_psum_give_the_full_loss():
  """The sums through `jax.lax.psum` in a shard_map, as another codebase would combine its shards
  (one CPU device here: that any split adds up is the test above)."""
  loss = losses.make_loss("cyb_va", kl="batch")
  mesh = jax.make_mesh((1,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
  logits = _logits("cyb_va")

  def local(x, t, w):
    sums, _ = loss.sums(losses.step_log_probs(x, t), w, loss.init_state())
    return loss.value_from_sums(jax.lax.psum(sums, "rows"), loss.init_state())

  P = jax.sharding.PartitionSpec  # noqa: N806
  sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("rows"), P("rows"), P("rows")), out_specs=P()))
  full = loss(losses.step_log_probs(logits, TARGETS), WEIGHTS)[0]
  np.testing.assert_allclose(sharded(logits, TARGETS, WEIGHTS), full, rtol=1e-6)


@pytest.mark.parametrize("loss_overrides", [{"loss.name": "cyb_dp"}, {"loss.name": "cyb_va", "loss.kl": "batch"}])
def test_gradient_accumulation_with_very_different_token_counts_is_the_full_batch_step(loss_overrides):
  """4 micro-batches of 1 row with 8, 1, 0 and 5 real tokens: one step equals the full batch's."""
  config = tiny_config(**{**loss_overrides, "loss.pause_warmup_steps": 0})
  model_cfg = model_lib.ModelConfig(vocab_size=16, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_pauses=2)
  tx, schedule = components.make_optimizer(config)
  loss = components.make_loss(config)
  rng = np.random.default_rng(0)
  weights = np.zeros((4, 8), np.float32)
  weights[0], weights[1, 3], weights[3, :5] = 1.0, 1.0, 1.0
  batch = {
    "inputs": rng.integers(0, 16, (4, 8)).astype(np.int32),
    "targets": rng.integers(0, 16, (4, 8)).astype(np.int32),
    "weights": weights,
    "segment_ids": np.ones((4, 8), np.int32),
    "positions": np.tile(np.arange(8, dtype=np.int32), (4, 1)),
  }
  state = train.init_state(jax.random.key(0), model_cfg=model_cfg, tx=tx, loss_state=jnp.asarray(0.5))

  def step(accum_steps):
    run = functools.partial(
      train.train_step, model_cfg=model_cfg, loss=loss, tx=tx, schedule=schedule, accum_steps=accum_steps
    )
    return jax.jit(run)(state, batch)

  (full_state, full_metrics), (acc_state, acc_metrics) = step(1), step(4)
  np.testing.assert_allclose(acc_metrics["loss"], full_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(acc_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
  np.testing.assert_allclose(acc_state.multiplier, full_state.multiplier, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), acc_state.params, full_state.params)


def test_the_example_of_cyb_in_your_own_model_trains():
  """examples/cyb_in_your_model.py (plain JAX, optax, cyb_jax.losses) learns its task."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "cyb_in_your_model.py")
  example = runpy.run_path(path)
  assert example["main"](150) < 0.25 * math.log(example["V"])
