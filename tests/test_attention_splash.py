"""Pallas splash attention (`attention_impl="splash"`, cyb_jax.model.attention.splash; interpret mode
on this CPU) computes the dense reference (`attention.attend`): values and gradients."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import model as model_lib
from cyb_jax.model import attention
from cyb_jax.model.attention import splash as attention_splash
from cyb_jax.model.config import ModelConfig
from tests import test_attention_kernels as kernels_test
from tests.multidevice import harness

B, N, V, K, W = 2, 128, 40, 2, 5  # splash needs N % 128 == 0
TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = 2e-5  # of each gradient array's largest entry
# GQA (4 query heads on 2 key/value heads), sliding-window and full layers, a logit soft cap.
CFG = ModelConfig(
  vocab_size=V,
  num_layers=2,
  d_model=32,
  num_heads=4,
  mlp_dim=64,
  max_pauses=K,
  num_kv_heads=2,
  layer_types=("sliding", "full"),
  sliding_window=W,
  attn_logit_softcap=20.0,
)
SPLASH = dataclasses.replace(CFG, attention_impl="splash")


def _packed_ids():
  """Row 0: documents of 50 and 78 tokens. Row 1: one of 100 tokens, then 28 of padding."""
  segment_ids = jnp.array([[1] * 50 + [2] * 78, [1] * 100 + [0] * 28], jnp.int32)
  positions = jnp.array([list(range(50)) + list(range(78)), list(range(N))], jnp.int32)
  return segment_ids, positions


def _assert_trees_close(a, b):
  kernels_test.assert_trees_close(a, b, rtol=GRAD_TOL)


def _random_qkv(j=3, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (B, N, 4, 8))
  shared = attention.KeyValues(jax.random.normal(keys[1], (B, N, 2, 8)), jax.random.normal(keys[2], (B, N, 2, 8)))
  private = attention.KeyValues(
    jax.random.normal(keys[3], (B, N, j, 2, 8)), jax.random.normal(keys[4], (B, N, j, 2, 8))
  )
  return q, shared, private


def _check_equal_with_grads(f_ref, f_splash, args):
  out_ref, out_splash = f_ref(*args), jax.jit(f_splash)(*args)
  np.testing.assert_allclose(out_splash, out_ref, **TOL)
  weights = jax.random.normal(jax.random.key(9), out_ref.shape)
  grad = lambda f: jax.jit(jax.grad(lambda *a: (weights * f(*a)).sum(), range(len(args))))  # noqa: E731
  _assert_trees_close(grad(f_splash)(*args), grad(f_ref)(*args))


@pytest.mark.parametrize("window", [None, W])
def test_splash_shared_attention_equals_attend(window):
  """Prefill: causal within packed documents (padding included), GQA, a custom scale and soft
  cap, with and without a sliding window."""
  q, shared, _ = _random_qkv()
  segment_ids, positions = _packed_ids()
  mask = attention.causal_segment_mask(segment_ids)
  if window:
    mask &= attention.window_mask(positions, positions, window)
  _check_equal_with_grads(
    lambda q, k, v: attention.attend(q, attention.KeyValues(k, v), mask, scale=0.3, softcap=4.0),
    lambda q, k, v: attention_splash.splash_attend(
      q, attention.KeyValues(k, v), segment_ids, scale=0.3, softcap=4.0, window=window
    ),
    (q, shared.k, shared.v),
  )


def test_splash_pause_step_equals_attend():
  """A private pause step: real keys plus the first 0, 1 or 3 of 3 private keys per query, one
  softmax over both (private keys not yet written hidden by segment id -1)."""
  q, shared, private = _random_qkv()
  segment_ids, positions = _packed_ids()
  mask = attention.causal_segment_mask(segment_ids) & attention.window_mask(positions, positions, W)

  def ref(q, k, v, pk, pv, private_mask):
    return attention.attend(q, attention.KeyValues(k, v), mask, attention.KeyValues(pk, pv), private_mask)

  def fast(q, k, v, pk, pv, private_mask):
    return attention_splash.splash_attend(
      q, attention.KeyValues(k, v), segment_ids, attention.KeyValues(pk, pv), private_mask, window=W
    )

  weights = jax.random.normal(jax.random.key(9), q.shape)
  value_and_grad = lambda f: jax.jit(jax.value_and_grad(lambda *a: (weights * f(*a)).sum(), range(5)))  # noqa: E731
  fast_value_and_grad, ref_value_and_grad = value_and_grad(fast), value_and_grad(ref)  # one compile each
  for visible_j in (0, 1, 3):
    private_mask = jnp.broadcast_to(jnp.arange(3) < visible_j, (1, 1, 3))
    args = (q, shared.k, shared.v, private.k, private.v, private_mask)
    np.testing.assert_allclose(jax.jit(fast)(*args), ref(*args), **TOL, err_msg=f"visible_j={visible_j}")
    (value, grads), (ref_value, ref_grads) = fast_value_and_grad(*args), ref_value_and_grad(*args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    _assert_trees_close(grads, ref_grads)
    if visible_j == 0:  # hidden private keys get no gradient
      assert not np.asarray(grads[3]).any() and not np.asarray(grads[4]).any()


def test_pause_step_mask_is_causal_real_keys_then_block_diagonal_private_keys():
  mask = attention_splash.PauseStepMask(4, 2, window=2)[:, :]
  expected = np.zeros((4, 12), bool)
  for n in range(4):
    expected[n, max(0, n - 1) : n + 1] = True  # real keys n - 1, n (window 2)
    expected[n, [4 + n, 8 + n]] = True  # pause 1 and 2 of position n
  np.testing.assert_array_equal(mask, expected)
  assert attention_splash.PauseStepMask(4, 2, 2) == attention_splash.PauseStepMask(4, 2, 2)
  assert len({attention_splash.PauseStepMask(4, 2, 2), attention_splash.PauseStepMask(4, 2, None)}) == 2


_logits_and_grads = kernels_test.logits_and_grads


def _model_inputs(cfg):
  params = model_lib.init_params(cfg, jax.random.key(0))
  params["dk_head"]["kernel"] = jax.random.normal(jax.random.key(100), (cfg.d_model,))
  tokens = jax.random.randint(jax.random.key(1), (B, N), 0, V)
  return params, tokens, *_packed_ids()


def test_splash_step_logits_and_gradients_equal_dense():
  """K = 2, packed documents, GQA, sliding/full layers scanned (the traced sliding flag picks
  the kernel by `lax.cond`) and a soft cap: the private pause scan through splash gives the
  dense path's logits and parameter gradients."""
  cfg = dataclasses.replace(CFG, scan_layers=True)
  inputs = _model_inputs(cfg)
  ref_logits, ref_grads = _logits_and_grads(cfg, *inputs)
  logits, grads = _logits_and_grads(dataclasses.replace(cfg, attention_impl="splash"), *inputs)
  np.testing.assert_allclose(logits, ref_logits, **TOL)
  _assert_trees_close(grads, ref_grads)


def test_splash_step_logits_of_unscanned_layers_equal_dense():
  """The same model with its layers unrolled (a static window per layer)."""
  inputs = _model_inputs(CFG)
  step = jax.jit(model_lib.step_logits, static_argnums=0)
  kwargs = lambda segment_ids, positions: dict(segment_ids=segment_ids, positions=positions)  # noqa: E731
  np.testing.assert_allclose(
    step(SPLASH, *inputs[:2], **kwargs(*inputs[2:])), step(CFG, *inputs[:2], **kwargs(*inputs[2:])), **TOL
  )


def test_splash_uses_the_dense_path_where_the_visibility_has_no_segment_ids():
  """The flattened slot grid (visible layout) has no causal-within-documents mask: the dense
  reference computes it, so splash configs give the same logits there too."""
  cfg = dataclasses.replace(
    SPLASH, num_layers=1, max_pauses=1, pause_layout="visible", layer_types=("full",), sliding_window=None
  )
  params = model_lib.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (1, N), 0, V)
  dense = dataclasses.replace(cfg, attention_impl="xla")
  logits, dense_logits = model_lib.step_logits(cfg, params, tokens), model_lib.step_logits(dense, params, tokens)
  np.testing.assert_array_equal(logits, dense_logits)


def test_splash_refuses_lengths_that_are_not_a_multiple_of_128():
  params = model_lib.init_params(SPLASH, jax.random.key(0))
  with pytest.raises(ValueError, match="multiple of 128, got 96"):
    model_lib.step_logits(SPLASH, params, jnp.zeros((1, 96), jnp.int32))


def test_splash_allows_a_soft_cap_and_dot_product_does_not():
  assert SPLASH.attn_logit_softcap == 20.0
  with pytest.raises(ValueError, match="dot_product_attention has no soft cap"):
    dataclasses.replace(SPLASH, attention_impl="dot_product")


@pytest.mark.multidevice
def test_splash_under_a_2x2x2_mesh_equals_one_device(tmp_path):
  """With 8 devices and sharded inputs, the kernel runs in a shard_map over batch and kv heads:
  logits and gradients equal the dense path on one device."""
  out = tmp_path / "splash_mesh.json"
  env = harness.subprocess_env(8)
  cmd = [sys.executable, "-m", "tests.multidevice.splash_mesh", f"--out={out}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(cmd, env=env, cwd=root, check=True, timeout=600)
  result = json.loads(out.read_text())
  assert result["devices"] == 8
  assert result["kernel_in_shard_map"], result
  assert result["logits_max_abs_diff"] <= 1e-5, result
  assert result["grads_max_rel_diff"] <= GRAD_TOL, result
